#!/usr/bin/env bash
# Fetch the "manuals" benchmark corpus: the PDF manuals of Debian's r-doc-pdf (the R manuals) and
# c++-annotations-pdf (the C++ Annotations book) packages, extracted without installing anything.
#
#   bash bench/fetch_manuals.sh [OUT_DIR]      default OUT_DIR: bench-out/manuals (ignored by git)
#
# Needs apt-get and dpkg (Debian/Ubuntu). Runs `apt-get update` first when apt has no package lists or
# does not know the packages. Prints the number of PDFs and, when pypdf is importable, their page count.
set -euo pipefail

PACKAGES=(r-doc-pdf c++-annotations-pdf)
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$REPO/bench-out/manuals}"

command -v apt-get >/dev/null || { echo "fetch_manuals: apt-get not found (needs Debian or Ubuntu)" >&2; exit 2; }
command -v dpkg >/dev/null || { echo "fetch_manuals: dpkg not found" >&2; exit 2; }

known() { apt-cache show "$1" >/dev/null 2>&1; }
for pkg in "${PACKAGES[@]}"; do
    if ! known "$pkg"; then
        echo "fetch_manuals: apt does not know $pkg; running apt-get update" >&2
        if [ "$(id -u)" -eq 0 ]; then apt-get update -qq; else sudo apt-get update -qq; fi
        break
    fi
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -q "${PACKAGES[@]}")
for deb in "$work"/*.deb; do
    dpkg -x "$deb" "$work/root"
done

mkdir -p "$OUT"
# Flatten into OUT under unique names (both packages ship files in deep /usr/share/doc trees).
find "$work/root" -type f \( -iname '*.pdf' -o -iname '*.pdf.gz' \) -print0 |
while IFS= read -r -d '' file; do
    name="$(basename "$file")"
    case "$name" in
        *.gz) gunzip -c "$file" > "$OUT/${name%.gz}" ;;
        *) cp "$file" "$OUT/$name" ;;
    esac
done

count="$(find "$OUT" -maxdepth 1 -iname '*.pdf' | wc -l)"
echo "fetch_manuals: $count PDFs in $OUT"
PY="$REPO/.venv/bin/python"; [ -x "$PY" ] || PY=python3
"$PY" - "$OUT" <<'PYEOF' || true
import sys
from pathlib import Path
try:
    from pypdf import PdfReader
except ImportError:
    sys.exit(0)
total = 0
for path in sorted(Path(sys.argv[1]).glob("*.pdf")):
    pages = len(PdfReader(path).pages)
    total += pages
    print(f"  {path.name}: {pages} pages, {path.stat().st_size / 2**20:.1f} MB")
print(f"fetch_manuals: {total} pages in total")
PYEOF
