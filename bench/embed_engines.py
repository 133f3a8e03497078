"""The embedder under other CPU engines: speed, agreement with the service's vectors, and dense retrieval.

The service embeds with sentence-transformers in float32 PyTorch (``st-fp32``). This benchmark runs the same
model (all-MiniLM-L6-v2, mean pooling, unit length) under:

- ``ct2-int8``: CTranslate2's ``Encoder`` (the generator's engine; the model converted with its
  ``TransformersConverter``, int8 weights), the pooling done here;
- ``ort-fp32`` / ``ort-int8`` / ``ort-int8-channel``: ONNX Runtime on a ``torch.onnx`` export with the pooling in
  the graph, and that graph quantized by ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, per tensor
  or per output channel). sentence-transformers' own ONNX backend (``backend="onnx"``) is not an option here:
  it needs ``optimum-onnx``, which requires transformers < 4.58, and the service runs transformers 5.

For each engine, on the chunks of the given index folders (their ``store.sqlite``, as ``rag-ingest`` cut them):
passages/s (engines alternated, ``--repeats`` rounds, best round kept), the cosine between its vectors and
``st-fp32``'s (min and mean), and, per eval set, dense-only retrieval of the gold page over that set's chunks
(recall@5 and MRR), the stage the embedder decides. An engine is worth adopting if it is faster and its recall@5
and MRR stay within 0.01 of ``st-fp32`` on every set (the engine issue's rule).

    python -m bench.embed_engines --set ../shared/eval/squad2-dev --index idx/squad2-dev \\
        --set ../shared/eval/sec10q-dev --index idx/sec10q-dev --json bench-out/embed-engines.json

Missing packages (``ctranslate2``, ``onnxruntime``, ``onnx``) skip their engines with a line saying so.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench._common import fmt, machine_info, print_header, write_json

EXIT_USAGE = 2
Encode = Callable[[list[str]], np.ndarray]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.embed_engines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="exit codes: 0 done; 2 usage error (a set without its index).")
    parser.add_argument("--set", type=Path, action="append", required=True, help="eval set folder (repeatable)")
    parser.add_argument("--index", type=Path, action="append", required=True,
                        help="index folder of the set given at the same position (repeatable)")
    parser.add_argument("--speed-passages", type=int, default=512, help="passages per timed round (default 512)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per engine, alternated (default 3)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64, the ingest's)")
    parser.add_argument("--engines", default="st-fp32,ct2-int8,ort-fp32,ort-int8,ort-int8-channel",
                        help="comma-separated engines (st-fp32 always runs: it is the reference)")
    parser.add_argument("--speed-only", action="store_true", help="time the engines; skip agreement and retrieval")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the figures to this JSON file")
    return parser


def chunks_of(index: Path) -> list[tuple[str, str, int, int]]:
    """(text, document, page_start, page_end) of every chunk in an index folder's store."""
    with sqlite3.connect(f"file:{index / 'store.sqlite'}?mode=ro", uri=True) as db:
        return db.execute("SELECT c.text, d.path, c.page_start, c.page_end FROM chunks c "
                          "JOIN documents d ON d.id = c.document_id ORDER BY c.id").fetchall()


def mean_pooled(hidden: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Unit-length mean of each row's first ``lengths[i]`` token vectors: (b, t, d) -> (b, d)."""
    mask = (np.arange(hidden.shape[1])[None, :] < lengths[:, None]).astype(np.float32)
    vectors = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def batched(encode_batch: Encode, batch_size: int) -> Encode:
    return lambda texts: np.concatenate([encode_batch(texts[i:i + batch_size])
                                         for i in range(0, len(texts), batch_size)])


def tokenizer_of(model_path: str, max_tokens: int):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(model_path) / "tokenizer.json"))
    tokenizer.enable_truncation(max_tokens)
    tokenizer.no_padding()  # the model's tokenizer.json pads every text to 128, which would skew the mean
    return tokenizer


def ct2_engine(model_path: str, workdir: Path, max_tokens: int, batch_size: int) -> Encode:
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    out = workdir / "ct2-int8"
    TransformersConverter(model_path).convert(str(out), quantization="int8", force=True)
    encoder = ctranslate2.Encoder(str(out), device="cpu", compute_type="int8", intra_threads=torch_threads())
    tokenizer = tokenizer_of(model_path, max_tokens)

    def encode(texts: list[str]) -> np.ndarray:
        encodings = tokenizer.encode_batch(texts)
        hidden = np.array(encoder.forward_batch([e.tokens for e in encodings]).last_hidden_state)
        return mean_pooled(hidden, np.array([len(e.ids) for e in encodings]))

    return batched(encode, batch_size)


