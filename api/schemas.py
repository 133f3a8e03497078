"""The API's own request and response types, and the one conversion from ``rag.types.Answer``.

Static limits are pydantic ``Field`` constraints; the limits that come from settings (question length,
``max_new_tokens`` ceiling) are checked by ``check_limits`` and reported in the same 422 format.
Integer and boolean fields are strict, so ``"5"`` is not silently read as ``5``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr,
    field_validator,
)

from rag.collections import DEFAULT_COLLECTION, NAME_PATTERN
from rag.answering.followup import Rewrite, Turn
from rag.settings import Settings
from rag.indexing.store import DocumentRecord
from rag.types import Answer, Citation, ComputedFigure, Quote


def _integral(value: Any) -> Any:
    """37.0 as 37: JSON Schema's "integer" admits a number with a zero fraction, and clients send them."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _unicode(value: str) -> str:
    """Refuse lone surrogates (JSON's "\\ud800" escapes decode to them; pydantic lets them through in some fields,
    e.g. the chat request's): they are not text, and cannot be encoded into a response, a prompt or the store."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"text must be valid Unicode: a lone surrogate at position {error.start}") from None
    return value


Text = Annotated[StrictStr, AfterValidator(_unicode)]
NOT_BLANK = r"\S"  # in the OpenAPI schema: at least one character that is not white space
# The constraints go on StrictInt itself (before the validator), or the schema says "ge" instead of "minimum".
TopK = Annotated[
    StrictInt, Field(ge=1, le=50, description="Passages handed to the generator (default: settings)."),
    BeforeValidator(_integral),
]
MaxNewTokens = Annotated[
    StrictInt, Field(ge=1, description="Cap on generated tokens, at most generation.max_new_tokens_limit."),
    BeforeValidator(_integral),
]


def _sampling(low: float, high: float, what: str) -> Any:
    """An OpenAI sampling option: accepted in OpenAI's range and ignored (answers are greedy, from the documents).
    Checked all the same, finite included, so that a value no OpenAI server takes is a 422 here too."""
    return Annotated[
        StrictFloat, Field(ge=low, le=high, allow_inf_nan=False, description=f"{what} Accepted and ignored."),
    ]


CollectionName = Annotated[
    StrictStr, Field(
        pattern=NAME_PATTERN, description="A collection: 1-64 lower-case letters, digits, '_' or '-' "
        "(starting with a letter or digit); 'default' is the index rag-ingest builds without --collection.",
    ),
]


# --------------------------------------------------------------------------------------------- /v1/query


class QueryRequest(BaseModel):
    """POST /v1/query."""

    model_config = ConfigDict(extra="forbid")

    question: Text = Field(
        min_length=1, description="The question, at most api.max_question_chars characters, not blank.",
        json_schema_extra={"pattern": NOT_BLANK},
    )
    top_k: TopK | None = None
    stream: StrictBool = Field(False, description="Answer as server-sent events (token, final, done).")
    max_new_tokens: MaxNewTokens | None = None
    collection: CollectionName = DEFAULT_COLLECTION

    @field_validator("question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("question must not be blank")
        return value


class CitationOut(BaseModel):
    """A passage the answer rests on."""

    document: str = Field(description="Stored document name, e.g. 'Normans.pdf' or 'uploads/x.pdf'.")
    pages: tuple[int, int] = Field(description="First and last 1-based page of the passage.")
    snippet: str
    score: float = Field(description="Cosine similarity of the passage to the question.")
    chunk_id: int


class QuoteOut(BaseModel):
    """Evidence sentences quoted from one passage, with their source."""

    text: str = Field(description="The sentences, as they stand in the document (white space collapsed).")
    document: str
    pages: tuple[int, int] = Field(description="First and last 1-based page of the passage holding the quote.")
    score: float = Field(description="How well the quote's best sentence matches the question.")


class CalculationInputOut(BaseModel):
    """One number of a computed figure."""

    written: str = Field(description="As the quote writes it ('$21,213'); a unit factor (100) as the formula has it.")
    value: float
    document: str | None = Field(None, description="The document of the quote stating it; none for a unit factor.")
    page: int | None = None


class CalculationOut(BaseModel):
    """A figure the service computed from quoted figures (a ratio, a share, a change, a sum)."""

    expression: str = Field(description="The formula over quoted numbers, as the generator wrote it (tidied).")
    value: float
    result: str = Field(description="The value as shown in the answer ('25.93%').")
    inputs: list[CalculationInputOut]


def calculation_out(figure: ComputedFigure | None) -> CalculationOut | None:
    if figure is None:
        return None
    return CalculationOut(expression=figure.expression, value=figure.value, result=figure.result,
                          inputs=[CalculationInputOut(**vars(i)) for i in figure.inputs])


class QueryResponse(BaseModel):
    """An answer with the quotes it rests on and their citations, or an abstention with the reason."""

    answer: str
    abstained: bool
    reason: str | None = Field(None, description="Why the service abstained, when it did.")
    citations: list[CitationOut] = Field(description="The sources of the answer; empty on an abstention.")
    nearest: list[CitationOut] = Field(
        default_factory=list,
        description="On an abstention, the nearest passages found: shown as such, never as sources; else empty.",
    )
    quotes: list[QuoteOut] = Field(
        default_factory=list,
        description="The evidence sentences the answer rests on; on an abstention, the nearest evidence found.",
    )
    confidence: float | None = Field(
        None, description="Calibrated probability that the answer is right (the service abstains below a threshold)."
    )
    form: str | None = Field(None, description="'short' (a span) or 'long' (sentences), chosen from the question.")
    unquoted_figures: list[str] = Field(
        default_factory=list,
        description="Figures the answer states that neither its quotes nor the question state ('$1.1 billion'): "
        "the reader should check them. A short answer with one is not given (the service abstains).",
    )
    calculation: CalculationOut | None = Field(
        None, description="A figure computed from quoted figures, with its formula and inputs, when the question "
        "asks for a ratio, share, change or sum (generation.calculations).",
    )
    calculation_refused: str | None = Field(
        None, description="Why the generator's calculation was not computed (an input no quote states...).",
    )
    support: float | None = Field(None, description="Share of the answer's own words found in its quotes.")
    relevance: float | None = Field(None, description="Best cosine similarity of a retrieved passage.")
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per stage.")
    usage: dict[str, int] = Field(
        default_factory=dict, description="prompt_tokens and completion_tokens, when the generator ran."
    )

    @classmethod
    def from_answer(cls, answer: Answer) -> "QueryResponse":
        """The API view of a ``rag`` Answer (the only place the two meet)."""
        return cls(
            answer=answer.text, abstained=answer.abstained, reason=answer.reason,
            citations=[citation_out(c) for c in answer.citations], nearest=[citation_out(c) for c in answer.nearest],
            quotes=[quote_out(q) for q in answer.quotes], confidence=answer.confidence, form=answer.form,
            unquoted_figures=list(answer.unquoted_figures), support=answer.support,
            calculation=calculation_out(answer.calculation), calculation_refused=answer.calculation_refused,
            relevance=answer.relevance, timings=dict(answer.timings), usage=dict(answer.usage),
        )


def quote_out(quote: Quote) -> QuoteOut:
    return QuoteOut(
        text=quote.text, document=quote.document, pages=(quote.page_start, quote.page_end), score=quote.score
    )


def citation_out(citation: Citation) -> CitationOut:
    return CitationOut(
        document=citation.document, pages=(citation.page_start, citation.page_end), snippet=citation.snippet,
        score=citation.score, chunk_id=citation.chunk_id,
    )


class TokenEvent(BaseModel):
    """Data of an ``event: token`` in the /v1/query stream."""

    text: str


class ErrorOut(BaseModel):
    """Body of every error response, and data of an ``event: error``."""

    detail: Any


# A request body that cannot be read at all (JSON that is not UTF-8, a broken multipart form): FastAPI answers 400
# before validation; a body that parses but is not what the schema says is a 422.
BAD_BODY: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "The body could not be parsed (not UTF-8, or a broken multipart form)."},
}


# ----------------------------------------------------------------------------- /v1/chat/completions


class ContentPart(BaseModel):
    """One part of a multi-part message; only text parts carry a question."""

    model_config = ConfigDict(extra="ignore")

    type: Text
    text: Text | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Text | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(part.text for part in self.content if part.type == "text" and part.text)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: StrictBool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request. The LAST user message with text is the question; the rest of the conversation
    and the sampling options (temperature, top_p, ...) are accepted and ignored: answers come from the documents.
    The sampling options are still checked against OpenAI's ranges (a NaN or a temperature of 5 is a 422)."""

    model_config = ConfigDict(extra="ignore")

    model: Text = Field(
        "rag", description="The collection to answer from (GET /v1/models lists them); 'rag' means 'default'. "
        "Echoed back.",
    )
    messages: list[ChatMessage] = Field(
        min_length=1, description="The conversation; the last user message with non-blank text is the question.",
        json_schema_extra={"contains": {
            "type": "object", "required": ["role", "content"],
            "properties": {
                "role": {"const": "user"},
                "content": {"anyOf": [
                    {"type": "string", "pattern": NOT_BLANK},
                    {"type": "array", "contains": {
                        "type": "object", "required": ["type", "text"],
                        "properties": {"type": {"const": "text"}, "text": {"type": "string", "pattern": NOT_BLANK}},
                    }},
                ]},
            },
        }},
    )
    stream: StrictBool = False
    max_tokens: MaxNewTokens | None = None
    max_completion_tokens: MaxNewTokens | None = None
    stream_options: StreamOptions | None = None
    top_k: TopK | None = None  # extension: passages handed to the generator
    # OpenAI's sampling options, as clients send them; the answer is greedy whatever they say.
    temperature: _sampling(0.0, 2.0, "Sampling temperature (OpenAI: 0-2).") | None = None
    top_p: _sampling(0.0, 1.0, "Nucleus sampling mass (OpenAI: 0-1).") | None = None
    presence_penalty: _sampling(-2.0, 2.0, "Presence penalty (OpenAI: -2 to 2).") | None = None
    frequency_penalty: _sampling(-2.0, 2.0, "Frequency penalty (OpenAI: -2 to 2).") | None = None
    seed: StrictInt | None = Field(None, description="Sampling seed. Accepted and ignored.")

    @field_validator("messages")
    @classmethod
    def _has_question(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.role == "user" and m.text().strip() for m in messages):
            raise ValueError("messages must contain a user message with non-blank text (its text is the question)")
        return messages

    @property
    def question(self) -> str:
        """Text of the last user message with non-blank text (what the schema's ``contains`` promises)."""
        return next(m for m in reversed(self.messages) if m.role == "user" and m.text().strip()).text()

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def collection(self) -> str:
        """The collection ``model`` names ('rag', the name before collections, is the default one)."""
        return DEFAULT_COLLECTION if self.model == "rag" else self.model

    def history(self) -> list[Turn]:
        """The user and assistant turns with text before the question, oldest first (what a follow-up refers to)."""
        last = max(i for i, m in enumerate(self.messages) if m.role == "user" and m.text().strip())
        return [Turn(m.role, m.text()) for m in self.messages[:last] if m.role in ("user", "assistant") and m.text().strip()]


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def from_answer(cls, answer: Answer) -> "Usage":
        """Token counts of the generation behind ``answer`` (zeros when it abstained before generating)."""
        prompt, completion = answer.usage.get("prompt_tokens", 0), answer.usage.get("completion_tokens", 0)
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class RagInfo(BaseModel):
    """What the OpenAI format has no place for: whether the service abstained, why, and the scores.
    ``answer`` is authoritative; when streaming, verification may turn a streamed draft into an abstention."""

    answer: str
    abstained: bool
    reason: str | None = None
    question: str | None = Field(
        None, description="The question searched: the last user message, or its standalone rewrite when it was a "
        "follow-up that needs the earlier turns ('Where was it exhibited?').",
    )
    rewrite: Literal["unchanged", "generator", "rules"] | None = Field(
        None, description="How `question` came from the last user message (followup.mode).",
    )
    quotes: list[QuoteOut] = Field(default_factory=list)
    nearest: list[CitationOut] = Field(
        default_factory=list, description="On an abstention, the nearest passages found (not sources); else empty."
    )
    confidence: float | None = None
    unquoted_figures: list[str] = Field(
        default_factory=list, description="Figures the answer states that its quotes and the question do not."
    )
    calculation: CalculationOut | None = None
    calculation_refused: str | None = None
    support: float | None = None
    relevance: float | None = None
    timings: dict[str, float] = Field(default_factory=dict)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] = "stop"


