"""Figures that need a computation: the generator writes the arithmetic, the service does it.

A question whose answer is a ratio, a difference, a growth rate or a sum of reported figures ("What percentage of
Apple's revenue came from Services?", "By how much did operating income increase?") is asked for one more line,
``Calculation: <expression over numbers copied from the quotes>``. A small model's own arithmetic is unreliable;
copying two numbers and an operator is not. The service then

- parses the expression with Python's ``ast`` in "eval" mode and walks the tree itself (``evaluate``): numbers,
  ``+ - * /``, unary minus and parentheses, nothing else: no names, no calls, no attribute access, no ``eval``;
- checks every number against the quotes (``check``): each must be a figure a quote states (by value, as the
  metric compares numbers), or a unit factor (100, 1,000, ...) that turns a ratio into a percentage or millions
  into billions; a number no quote states refuses the calculation, with the reason;
- shows the result with its inputs, the document and page of the quote each came from, and the formula.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rag.text import figures, numbers_match
from rag.types import CalculationInput, ComputedFigure, Quote

# Questions whose answer is computed from reported figures, not read off one of them.
_CALCULATED = re.compile(
    r"\b(ratio\s+(of|between)|(percentage|percent|share|proportion|fraction|portion)\s+of\s+(the\s+)?"
    r"([\w'’.-]+\s+){0,4}(revenue|sales|income|total|expenses?|costs?|assets|profit|earnings)|growth\s+rate|grew\s+by|"
    r"how\s+much\s+(did|has|have|was|were)\b.*\b(increase|decrease|grow|decline|rise|fall|change)|"
    r"by\s+how\s+much|(increase|decrease|change|difference|growth)\s+in\s+(\w+\s+){0,3}(revenue|sales|income|"
    r"expenses?|costs?|margin|profit|earnings|cash)\b.*\b(from|between|compared)|combined|sum\s+of|"
    r"relative\s+to|as\s+a\s+percent(age)?\s+of)\b",
    re.IGNORECASE,
)
# Factors that convert units, allowed though no quote states them: a ratio to a percentage, thousands to
# millions to billions.
UNIT_FACTORS = (100.0, 1_000.0, 1_000_000.0, 1_000_000_000.0)
_LINE = re.compile(r"^\s*Calculation:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_MAX_LENGTH = 200  # characters: two or three figures and their operators fit many times over
_MAX_NUMBERS = 8

SYSTEM = (
    "Answer the question using only the numbered quotes, never your own knowledge. The answer is computed from\n"
    "figures in the quotes (a ratio, a percentage, a difference, a growth rate or a sum). Reply in this format:\n"
    "Answer: <one sentence stating the figures it is computed from, copied from the quotes>\n"
    "Calculation: <arithmetic over those numbers only, with + - * / and parentheses, e.g. 21213 / 81797 * 100>\n"
    "Source: [<quote numbers>]\n"
    "Do not do the arithmetic yourself: the service computes it."
)


class CalculationError(ValueError):
    """An expression the service will not compute: the message is the reason shown to the user."""


@dataclass(frozen=True)
class Operand:
    """One number of the expression: as written there, and the quote that states it (None for a unit factor)."""

    written: str
    value: float
    quote: Quote | None


@dataclass(frozen=True)
class Calculation:
    """A computed figure with what it was computed from."""

    expression: str  # as the generator wrote it, tidied (thousands separators, currency and % removed)
    value: float
    operands: tuple[Operand, ...]

    @property
    def percent(self) -> bool:
        """Whether the expression multiplies by 100 at the end: its value is a percentage."""
        return bool(re.search(r"\*\s*100(\.0+)?\s*\)?\s*$", self.expression))

    def result_text(self) -> str:
        """The value as a reader wants it: two decimals for a percentage or a ratio, separators for large."""
        if self.percent:
            return f"{self.value:,.2f}%"
        if abs(self.value) >= 1000 or float(self.value).is_integer():
            return f"{self.value:,.2f}".rstrip("0").rstrip(".")
        return f"{self.value:,.4f}".rstrip("0").rstrip(".")

    def as_figure(self) -> ComputedFigure:
        """Our boundary type: the formula, the result as shown, each input with its document and page."""
        inputs = tuple(
            CalculationInput(o.written, o.value, o.quote.document if o.quote else None,
                             o.quote.page_start if o.quote else None)
            for o in self.operands
        )
        return ComputedFigure(self.expression, self.value, self.result_text(), inputs)

    def explain(self) -> str:
        """The formula, its result, and where each input comes from ("[doc p. 3]")."""
        sources = [
            f"{o.written} ({o.quote.document} p. {o.quote.page_start})" for o in self.operands if o.quote is not None
        ]
        return f"{self.expression} = {self.result_text()}; inputs: " + ", ".join(sources)


def asks_for_calculation(question: str) -> bool:
    """Whether the question's answer is computed from figures (a ratio, a change, a share, a sum)."""
    return _CALCULATED.search(question) is not None


