"""Document names as evidence (rag.answering.titles): weights by rarity, the half-the-name rule, the ranking."""

from __future__ import annotations

from rag.answering.titles import TitleIndex, name_tokens, question_tokens

FILINGS = [f"{year} {q} {ticker}.pdf" for year in ("2022", "2023") for q in ("Q1", "Q2", "Q3")
           for ticker in ("AAPL", "AMZN", "MSFT")]


def test_tokens_split_names_and_glued_codes() -> None:
    assert name_tokens("filings/2023 Q2 AMZN.pdf") == {"2023", "q2", "amzn", "q", "2"}
    assert {"fy2018", "fy", "2018"} <= name_tokens("3M_FY2018_10K.pdf")
    assert {"q2", "2023", "amzn", "10", "q"} <= question_tokens("In AMZN's Q2 2023 10-Q, what was revenue?")
    # a quarter in words is the name's code too
    assert {"q1", "2023"} <= question_tokens("What did Microsoft spend in the first quarter of 2023?")
    assert "q3" in question_tokens("in the third fiscal quarter") and "q3" not in question_tokens("a third of sales")


def test_a_question_naming_the_period_and_company_ranks_that_filing_first() -> None:
    titles = TitleIndex(FILINGS)
    question = "What was AMZN's operating income in Q2 2023?"
    candidates = {i: doc for i, doc in enumerate(FILINGS)}
    ranking = titles.rank(question, candidates)
    assert FILINGS[ranking[0]] == "2023 Q2 AMZN.pdf"
    # a filing sharing only the year holds less than half its name's weight: not ranked at all
    assert all("2023" in FILINGS[i] or "q2" in FILINGS[i].lower() or "AMZN" in FILINGS[i] for i in ranking)
    assert titles.score(question, "2022 Q1 MSFT.pdf") == 0.0


def test_one_common_word_does_not_point_at_an_article() -> None:
    titles = TitleIndex(["Who_Let_the_Dogs_Out.pdf", "The_O2_Arena.pdf", "Normans.pdf"])
    assert titles.score("who sang the song about dogs", "Who_Let_the_Dogs_Out.pdf") > 0  # who + dogs: half
    assert titles.score("who was the first duke of normandy", "Who_Let_the_Dogs_Out.pdf") == 0.0
    assert titles.rank("what part of london is the o2 arena in", {1: "The_O2_Arena.pdf", 2: "Normans.pdf"}) == [1]
