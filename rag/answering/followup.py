"""Follow-up questions in a chat, rewritten into standalone questions before retrieval.

"Where was it exhibited?" after a question about the steam engine indicator retrieves nothing useful on its
own: the words that find the passage are in the earlier turn. So, before retrieval:

    last user message + recent turns -> needs context? (anaphora, elliptical openers, no content words)
        no  -> searched as it is
        yes -> the generator rewrites it (greedy, a short few-shot prompt, the last few turns)
               -> kept only if it passes sanity checks (one question, not too long, keeps every content word
                  of the follow-up, adds one from the conversation, invents at most one of its own)
               -> else a deterministic rewrite: the pronoun replaced by the earlier question's key phrase,
                  or the earlier question with the follow-up after it

The chat route reports the question it searched (``rag.question``), so a client sees what was asked of the
documents. ``followup.mode`` chooses: "rules" (the default: the packaged 0.5B's rewrite was kept in none of the
10 measured cases, docs/evaluation.md), "generator", or "off".
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from rag.generation.batching import GenerationTimeout, Overloaded
from rag.settings import FollowupSettings
from rag.text import STOPWORDS, content_words

if TYPE_CHECKING:
    from rag.generation.batching import BatchingGenerator
    from rag.generation.base import Generator
    from rag.answering.service import AnswerService

log = logging.getLogger(__name__)

Method = Literal["unchanged", "generator", "rules"]


@dataclass(frozen=True)
class Turn:
    """One message of a conversation: who spoke ("user" or "assistant") and the text."""

    role: Literal["user", "assistant"]
    text: str


@dataclass(frozen=True)
class Rewrite:
    """The question to search and answer, and how it was obtained from the last user message.

    ``method`` is "unchanged" (the message was searched as it is), "generator" or "rules";
    ``note`` says why (what made it a follow-up, why the generator's rewrite was refused)."""

    question: str
    original: str
    method: Method
    note: str = ""

    @property
    def rewritten(self) -> bool:
        return self.method != "unchanged"


# Words that point back into the conversation. "that" is left out: it is mostly a relative pronoun ("the engine
# that Watt built"); "this/these/those" stay, as pronouns or as determiners ("this engine") both refer back.
_ANAPHORA = frozenset("it its itself they them their theirs themselves he him his she her hers this these those".split())
_PERSONAL = frozenset("he him his she her hers".split())
# Openers of an elliptical follow-up: "And in Ireland?", "What about Watt?"
_ELLIPTICAL = re.compile(r"^\s*(and|but|or|also|so|then|what about|how about|same for|and what about)\b", re.I)
# "there" refers back unless it is existential ("Is there ...", "there were ...").
_THERE = re.compile(r"\bthere\b(?!\s+(is|are|was|were|be|been|have|has|had)\b)", re.I)
_BEFORE_THERE = frozenset("is are was were be been isn't aren't wasn't weren't".split())
# Question words and auxiliaries: not part of a topic phrase, though STOPWORDS lacks some of them.
_NOT_TOPIC = STOPWORDS | frozenset(
    "whose whom which what who when where why how many much did does do was were is are "
    "name named called first last year years".split()
)
_WORD = re.compile(r"[\w'’-]+", re.UNICODE)

SYSTEM = "You rewrite follow-up questions into standalone questions."
# One plain request naming the word to resolve: a 0.5B model copies a follow-up unchanged far less often when
# told which word needs the conversation than when shown few-shot chat turns.
REQUEST = (
    "Conversation:\n{conversation}\n\nFollow-up question: {question}\n\nRewrite the follow-up question so that "
    "it {what} and can be understood without the conversation. Keep its other words. Do not answer it. Reply "
    "with the rewritten question only."
)


def needs_context(question: str) -> str | None:
    """Why ``question`` cannot be searched on its own (a short reason), or None when it can."""
    words = [w.lower() for w in _WORD.findall(question)]
    refs = [w for w in words if w in _ANAPHORA]
    if refs:
        return f"refers back ({refs[0]!r})"
    if _refers_there(question) is not None:
        return "refers back ('there')"
    if _ELLIPTICAL.match(question):
        return "elliptical ('" + _ELLIPTICAL.match(question).group(1).lower() + " ...')"
    if not content_words(question):
        return "no content words of its own"
    return None


def topic_phrase(question: str) -> str:
    """The earlier question's key phrase: its longest run of consecutive topic words, as written
    ("What company developed the most successful steam engine indicator?" -> "successful steam engine indicator").
    Ties go to the later run (English questions put their subject late)."""
    best: list[str] = []
    run: list[str] = []
    for word in _WORD.findall(question) + [""]:  # "" closes the last run
        if word and word.lower() not in _NOT_TOPIC and not word.isdigit():
            run.append(word)
            continue
        if run and len(run) >= len(best):
            best = run
        run = []
    if any(w[0].isupper() for w in best):  # a name: "married Edgar Atheling's sister" -> "Edgar Atheling's sister"
        while best and not best[0][0].isupper():
            best = best[1:]
    return " ".join(best)


def rules_rewrite(question: str, history: Sequence[Turn]) -> str:
    """The deterministic rewrite: the first pronoun replaced by the previous user question's key phrase, or,
    when there is no pronoun to replace, the previous question followed by the follow-up."""
    previous = _previous_question(history)
    if previous is None:
        return question
    topic = topic_phrase(previous)
    proper = bool(topic) and topic[0].isupper()
    named = topic if proper else f"the {topic}"
    for match in _WORD.finditer(question):
        word = match.group(0).lower()
        if not topic or word not in _ANAPHORA | {"there"}:
            continue
        if word == "there":
            if _refers_there(question) is None or _refers_there(question).start() != match.start():
                continue
            replacement = f"in {named}"
        elif word in ("its", "their", "theirs", "his", "hers") or (word == "her" and _possessive_her(question, match)):
            replacement = f"{named}'" if named.endswith("s") else f"{named}'s"
        elif word in ("this", "these", "those") and _followed_by_noun(question, match):
            # a determiner: "this engine" -> "the engine (steam engine indicator)"
            return _append_topic(question[:match.start()] + "the" + question[match.end():], topic)
        else:
            replacement = named
        return question[:match.start()] + replacement + question[match.end():]
    return f"{previous.rstrip()} {question.strip()}"


def _refers_there(question: str) -> re.Match | None:
    """The first "there" that points at a place named earlier (not "Is there ...", "there were ...")."""
    for match in _THERE.finditer(question):
        before = _WORD.findall(question[:match.start()])
        if not before or before[-1].lower() not in _BEFORE_THERE:
            return match
    return None


def _previous_question(history: Sequence[Turn]) -> str | None:
    return next((t.text for t in reversed(history) if t.role == "user" and t.text.strip()), None)


def _possessive_her(question: str, match: re.Match) -> bool:
    rest = _WORD.findall(question[match.end():])
    return bool(rest) and rest[0].lower() not in STOPWORDS


def _followed_by_noun(question: str, match: re.Match) -> bool:
    rest = _WORD.findall(question[match.end():])
    return bool(rest) and rest[0].lower() not in STOPWORDS


def _append_topic(question: str, topic: str) -> str:
    """``question`` with "(about TOPIC)" before its question mark, unless it already holds the topic's words."""
    if set(content_words(topic)) <= set(content_words(question)):
        return question
    body = question.rstrip().rstrip("?").rstrip()
    return f"{body} ({topic})?" if question.rstrip().endswith("?") else f"{body} ({topic})"


def check_rewrite(rewrite: str, question: str, history: Sequence[Turn], max_chars: int) -> str | None:
    """Why the generator's ``rewrite`` of ``question`` must not be used (a short reason), or None when it may."""
    if not rewrite:
        return "empty"
    if len(rewrite) > max_chars:
        return f"too long ({len(rewrite)} > {max_chars} characters)"
    if question.rstrip().endswith("?") and not rewrite.endswith("?"):
        return "not a question"
    if rewrite.count("?") > 1:
        return "more than one question"
    own = set(content_words(rewrite))
    missing = [w for w in dict.fromkeys(content_words(question)) if w not in own]
    if missing:
        return f"drops the follow-up's words {missing}"
    context = set()
    for turn in history:
        context.update(content_words(turn.text))
    added = own - set(content_words(question))
    if not added & context:
        return "adds nothing from the conversation"
    invented = sorted(added - context)
    if len(invented) > 1:
        return f"invents words {invented}"
    return None


def clean_output(text: str) -> str:
    """The generator's reply as one question: first non-empty line, labels and quotes dropped."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    line = re.sub(r"^(standalone|rewritten)?\s*(question)?\s*:\s*", "", line, flags=re.I).strip()
    return line.strip("\"'“”` ").strip()


class FollowupRewriter:
    """Turns the last user message of a conversation into the question to search (see the module docstring).

    Cheap to build (it holds the loaded generator and batcher, nothing of its own): the chat route builds one
    per request from the answer service, ``FollowupRewriter.for_answers(answers)``.
    """

    def __init__(
        self, llm: "Generator | None", batcher: "BatchingGenerator | None", settings: FollowupSettings,
    ):
        if settings.mode == "generator" and (llm is None or batcher is None):
            raise ValueError("followup.mode 'generator' needs a loaded generator and its batcher")
        self.llm = llm
        self.batcher = batcher
        self.settings = settings

    @classmethod
    def for_answers(cls, answers: "AnswerService") -> "FollowupRewriter":
        """The rewriter for the answer service's generator and settings."""
        return cls(answers.llm, answers.batcher, answers.settings.followup)

    async def rewrite(self, question: str, history: Sequence[Turn]) -> Rewrite:
        """The standalone form of ``question`` given the ``history`` before it (oldest first)."""
        history = self._recent(history)
        why = needs_context(question)
        if self.settings.mode == "off" or why is None or _previous_question(history) is None:
            return Rewrite(question, question, "unchanged", why or "")
        if self.settings.mode == "generator":
            generated, refused = await self._generate(question, history)
            if refused is None:
                return Rewrite(generated, question, "generator", why)
            log.info("follow-up rewrite %r refused (%s); using the rules", generated, refused)
            why = f"{why}; generator's rewrite refused: {refused}"
        return Rewrite(rules_rewrite(question, history), question, "rules", why)

    def build_messages(self, question: str, history: Sequence[Turn]) -> list[dict[str, str]]:
        """The chat that asks the generator for the rewrite."""
        conversation = "\n".join(f"{t.role.capitalize()}: {_clip(t.text)}" for t in history)
        ref = _first_reference(question)
        what = f"says what '{ref}' refers to" if ref else "is a complete question"
        request = REQUEST.format(conversation=conversation, question=question, what=what)
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": request}]

    async def _generate(self, question: str, history: Sequence[Turn]) -> tuple[str, str | None]:
        prompt = self.llm.render_chat(self.build_messages(question, history))
        try:
            result = await self.batcher.submit(prompt, self.settings.max_new_tokens, timeout_s=self.settings.timeout_s)
        except (Overloaded, GenerationTimeout) as exc:  # the answer itself will meet the same limits
            return "", f"generator unavailable: {exc}"
        text = clean_output(result.text)
        previous = _previous_question(history) or ""
        max_chars = min(self.settings.max_chars, 2 * (len(question) + len(previous)) + 20)
        return text, check_rewrite(text, question, history, max_chars)

    def _recent(self, history: Sequence[Turn]) -> list[Turn]:
        """The turns from the ``history_turns``-th last user message on."""
        users = [i for i, t in enumerate(history) if t.role == "user"]
        start = users[-self.settings.history_turns] if len(users) >= self.settings.history_turns else 0
        return [t for t in history[start:] if t.text.strip()]


def _first_reference(question: str) -> str | None:
    """The first word of ``question`` that refers back ("it", "his", "there"), as written."""
    for match in _WORD.finditer(question):
        if match.group(0).lower() in _ANAPHORA:
            return match.group(0)
    there = _refers_there(question)
    return there.group(0) if there else None


def _clip(text: str, limit: int = 400) -> str:
    """A turn's text cut to ``limit`` characters: answers may be long, the names they hold come early."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " ..."
