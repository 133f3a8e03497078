"""Finding passages for a question: dense (FAISS) and lexical (BM25) rankings, the candidates whose document's
name the question names, and both rankings again within the documents the question points at
(rag.answering.focus), fused by reciprocal rank."""

from __future__ import annotations

import threading

import numpy as np

from rag.answering.focus import DocumentFocus
from rag.answering.prompting import asks_about_report
from rag.answering.titles import TitleIndex
from rag.indexing.embedding import Embedder
from rag.indexing.index import DocumentIndex
from rag.settings import RetrievalSettings
from rag.text import ends_in_figure
from rag.types import Chunk, Passage


class LexicalIndex:
    """BM25 (bm25s) over chunk texts; rebuilt whole, which takes seconds even at 100K chunks."""

    def __init__(self, chunks: list[Chunk]):
        import bm25s

        self._ids = np.asarray([c.id for c in chunks], dtype=np.int64)
        self._bm25 = bm25s.BM25()
        if chunks:
            tokens = bm25s.tokenize([c.text for c in chunks], stopwords="en", show_progress=False)
            self._bm25.index(tokens, show_progress=False)

    def search(self, query: str, k: int, within: set[int] | None = None) -> list[tuple[int, float]]:
        """(chunk id, BM25 score) of up to k chunks sharing a term with the query, best first; only chunks
        whose id is in ``within`` when it is given."""
        import bm25s

        if len(self._ids) == 0:
            return []
        terms = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)
        if not terms or not terms[0]:
            return []
        mask = None
        if within is not None:
            mask = np.isin(self._ids, np.fromiter(within, dtype=np.int64)).astype(np.float32)
            k = min(k, int(mask.sum()))
            if k == 0:
                return []
        docs, scores = self._bm25.retrieve(
            terms, k=min(k, len(self._ids)), show_progress=False, n_threads=1, weight_mask=mask,
        )
        return [(int(self._ids[d]), float(s)) for d, s in zip(docs[0], scores[0]) if s > 0]