def onnx_exports(model_path: str, workdir: Path) -> dict[str, Path]:
    """The model with mean pooling and normalisation as one ONNX graph, and its int8 dynamic quantizations."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    class Pooled(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    model = AutoModel.from_pretrained(model_path).eval()
    ids = torch.ones(2, 16, dtype=torch.long)
    fp32 = workdir / "model.onnx"
    torch.onnx.export(Pooled(model), (ids, torch.ones_like(ids)), str(fp32), input_names=["input_ids", "attention_mask"],
                      output_names=["embedding"], opset_version=17, dynamo=False,
                      dynamic_axes={"input_ids": {0: "b", 1: "t"}, "attention_mask": {0: "b", 1: "t"},
                                    "embedding": {0: "b"}})
    paths = {"ort-fp32": fp32}
    for name, per_channel in (("ort-int8", False), ("ort-int8-channel", True)):
        paths[name] = workdir / f"{name}.onnx"
        quantize_dynamic(str(fp32), str(paths[name]), weight_type=QuantType.QInt8, per_channel=per_channel)
    return paths


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def ort_engine(path: Path, model_path: str, max_tokens: int, batch_size: int) -> Encode:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch_threads()  # ORT's default counts physical cores, torch the usable ones
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    tokenizer = tokenizer_of(model_path, max_tokens)

    def encode(texts: list[str]) -> np.ndarray:
        encodings = tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            ids[row, :len(e.ids)] = e.ids
        return session.run(None, {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)})[0]

    return batched(encode, batch_size)


def dense_retrieval(question_vectors: np.ndarray, chunk_vectors: np.ndarray, chunks, items) -> dict[str, float]:
    """Gold-page recall@5 and MRR (top 10) of cosine search over one set's chunks."""
    from rag.evaluation.metrics import pages_meet, same_document

    scores = question_vectors @ chunk_vectors.T  # (questions, chunks)
    ranks = []
    for row, item in zip(scores, items, strict=True):
        top = np.argsort(-row)[:10]
        ranks.append(next((k for k, c in enumerate(top, 1) if same_document(chunks[c][1], item.doc)
                           and pages_meet(chunks[c][2], chunks[c][3], item.pages)), None))
    return {"recall@5": float(np.mean([r is not None and r <= 5 for r in ranks])),
            "mrr": float(np.mean([1.0 / r if r else 0.0 for r in ranks]))}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.set) != len(args.index) or not all((i / "store.sqlite").exists() for i in args.index):
        print("bench.embed_engines: error: give one --index folder (with its store.sqlite) per --set",
              file=sys.stderr)
        return EXIT_USAGE

    from rag.evaluation.dataset import load_set
    from rag.runtime import build_embedder, quiet_libraries
    from rag.settings import Settings

    quiet_libraries()
    info = machine_info()
    print_header("the embedder under other CPU engines", info)
    service = build_embedder(Settings()).load()
    model_path, max_tokens = service.model_path, service.max_tokens
    engines: dict[str, Encode] = {"st-fp32": lambda texts: service.embed_documents(texts, batch_size=args.batch_size)}
    wanted = [e for e in args.engines.split(",") if e and e != "st-fp32"]
    workdir = Path(tempfile.mkdtemp(prefix="embed-engines-"))
    skipped: dict[str, str] = {}
    if "ct2-int8" in wanted:
        try:
            engines["ct2-int8"] = ct2_engine(model_path, workdir, max_tokens, args.batch_size)
        except ImportError as exc:
            skipped["ct2-int8"] = str(exc)
    onnx_wanted = [e for e in wanted if e.startswith("ort-")]
    if onnx_wanted:
        try:
            paths = onnx_exports(model_path, workdir)
            for name in onnx_wanted:
                engines[name] = ort_engine(paths[name], model_path, max_tokens, args.batch_size)
        except ImportError as exc:
            skipped.update({name: str(exc) for name in onnx_wanted})
    for name, why in skipped.items():
        print(f"{name}: skipped ({why})")

    sets = [(s, load_set(s), chunks_of(i)) for s, i in zip(args.set, args.index, strict=True)]
    speed_texts = [c[0] for _, _, chunks in sets for c in chunks][: args.speed_passages]
    for encode in engines.values():  # warm-up: first-call allocations and lazy initialisation
        encode(speed_texts[: args.batch_size])
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.repeats):
        for name, encode in engines.items():  # alternated, so that load from other work hits every engine alike
            started = time.perf_counter()
            encode(speed_texts)
            seconds[name].append(time.perf_counter() - started)

    rows = []
    reference: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, encode in engines.items():
        row = {"engine": name, "passages_per_s": len(speed_texts) / min(seconds[name]),
               "rounds_s": seconds[name], "sets": {}}
        cosines = []
        for path, evalset, chunks in [] if args.speed_only else sets:
            items = [i for i in evalset.items if i.answerable]
            chunk_vectors = encode([c[0] for c in chunks])
            question_vectors = np.stack([service.embed_query(i.question) for i in items]) if name == "st-fp32" else (
                encode([i.question for i in items]))
            if name == "st-fp32":
                reference[path.name] = (chunk_vectors, question_vectors)
            else:
                cosines.append((chunk_vectors * reference[path.name][0]).sum(1))
            row["sets"][path.name] = dense_retrieval(question_vectors, chunk_vectors, chunks, items)
        if cosines:
            joined = np.concatenate(cosines)
            row["cosine_min"], row["cosine_mean"] = float(joined.min()), float(joined.mean())
        rows.append(row)
        agreement = (f"cosine to st-fp32 min {row['cosine_min']:.4f} mean {row['cosine_mean']:.4f}"
                     if cosines else "the reference" if name == "st-fp32" else "speed only")
        per_set = "; ".join(f"{s} r@5 {f['recall@5']:.3f} MRR {f['mrr']:.3f}" for s, f in row["sets"].items())
        print(f"{name:17s} {fmt(row['passages_per_s'], 1)} passages/s (rounds "
              f"{', '.join(f'{s:.1f}' for s in seconds[name])} s); {agreement}; {per_set}", flush=True)
    write_json(args.json, {"benchmark": "embed_engines", "machine": info, "speed_passages": len(speed_texts),
                           "batch_size": args.batch_size, "skipped": skipped, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
