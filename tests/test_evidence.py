"""Evidence selection: sentences cut from passages, scored against the question, kept within a budget."""

from __future__ import annotations

import pytest

from rag.answering.evidence import lexical_overlap, score_sentences, select_evidence, sentences_of, split_sentences
from rag.types import Chunk, Passage

STEAM = (
    "The Porter-Allen engine was introduced in 1862. The most successful indicator was developed for the high "
    "speed engine inventor and manufacturer Charles Porter by Charles Richard and exhibited at London Exhibition "
    "in 1862. The Richard indicator became popular. It was used until the 1900s."
)
TABLE = "\n".join(f"Net sales {name} $ {1000 + i:,} $ {2000 + i:,}" for i, name in enumerate("ABCDEFGHIJKLMNOPQRST"))


def _passage(text: str, cid: int, document: str = "Steam_engine.pdf", page: int = 3) -> Passage:
    chunk = Chunk(document=document, content_hash="h", page_start=page, page_end=page, char_start=0,
                  char_end=len(text), text=text, position=cid, id=cid)
    return Passage(chunk=chunk, score=1.0 / (cid + 1), dense_score=0.5, bm25_score=1.0)


def test_split_sentences_keeps_prose_sentences_and_cuts_tables_by_lines() -> None:
    sentences = split_sentences(STEAM)
    assert len(sentences) == 4
    assert sentences[1].startswith("The most successful indicator") and sentences[1].endswith("in 1862.")
    rows = split_sentences(TABLE)
    assert len(rows) > 1 and all(len(r) <= 360 for r in rows)  # a table is not one giant "sentence"
    assert " ".join(rows) == " ".join(TABLE.split())  # nothing lost, white space collapsed


def test_sentences_of_drops_the_overlap_between_chunks() -> None:
    first, second = _passage(STEAM, 1), _passage("It was used until the 1900s. Trains came later.", 2)
    texts = [s.text for s in sentences_of([first, second])]
    assert texts.count("It was used until the 1900s.") == 1
    assert texts[-1] == "Trains came later."


def test_lexical_overlap_weights_rare_question_words() -> None:
    sentences = ["The engine was built in 1862.", "The indicator was developed by Charles Richard.", "Engines."]
    scores = lexical_overlap("Who developed the indicator?", sentences)
    assert scores[1] == pytest.approx(1.0) and scores[0] == 0.0


def test_select_evidence_keeps_the_sentence_before_and_merges_runs() -> None:
    passages = [_passage(STEAM, 1)]
    sentences = sentences_of(passages)
    scored = sorted(
        [s.__class__(**{**s.__dict__, "score": 1.0 if s.index == 1 else 0.1}) for s in sentences],
        key=lambda s: s.score, reverse=True,
    )
    evidence = select_evidence(scored, lambda t: len(t.split()), budget_tokens=60, max_sentences=1)
    assert len(evidence.quotes) == 1
    quote = evidence.quotes[0]
    # the best sentence and the one before it, as one quote with the passage's source
    assert quote.text.startswith("The Porter-Allen engine") and quote.text.endswith("London Exhibition in 1862.")
    assert (quote.document, quote.page_start, quote.chunk_id) == ("Steam_engine.pdf", 3, 1)
    tight = select_evidence(scored, lambda t: len(t.split()), budget_tokens=5, max_sentences=4)
    assert len(tight.quotes) == 1 and "Charles Richard" in tight.quotes[0].text  # the best always fits


def test_real_embedder_ranks_the_answering_sentence_first(embedder) -> None:
    question = "Who built the most successful steam engine indicator for Charles Porter?"
    passages = [_passage(STEAM, 1), _passage("Normandy is a region of France. Rollo was its first ruler.", 2,
                                             "Normans.pdf", 1)]
    scored = score_sentences(question, sentences_of(passages), embedder.embed_documents,
                             embedder.embed_query(question))
    assert "Charles Richard" in scored[0].text
    assert scored[0].dense > scored[-1].dense and 0.0 <= scored[0].lexical <= 1.0


def test_quotes_come_from_the_documents_the_question_names(embedder) -> None:
    """A question that names its filing is quoted from that filing's passages, however well another company's
    page matches; without a named document among the passages, every passage is quoted from as before."""
    from rag.answering.evidence import quote_evidence
    from rag.settings import GenerationSettings

    question = "What were Amazon's net sales in the second quarter of 2023?"
    other = _passage("Net sales in the second quarter of 2023 were $81.8 billion, down 1%.", 1, "2023 Q2 AAPL.pdf")
    named = _passage("Total net sales increased 11% to $134.4 billion in the second quarter. AWS segment sales "
                     "increased 12%.", 2, "2023 Q2 AMZN.pdf")
    settings = GenerationSettings(evidence_sentences=4)

    def quoted(names: tuple[str, ...]) -> set[str]:
        evidence = quote_evidence(question, [other, named], embedder, lambda t: len(t.split()), settings, names)
        return {q.document for q in evidence.quotes}

    assert quoted(()) == {"2023 Q2 AAPL.pdf", "2023 Q2 AMZN.pdf"}  # both quoted when nothing is named
    assert quoted(("2023 Q2 AMZN.pdf",)) == {"2023 Q2 AMZN.pdf"}
    assert quoted(("2023 Q2 MSFT.pdf",)) == {"2023 Q2 AAPL.pdf", "2023 Q2 AMZN.pdf"}  # named, but not retrieved


def test_states_amount_tells_report_figures_from_years_and_counts() -> None:
    from rag.answering.evidence import states_amount

    assert states_amount("Net revenue was $4.2 billion, up 12% from a year ago.")
    assert states_amount("Operating income rose to 310 million in the quarter.")
    assert states_amount("| Net sales | 1,204 | 1,180 |")
    assert not states_amount("The company was founded in 1998 and has 12 plants.")


def test_amount_bonus_lifts_the_sentence_stating_a_figure(embedder) -> None:
    prose = "Revenue for the quarter reflected strong demand across the company's segments and regions."
    figure = "Total revenue was $812 million."
    sentences = sentences_of([_passage(f"{prose} {figure}", 1, "Report.pdf")])
    question = "What was the company's revenue for the quarter?"
    embed, query = embedder.embed_documents, embedder.embed_query(question)
    plain = score_sentences(question, sentences, embed, query)
    lifted = score_sentences(question, sentences, embed, query, amount_bonus=0.5)
    assert plain[0].text == prose  # without the bonus the prose, which shares more words, wins
    assert lifted[0].text == figure