def reciprocal_rank_fusion(rankings: list[list[int]], k: int) -> dict[int, float]:
    """score(id) = sum over rankings of 1 / (k + rank), rank 1-based."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, cid in enumerate(ranking, start=1):
            fused[cid] = fused.get(cid, 0.0) + 1.0 / (k + rank)
    return fused


class HybridRetriever:
    """Retrieves passages from a DocumentIndex; follows the index when another process changes it."""

    def __init__(self, index: DocumentIndex, embedder: Embedder, settings: RetrievalSettings):
        self.index = index
        self.embedder = embedder
        self.settings = settings
        self._lexical: LexicalIndex | None = None
        self._titles: TitleIndex | None = None
        self._focus: DocumentFocus | None = None
        self._chunks_of: dict[str, list[int]] = {}
        self._tabular: set[int] = set()
        self._lexical_generation = -1
        self._lock = threading.Lock()

    def load(self) -> "HybridRetriever":
        self._lexical_index()
        return self

    def _lexical_index(self) -> LexicalIndex:
        with self._lock:
            self.index.refresh_if_stale()
            if self._lexical is None or self._lexical_generation != self.index.generation:
                chunks = self.index.store.all_chunks()
                self._lexical = LexicalIndex(chunks)
                self._titles = TitleIndex(self.index.store.documents())
                self._chunks_of, first_pages = _by_document(chunks)
                tabular = (int(c.id) for c in chunks if is_tabular(c.text))  # read only with table_ranking on
                self._tabular = set(tabular) if self.settings.table_ranking else set()
                self._focus = DocumentFocus(first_pages)
                self._lexical_generation = self.index.generation
            return self._lexical

    def retrieve(self, question: str, top_k: int | None = None, mode: str | None = None) -> list[Passage]:
        """The top_k passages for ``question``, best first, each with its cosine similarity to it."""
        top_k = top_k or self.settings.top_k
        mode = mode or self.settings.mode
        lexical = self._lexical_index()
        query = self.embedder.embed_query(question)  # (dim,)
        n = max(self.settings.candidates, top_k)
        dense = self.index.search(query, n) if mode in ("hybrid", "dense") else []
        sparse = lexical.search(question, n) if mode in ("hybrid", "bm25") else []
        if mode == "dense":
            ranked = [(cid, score) for cid, score in dense]
        elif mode == "bm25":
            ranked = [(cid, score) for cid, score in sparse]
        else:
            rankings = [[c for c, _ in dense], [c for c, _ in sparse]]
            if self.settings.title_match and self._titles is not None:
                # A third ranking: the candidates whose document's name the question names (rag.answering.titles).
                candidates = list(dict.fromkeys(rankings[0] + rankings[1]))
                documents = {cid: c.document for cid, c in self.index.store.chunks_by_ids(candidates).items()}
                rankings.append(self._titles.rank(question, documents))
            if self.settings.focus and self._focus is not None:
                rankings += self._focus_rankings(question, query, lexical, n)
            fused = reciprocal_rank_fusion(rankings, self.settings.rrf_k)
            ranked = sorted(fused.items(), key=lambda item: item[1], reverse=True)
        ranked = ranked[:top_k]
        ids = [cid for cid, _ in ranked]
        chunks = self.index.store.chunks_by_ids(ids)
        cosine = self._cosine(query, ids, dict(dense))
        bm25 = dict(sparse)
        return [
            Passage(chunk=chunks[cid], score=float(score), dense_score=cosine.get(cid), bm25_score=bm25.get(cid))
            for cid, score in ranked if cid in chunks
        ]

    def focus_documents(self, question: str) -> tuple[str, ...]:
        """The documents ``question`` points at by name (rag.answering.focus); empty before ``load``."""
        return self._focus.resolve(question) if self._focus is not None else ()

    def report_documents(self, question: str) -> tuple[str, ...]:
        """``focus_documents`` for a question about a report (``prompting.asks_about_report``), else none: the
        documents its quotes must come from (``evidence.quote_evidence``'s ``named``).

        Only for reports: a filing named by company and period is reliably found from its cover, while an
        article's lead names people a question may mention for other reasons (squad2-dev: "Who was Edward the
        Confessor's half-brother?" points at Harvard_University.pdf, whose lead has an Edward; quoting only from
        the documents pointed at lost 12 of 36 such answers; docs/evaluation.md, fourth round).
        """
        return self.focus_documents(question) if asks_about_report(question) else ()

    def _focus_rankings(self, question: str, query: np.ndarray, lexical: LexicalIndex, n: int) -> list[list[int]]:
        """The dense and BM25 rankings restricted to the documents the question points at, fused into one
        (none: no ranking)."""
        ids = [cid for doc in self.focus_documents(question) for cid in self._chunks_of.get(doc, ())]
        if not ids:
            return []
        vectors = self.index.store.vectors_by_ids(ids, query.shape[0])
        known = [cid for cid in ids if cid in vectors]
        if not known:
            return []
        cosine = np.stack([vectors[cid] for cid in known]) @ query  # (len(known),)
        dense = [known[i] for i in np.argsort(-cosine)[:n]]
        sparse = [cid for cid, _ in lexical.search(question, n, within=set(known))]
        # One ranking, not two: a question that names the wrong document by accident ("nervous system" in
        # a question about myelin) then only nudges the fusion, while a filing named outright still wins it.
        fused = reciprocal_rank_fusion([dense, sparse], self.settings.rrf_k)
        rankings = [sorted(fused, key=lambda cid: fused[cid], reverse=True)]
        if self._tabular and asks_about_report(question):
            tables = {cid for cid in known if cid in self._tabular}
            if tables:
                rankings.append([cid for cid, _ in lexical.search(question, n, within=tables)])
        return rankings

    def _cosine(self, query: np.ndarray, ids: list[int], known: dict[int, float]) -> dict[int, float]:
        """Cosine similarity of each id to the query: from FAISS when it ranked the id, else from the store."""
        missing = [cid for cid in ids if cid not in known]
        dim = query.shape[0]
        found = {cid: float(vec @ query) for cid, vec in self.index.store.vectors_by_ids(missing, dim).items()}
        return {**{cid: known[cid] for cid in ids if cid in known}, **found}


def is_tabular(text: str) -> bool:
    """Whether most of a passage's lines end in a figure (a table's rows), three at least."""
    lines = [line for line in text.splitlines() if line.strip()]
    rows = sum(1 for line in lines if ends_in_figure(line))
    return rows >= 3 and rows >= 0.5 * len(lines)


def _by_document(chunks: list[Chunk]) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Chunk ids per document, and each document's first-page text (its page-1 chunks in reading order)."""
    ids: dict[str, list[int]] = {}
    first: dict[str, list[Chunk]] = {}
    for c in chunks:
        ids.setdefault(c.document, []).append(int(c.id))
        if c.page_start == 1:
            first.setdefault(c.document, []).append(c)
    pages = {doc: " ".join(c.text for c in sorted(cs, key=lambda c: c.position)) for doc, cs in first.items()}
    return ids, {doc: pages.get(doc, "") for doc in ids}
