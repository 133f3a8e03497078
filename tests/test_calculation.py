"""Figures computed from quoted figures (rag.answering.calculation): the parser, the trace to the quotes, refusals."""

from __future__ import annotations

import pytest

from rag.answering.calculation import (
    CalculationError, asks_for_calculation, calculation_line, check, evaluate,
)
from rag.types import Quote

# Real sentences of sec10q-dev filings (Apple's Q3 2023 10-Q, net sales by category, in millions).
SALES = Quote(
    text="Services net sales were $21,213 million for the three months ended July 1, 2023. Total net sales were "
    "$81,797 million, compared to $82,959 million in the same quarter of 2022.",
    document="2023 Q3 AAPL.pdf", page_start=3, page_end=3, chunk_id=1, score=0.9,
)
COSTS = Quote(
    text="Operating expenses | 13,415 | 12,809 | 5 %", document="2023 Q3 AAPL.pdf", page_start=7, page_end=7,
    chunk_id=2, score=0.8,
)


@pytest.mark.parametrize("question, asks", [
    ("What percentage of Apple's total revenue did the Services segment contribute in Q3 2023?", True),
    ("By how much did Apple's total net sales decrease from Q3 2022 to Q3 2023?", True),
    ("What was the ratio of operating expenses to net sales?", True),
    ("What was the combined revenue of iPhone and Mac?", True),
    ("What was the growth rate of Microsoft Cloud revenue?", True),
    ("What was the total revenue generated from Apple's iPhone sales?", False),
    ("Who developed the steam engine indicator?", False),
    ("In what country is Normandy located?", False),
])
def test_which_questions_ask_for_a_calculation(question, asks):
    assert asks_for_calculation(question) is asks


@pytest.mark.parametrize("expression, value", [
    ("21213 / 81797 * 100", 21213 / 81797 * 100),
    ("$21,213 / $81,797 * 100", 21213 / 81797 * 100),
    ("(81,797 - 82,959) / 82,959 * 100 = -1.4%", (81797 - 82959) / 82959 * 100),
    ("-3.5 + 2", -1.5),
    ("13415 × 2 ÷ 4", 6707.5),
])
def test_arithmetic_is_computed(expression, value):
    assert evaluate(expression) == pytest.approx(value)


@pytest.mark.parametrize("expression, reason", [
    ("__import__('os').system('true')", "not arithmetic|only hold numbers"),
    ("2 ** 10", "only hold numbers"),
    ("abs(-3)", "only hold numbers"),
    ("(1).real", "only hold numbers"),
    ("1 < 2", "only hold numbers"),
    ("21213 / 0", "divides by zero"),
    ("21213 / ", "not arithmetic"),
    ("", "empty"),
    ("1+" * 150 + "1", "longer than"),
])
def test_anything_but_arithmetic_is_refused(expression, reason):
    with pytest.raises(CalculationError, match=reason):
        evaluate(expression)


def test_every_input_is_traced_to_the_quote_that_states_it():
    calc = check("21,213 / 81,797 * 100", [COSTS, SALES])
    assert calc.result_text() == "25.93%"
    assert [(o.written, o.quote.page_start if o.quote else None) for o in calc.operands] == [
        ("$21,213 million", 3), ("$81,797 million", 3), ("100", None)]
    assert calc.explain() == (
        "21213 / 81797 * 100 = 25.93%; inputs: $21,213 million (2023 Q3 AAPL.pdf p. 3), "
        "$81,797 million (2023 Q3 AAPL.pdf p. 3)")
    difference = check("13,415 - 12,809", [COSTS])
    assert difference.value == 606 and difference.result_text() == "606"


@pytest.mark.parametrize("expression, reason", [
    ("21,213 / 80,000 * 100", "uses 80,000, which no quote states"),
    ("21213", "at least two figures"),
    ("100 / 1000", "does not combine two figures"),
    ("21213 / 100", "does not combine two figures"),
])
def test_a_number_no_quote_states_refuses_the_calculation(expression, reason):
    with pytest.raises(CalculationError, match=reason):
        check(expression, [SALES, COSTS])


def test_the_reply_line_is_found():
    reply = "Calculation: 21213 / 81797 * 100\nAnswer: about 26% of net sales\nSource: [1]"
    assert calculation_line(reply) == "21213 / 81797 * 100"
    assert calculation_line("Answer: 26%\nSource: [1]") is None
