"""Chat follow-ups rewritten into standalone questions (rag.answering.followup).

Fast tests of detection, the rules rewrite and the checks on a generated rewrite (no model), the rewriter's
choice between them with a scripted generator in place of the 0.5B (the real one is in the e2e tests below and
in ``python -m evals.followup``), and the chat route end to end with the real generator on three cases.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from rag.generation.batching import GenerationTimeout
from rag.answering.followup import (
    FollowupRewriter, Turn, check_rewrite, clean_output, needs_context, rules_rewrite, topic_phrase,
)
from rag.generation.base import GenerationResult
from rag.settings import FollowupSettings

CASES = json.loads((Path(__file__).parent / "data" / "followup_cases.json").read_text(encoding="utf-8"))["cases"]
INDICATOR = [
    Turn("user", "What company developed the most successful steam engine indicator?"),
    Turn("assistant", "Charles Porter's, built by Charles Richard."),
]


def history(case: dict) -> list[Turn]:
    return [Turn(t["role"], t["content"]) for t in case["turns"]]


@pytest.mark.parametrize("question", [
    "Where was it exhibited?", "Who improved it?", "When did William invade his kingdom?", "Who lived there?",
    "And England?", "What about Watt?", "Why?", "Who built this engine?",
])
def test_follow_ups_are_detected(question):
    assert needs_context(question)


@pytest.mark.parametrize("question", [
    "When was the Battle of Hastings?", "Is there a steam engine indicator in London?",
    "What company developed the engine that Watt improved?", "How long did Western Europe control Cyprus?",
])
def test_self_contained_questions_are_left_alone(question):
    assert needs_context(question) is None


def test_every_written_case_is_detected_as_written():
    for case in CASES:
        assert bool(needs_context(case["question"])) != bool(case.get("control")), case["id"]


def test_topic_phrase_is_the_earlier_questions_key_phrase():
    assert topic_phrase(INDICATOR[0].text) == "successful steam engine indicator"
    assert topic_phrase("Who married Edgar Atheling's sister Margaret?") == "Edgar Atheling's sister Margaret"


def test_rules_replace_the_pronoun_with_the_topic():
    assert rules_rewrite("Where was it exhibited?", INDICATOR) == "Where was the successful steam engine indicator exhibited?"
    assert rules_rewrite("Who built this engine?", INDICATOR) == "Who built the engine (successful steam engine indicator)?"
    steam = [Turn("user", "Who developed the first commercial steam-powered device?"), Turn("assistant", "Savery.")]
    assert rules_rewrite("Who improved its design?", steam) == "Who improved the commercial steam-powered device's design?"


def test_rules_put_the_earlier_question_before_an_elliptical_follow_up():
    ireland = [Turn("user", "In what year did the Normans invade Ireland?"), Turn("assistant", "1169.")]
    assert rules_rewrite("And England?", ireland) == "In what year did the Normans invade Ireland? And England?"


def test_rules_without_an_earlier_question_change_nothing():
    assert rules_rewrite("Where was it exhibited?", [Turn("assistant", "Hello.")]) == "Where was it exhibited?"


@pytest.mark.parametrize(("rewrite", "why"), [
    ("", "empty"),
    ("Where was it exhibited?", "adds nothing"),
    ("Where was the steam engine indicator", "not a question"),
    ("Where was the steam engine indicator shown?", "drops"),
    ("Where was the steam engine indicator exhibited? Who built it?", "more than one"),
    ("Where was the steam engine indicator of the Royal Navy exhibited?", "invents"),
    ("Where was the steam engine indicator exhibited" + " really" * 40 + "?", "too long"),
])
def test_a_bad_generated_rewrite_is_refused_with_its_reason(rewrite, why):
    reason = check_rewrite(rewrite, "Where was it exhibited?", INDICATOR, max_chars=150)
    assert reason is not None and why in reason, reason


def test_a_good_generated_rewrite_passes():
    ok = "Where was the most successful steam engine indicator exhibited?"
    assert check_rewrite(ok, "Where was it exhibited?", INDICATOR, max_chars=150) is None
    assert check_rewrite("Where were they exhibited in 1862?", "Where was it exhibited?", INDICATOR, 150) is not None


def test_clean_output_keeps_the_question_only():
    assert clean_output('Standalone question: "Where was X exhibited?"\nIt was in London.') == "Where was X exhibited?"


class ScriptedLLM:
    """Stands in for the generator where the test is about the rewriter's choices, not the model's text."""

    def render_chat(self, messages):
        return messages[-1]["content"]


class ScriptedBatcher:
    def __init__(self, reply: str | Exception):
        self.reply, self.prompts = reply, []

    async def submit(self, prompt, max_new_tokens, on_token=None, timeout_s=None):
        self.prompts.append(prompt)
        if isinstance(self.reply, Exception):
            raise self.reply
        return GenerationResult(text=self.reply, prompt_tokens=1, completion_tokens=1, finish_reason="stop")


def rewrite(reply, question="Where was it exhibited?", turns=INDICATOR, **settings):
    settings.setdefault("mode", "generator")
    batcher = ScriptedBatcher(reply)
    rewriter = FollowupRewriter(ScriptedLLM(), batcher, FollowupSettings(**settings))
    return asyncio.run(rewriter.rewrite(question, turns)), batcher


def test_the_generators_rewrite_is_used_when_it_passes():
    result, batcher = rewrite("Where was the steam engine indicator exhibited?")
    assert (result.question, result.method, result.original) == (
        "Where was the steam engine indicator exhibited?", "generator", "Where was it exhibited?")
    assert "'it' refers to" in batcher.prompts[0] and "Charles Porter" in batcher.prompts[0]


def test_an_echoed_rewrite_falls_back_to_the_rules():
    result, _ = rewrite("Where was it exhibited?")
    assert result.method == "rules" and "adds nothing" in result.note
    assert result.question == "Where was the successful steam engine indicator exhibited?"


def test_a_late_generator_falls_back_to_the_rules():
    result, _ = rewrite(GenerationTimeout("no result within 30 s"))
    assert result.method == "rules" and "unavailable" in result.note


def test_a_self_contained_question_costs_no_generation():
    result, batcher = rewrite("unused", question="When was the Battle of Hastings?")
    assert result.method == "unchanged" and result.question == "When was the Battle of Hastings?"
    assert not batcher.prompts


def test_modes_rules_and_off():
    result, batcher = rewrite("unused", mode="rules")
    assert result.method == "rules" and not batcher.prompts
    result, batcher = rewrite("unused", mode="off")
    assert (result.method, result.question) == ("unchanged", "Where was it exhibited?") and not batcher.prompts


def test_only_the_last_turns_are_shown():
    turns = [Turn("user", f"Question {n} about topic{n}?") for n in range(6)]
    _, batcher = rewrite("Where was it exhibited?", turns=turns, history_turns=2)
    assert "topic4" in batcher.prompts[0] and "topic3" not in batcher.prompts[0]


# ------------------------------------------------------------------ the chat route, the real generator


@pytest.fixture(scope="module")
def chat(runtime):
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app(runtime.settings, runtime=runtime)) as client:
        yield client


@pytest.mark.e2e
@pytest.mark.parametrize("case_id", ["indicator-exhibited", "savery-improved", "control-hastings"])
def test_chat_route_searches_the_standalone_question(chat, runtime, case_id):
    case = next(c for c in CASES if c["id"] == case_id)
    response = chat.post("/v1/chat/completions", json={
        "model": "rag", "max_tokens": 24, "top_k": 3,
        "messages": [*case["turns"], {"role": "user", "content": case["question"]}],
    })
    assert response.status_code == 200, response.text
    rag = response.json()["rag"]
    if case.get("control"):
        assert (rag["rewrite"], rag["question"]) == ("unchanged", case["question"])
        return
    assert rag["rewrite"] in ("generator", "rules") and rag["question"] != case["question"], rag
    assert check_rewrite(rag["question"], case["question"], history(case), 300) is None or rag["rewrite"] == "rules"
    # What was searched finds the gold page among the passages retrieved for it (the rewrite is checked here, not
    # whether the 0.5B then answers right: its answer's citations are only the quotes it used).
    passages = runtime.answers.retriever.retrieve(rag["question"], 3)
    assert any(p.chunk.document == case["doc"] and p.chunk.page_start <= case["pages"][0] <= p.chunk.page_end
               for p in passages), (rag["question"], [(p.chunk.document, p.chunk.page_start) for p in passages])


def test_rules_resolve_a_determiner_and_a_plural_possessive():
    castle = [Turn("user", "What was the name of the castle the Normans held in Armenian service?")]
    assert rules_rewrite("What does this name mean?", castle) == "What does the name mean (Armenian service)?"
    canary = [Turn("user", "Who took the title of King of the Canary Islands?")]
    assert rules_rewrite("Who sold their rights?", canary) == "Who sold Canary Islands' rights?"


@pytest.mark.e2e
def test_chat_route_reports_the_question_it_searched(runtime):
    """Streamed and not: an off-topic follow-up, rewritten by the rules, abstains, and the response says what
    was searched; a single message is searched as it is."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    rt = runtime.derive({"followup": {"mode": "rules"}})
    messages = [{"role": "user", "content": "Who designed the Eiffel Tower?"},
                {"role": "assistant", "content": "Gustave Eiffel's company."},
                {"role": "user", "content": "When was it finished?"}]
    try:
        with TestClient(create_app(rt.settings, runtime=rt)) as client:
            body = client.post("/v1/chat/completions", json={"messages": messages}).json()
            assert body["rag"]["question"] == "When was Eiffel Tower finished?", body["rag"]
            assert body["rag"]["rewrite"] == "rules" and body["rag"]["abstained"]
            with client.stream("POST", "/v1/chat/completions", json={"messages": messages, "stream": True}) as r:
                events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
            assert events[-1]["rag"]["question"] == "When was Eiffel Tower finished?"
            single = client.post("/v1/chat/completions", json={"messages": messages[-1:]}).json()
            assert (single["rag"]["question"], single["rag"]["rewrite"]) == ("When was it finished?", "unchanged")
    finally:
        rt.close()
