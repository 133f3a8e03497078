"""Cut a parsed document into passages sized in tokens of the embedding model, keeping page boundaries.

Pages are joined with a blank line, split by LangChain's recursive splitter measuring length with the
embedder's own tokenizer, and each chunk's character span is mapped back to the pages it covers.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from pathlib import Path

from langchain_text_splitters import RecursiveCharacterTextSplitter

from rag.settings import ChunkingSettings
from rag.types import Chunk, ParsedDocument

PAGE_SEPARATOR = "\n\n"


class Chunker:
    """Token-sized splitter for one embedding model's tokenizer.

    ``tokenizer_path`` is the embedder's folder (or hub id); only its tokenizer is loaded, in ``load()``.
    """

    def __init__(self, tokenizer_path: str, settings: ChunkingSettings):
        self.tokenizer_path = tokenizer_path
        self.settings = settings
        self._splitter: RecursiveCharacterTextSplitter | None = None

    def load(self) -> "Chunker":
        """Load the tokenizer; cheap (a tokenizer.json read), safe to call in each worker process."""
        count = token_counter(self.tokenizer_path)
        self._splitter = RecursiveCharacterTextSplitter(
            chunk_size=self.settings.chunk_tokens,
            chunk_overlap=self.settings.overlap_tokens,
            length_function=count,
            separators=["\n\n", "\n", ". ", " ", ""],
            keep_separator="end",
        )
        return self

    def chunk(self, doc: ParsedDocument, document: str) -> list[Chunk]:
        """Chunks of ``doc`` in reading order; ``document`` is the name stored with each chunk."""
        if self._splitter is None:
            raise RuntimeError("Chunker.load() must be called before chunk()")
        text, page_starts = join_pages(doc)
        chunks: list[Chunk] = []
        cursor = 0
        for piece in self._splitter.split_text(text):
            # The splitter strips whitespace; find each piece from just past the previous start so that
            # overlapping chunks map to their own occurrence.
            start = text.find(piece, cursor)
            if start < 0:  # never expected: pieces are substrings of text
                start = text.find(piece)
            end = start + len(piece)
            cursor = start + 1
            chunks.append(
                Chunk(
                    document=document,
                    content_hash=doc.content_hash,
                    page_start=page_at(page_starts, doc, start),
                    page_end=page_at(page_starts, doc, max(start, end - 1)),
                    char_start=start,
                    char_end=end,
                    text=piece,
                    position=len(chunks),
                )
            )
        return chunks


def token_counter(tokenizer_path: str) -> Callable[[str], int]:
    """A function counting tokens (without special tokens) of the embedder's tokenizer.

    Uses the fast ``tokenizers`` library straight from tokenizer.json when the model folder has one (a
    quick import in worker processes); otherwise transformers' AutoTokenizer (hub ids, older folders).
    """
    tokenizer_file = Path(tokenizer_path) / "tokenizer.json"
    if tokenizer_file.exists():
        from tokenizers import Tokenizer

        fast = Tokenizer.from_file(str(tokenizer_file))
        fast.no_truncation()
        fast.no_padding()  # the packaged tokenizer.json pads to 128, which would make every count 128
        return lambda text: len(fast.encode(text, add_special_tokens=False).ids)
    from transformers import AutoTokenizer

    slow = AutoTokenizer.from_pretrained(tokenizer_path)
    slow.model_max_length = 10**9  # we only count; silences the "longer than maximum" warning
    return lambda text: len(slow.encode(text, add_special_tokens=False))


def join_pages(doc: ParsedDocument) -> tuple[str, list[int]]:
    """The document's text and the character offset where each page begins (same order as doc.pages)."""
    starts: list[int] = []
    parts: list[str] = []
    offset = 0
    for page in doc.pages:
        starts.append(offset)
        parts.append(page.text)
        offset += len(page.text) + len(PAGE_SEPARATOR)
    return PAGE_SEPARATOR.join(parts), starts


def page_at(page_starts: list[int], doc: ParsedDocument, offset: int) -> int:
    """1-based page number holding character ``offset`` of the joined text."""
    index = bisect.bisect_right(page_starts, offset) - 1
    return doc.pages[max(index, 0)].number


def relative_name(path: Path, root: Path) -> str:
    """The stored document name: the path relative to the ingested folder, with POSIX separators."""
    return path.relative_to(root).as_posix()
