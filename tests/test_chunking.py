"""Chunks sized in embedder tokens, mapped to the right pages."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.ingestion.chunking import Chunker, join_pages, token_counter
from rag.models import resolve_embedder
from rag.settings import ChunkingSettings, ModelSettings
from rag.types import Page, ParsedDocument


@pytest.fixture(scope="module")
def tokenizer_path() -> str:
    return resolve_embedder(ModelSettings())


def doc(pages: list[str]) -> ParsedDocument:
    return ParsedDocument(Path("x.pdf"), "h", tuple(Page(i, t) for i, t in enumerate(pages, start=1)))


def test_token_counter_counts_real_tokens(tokenizer_path):
    count = token_counter(tokenizer_path)
    assert count("Hello world") == 2  # no padding, no special tokens
    assert count("word " * 300) == 300  # no truncation


def test_chunks_respect_token_limit_and_pages(tokenizer_path):
    settings = ChunkingSettings(chunk_tokens=64, overlap_tokens=16)
    pages = [f"Page {n} sentence {i} about topic {n}." for i in range(40) for n in [1]]
    parsed = doc([" ".join(pages), "Second page text. " * 30, "", "Fourth page closing words."])
    chunker = Chunker(tokenizer_path, settings).load()
    chunks = chunker.chunk(parsed, "x.pdf")
    count = token_counter(tokenizer_path)
    text, starts = join_pages(parsed)
    assert all(count(c.text) <= 64 for c in chunks)
    assert [c.position for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert text[c.char_start:c.char_end] == c.text  # offsets point at the chunk's own text
        assert c.page_start <= c.page_end
    assert chunks[0].page_start == 1 and chunks[-1].page_end == 4
    assert any("Second page" in c.text and c.page_start <= 2 <= c.page_end for c in chunks)
    assert all(c.page_start != 3 for c in chunks)  # the empty page starts no chunk


def test_overlap_must_be_below_size():
    with pytest.raises(ValueError, match="overlap_tokens"):
        ChunkingSettings(chunk_tokens=32, overlap_tokens=32)
    with pytest.raises(ValueError):
        ChunkingSettings(chunk_tokens=300)  # above the embedder's 254-token room
