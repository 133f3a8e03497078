"""Schemathesis hooks that put non-finite numbers in JSON bodies (issue 24), for tests/test_hardening_slow.py.

Schemathesis generates only finite numbers, and its JSON writer (like every JSON writer) refuses NaN and the
infinities, yet Python's JSON parser, and so a FastAPI service, accepts ``NaN``, ``Infinity`` and ``-Infinity``.
Loaded with ``SCHEMATHESIS_HOOKS=tests.schemathesis_nonfinite``, every generated JSON body is sent with one of
its values (any leaf, at any depth, or the whole body) replaced by one of those tokens or by a number too large
for a float (``1e999``), written into the body's text. (The bodies as generated are the campaign's:
tests/test_campaign_slow.py.)
"""

from __future__ import annotations

import json
import os
from typing import Any

import schemathesis
from hypothesis import strategies as st

TOKENS = ("NaN", "Infinity", "-Infinity", "1e999", "-1e999")
_MARK = "__rag_non_finite__"
# When set, every body written with a token is appended here (one line each): the test counts them, so a run in
# which the hooks never fired cannot pass for one that found nothing.
LOG_ENV = "RAG_NONFINITE_LOG"


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON value a number could go: the value itself and each of its descendants."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def with_token(body: Any, path: tuple, token: str) -> bytes:
    """``body`` as JSON text with the value at ``path`` replaced by the raw ``token``."""
    if not path:
        path, body = ("body",), {"body": body}  # the whole body: written through the same path as the rest
        text = with_token(body, path, token).decode()
        return text.removeprefix('{"body": ').removesuffix("}").encode()
    copy = json.loads(json.dumps(body))
    target = copy
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = _MARK
    text = json.dumps(copy).replace(json.dumps(_MARK), token)
    if log := os.environ.get(LOG_ENV):
        with open(log, "a", encoding="utf-8") as out:
            out.write(text[:500].replace("\n", " ") + "\n")
    return text.encode()


def _json_operation(context: Any) -> bool:
    operation = getattr(context, "operation", None)
    alternatives = getattr(operation, "body", None) or []
    return any("json" in (getattr(alt, "media_type", "") or "") for alt in alternatives)


@schemathesis.hook
def flatmap_body(context: Any, body: Any) -> Any:
    if not _json_operation(context) or isinstance(body, (bytes, str)):
        return st.just(body)
    try:
        paths = _paths(body)
        json.dumps(body)
    except (TypeError, ValueError):  # not a JSON value (a binary part): sent as generated
        return st.just(body)
    return st.builds(with_token, st.just(body), st.sampled_from(paths), st.sampled_from(TOKENS))