class ChatCompletionResponse(BaseModel):
    """OpenAI's chat completion, plus top-level ``citations`` and ``rag``."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage = Field(default_factory=Usage)
    citations: list[CitationOut]
    rag: RagInfo


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    """One streamed chunk; the last one carries ``finish_reason``, ``citations``, ``rag`` and ``usage``."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    citations: list[CitationOut] | None = None
    rag: RagInfo | None = None


def rag_info(answer: Answer, rewrite: Rewrite | None = None) -> RagInfo:
    return RagInfo(
        answer=answer.text, abstained=answer.abstained, reason=answer.reason,
        question=rewrite.question if rewrite else None, rewrite=rewrite.method if rewrite else None,
        quotes=[quote_out(q) for q in answer.quotes], nearest=[citation_out(c) for c in answer.nearest],
        confidence=answer.confidence, unquoted_figures=list(answer.unquoted_figures), support=answer.support,
        calculation=calculation_out(answer.calculation), calculation_refused=answer.calculation_refused,
        relevance=answer.relevance, timings=dict(answer.timings),
    )


# ----------------------------------------------------------------------------------------- /v1/documents


class DocumentOut(BaseModel):
    """A stored document."""

    document: str
    collection: str = Field(description="The collection holding it.")
    source: Literal["folder", "upload"] = Field(description="'folder' (rag-ingest) or 'upload' (POST /v1/documents).")
    pages: int
    chunks: int
    size_bytes: int
    ingested_at: datetime
    content_hash: str = Field(description="sha256 of the file bytes.")

    @classmethod
    def from_record(cls, record: DocumentRecord, collection: str = DEFAULT_COLLECTION) -> "DocumentOut":
        return cls(
            document=record.path, collection=collection, source=record.collection, pages=record.pages,
            chunks=record.chunks,
            size_bytes=record.size_bytes, ingested_at=datetime.fromtimestamp(record.ingested_at, tz=timezone.utc),
            content_hash=record.content_hash,
        )