def calculation_line(reply: str) -> str | None:
    """The expression of the reply's ``Calculation:`` line, if it has one."""
    match = _LINE.search(reply)
    return match.group(1) if match else None


def tidy(expression: str) -> str:
    """The expression with what is decoration in a filing removed: thousands separators inside numbers, "$",
    "%", a trailing "=" and whatever follows it (a model that does the arithmetic anyway)."""
    text = expression.split("=")[0]
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    text = text.replace("$", "").replace("%", "").replace("×", "*").replace("÷", "/")
    return " ".join(text.split())


def evaluate(expression: str) -> float:
    """The value of an arithmetic expression of numbers, ``+ - * /``, unary minus and parentheses.

    Raises CalculationError for anything else (names, calls, powers, comparisons...), division by zero, or an
    expression too long to be a calculation over a few figures.
    """
    text = tidy(expression)
    if not text:
        raise CalculationError("the calculation is empty")
    if len(text) > _MAX_LENGTH:
        raise CalculationError(f"the calculation is longer than {_MAX_LENGTH} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise CalculationError(f"the calculation {text!r} is not arithmetic") from exc
    return _value(tree.body)


def _value(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _value(node.operand)
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if right == 0:
            raise CalculationError("the calculation divides by zero")
        return left / right
    raise CalculationError(f"the calculation may only hold numbers, + - * / and parentheses, not {type(node).__name__}")


def check(expression: str, quotes: Sequence[Quote]) -> Calculation:
    """The computed figure, every number of ``expression`` traced to the quote that states it.

    Raises CalculationError naming the first number no quote states (unit factors aside), or why the expression
    cannot be computed.
    """
    value = evaluate(expression)
    text = tidy(expression)
    numbers = [float(n) for n in re.findall(r"\d+(?:\.\d+)?", text)]
    if len(numbers) > _MAX_NUMBERS:
        raise CalculationError(f"the calculation uses more than {_MAX_NUMBERS} numbers")
    if len(numbers) < 2:
        raise CalculationError("the calculation needs at least two figures")
    stated = [(written, abs(v), quote) for quote in quotes for written, v in figures(quote.text)]
    operands = []
    for number in numbers:
        source = next(((w, q) for w, v, q in stated if numbers_match(v, number)), None)
        if source is not None:
            operands.append(Operand(source[0], number, source[1]))
        elif any(numbers_match(number, factor, 0.0) for factor in UNIT_FACTORS):
            operands.append(Operand(_plain(number), number, None))
        else:
            raise CalculationError(f"the calculation uses {_plain(number)}, which no quote states")
    if sum(o.quote is not None for o in operands) < 2:
        # "324 / 100" turns one figure into another unit: no ratio, change or sum of reported figures
        raise CalculationError("the calculation does not combine two figures from the quotes")
    return Calculation(text, value, tuple(operands))


def _plain(number: float) -> str:
    return f"{number:,.6f}".rstrip("0").rstrip(".")