class UploadOut(BaseModel):
    """An ingested upload."""

    document: str = Field(description="Stored name, 'uploads/<file name>'.")
    pages: int
    chunks: int
    status: Literal["new", "changed", "unchanged"]


class DeletedOut(BaseModel):
    """A removed document."""

    document: str
    removed_chunks: int = Field(description="Chunks removed from the index with it.")


class CollectionOut(BaseModel):
    """A collection and its size."""

    name: str
    documents: int
    chunks: int


class ModelOut(BaseModel):
    """OpenAI's model object: one per collection (the ``model`` of a chat completion names the collection)."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "grounded-rag"


class ModelList(BaseModel):
    """OpenAI's model list (GET /v1/models)."""

    object: Literal["list"] = "list"
    data: list[ModelOut]


# ------------------------------------------------------------------------------------------------ health


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    documents: int
    chunks: int


# -------------------------------------------------------------------------------------- settings limits


def check_limits(
    settings: Settings, question: str, max_new_tokens: int | None,
    question_loc: tuple[str, ...] = ("body", "question"), tokens_loc: tuple[str, ...] = ("body", "max_new_tokens"),
    more_tokens: dict[tuple[str, ...], int | None] | None = None,
) -> None:
    """422 (FastAPI's validation format) for the limits that come from settings rather than the schema.

    ``more_tokens`` are other token caps of the request, each checked against the same ceiling (the chat
    request has two, ``max_tokens`` and ``max_completion_tokens``, and the schema bounds both, whichever is used)."""
    errors: list[dict[str, Any]] = []
    limit = settings.api.max_question_chars
    if len(question) > limit:
        errors.append({
            "type": "string_too_long", "loc": question_loc,
            "msg": f"String should have at most {limit} characters (api.max_question_chars), got {len(question)}",
            "ctx": {"max_length": limit},
        })
    ceiling = settings.generation.max_new_tokens_limit
    for loc, tokens in {tokens_loc: max_new_tokens, **(more_tokens or {})}.items():
        if tokens is not None and tokens > ceiling:
            errors.append({
                "type": "less_than_equal", "loc": loc,
                "msg": f"Input should be less than or equal to {ceiling} (generation.max_new_tokens_limit)",
                "input": tokens, "ctx": {"le": ceiling},
            })
    if errors:
        raise RequestValidationError(errors)
