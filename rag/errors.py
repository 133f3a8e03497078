"""Errors that carry the fix in their message, and the exit codes every command maps them to."""

from __future__ import annotations

from enum import IntEnum


class RagError(Exception):
    """Base of every error this package raises on purpose."""


class ModelUnavailable(RagError):
    """A model could not be found, verified or loaded; the message says what to install or set."""


class PdfError(RagError):
    """A PDF that cannot be ingested; the message is the reason shown to the user."""


class IndexUnavailable(RagError):
    """The index cannot be used as asked: missing, busy or incompatible (the subclasses)."""


class IndexMissing(IndexUnavailable):
    """No index at the configured path; run rag-ingest first."""


class UsageError(RagError):
    """Bad arguments to a command."""


class ExitCode(IntEnum):
    """One table for every command (rag-ingest, rag-ask, rag-serve, rag-eval); ``EXIT_CODES`` explains it."""

    OK = 0
    PARTIAL = 1  # rag-ingest: some files skipped (the rest ingested); rag-eval: below --min-grounded-accuracy
    USAGE = 2  # bad arguments, a missing or empty folder, a malformed eval set, invalid settings
    INDEX = 3  # the index is missing, busy (another writer) or built with other models/chunking
    MODEL = 4  # a model is missing or fails verification
    ABSTAINED = 5  # rag-ask: the documents do not contain the answer


EXIT_CODES = """\
exit codes (the same for every rag-* command):
  0  ok
  1  partial failure: rag-ingest skipped some files (reported, the rest ingested);
     rag-eval scored below --min-grounded-accuracy on some set
  2  usage error: bad arguments, a missing or empty folder, a malformed eval set, invalid settings
  3  index missing, busy (another process is writing) or built with other models/chunking (--rebuild)
  4  a model is missing or fails verification
  5  rag-ask only: abstained, the documents do not contain the answer
"""


def exit_code(error: Exception) -> ExitCode:
    """The exit code of a command that stopped on ``error``."""
    from pydantic import ValidationError

    if isinstance(error, IndexUnavailable):
        return ExitCode.INDEX
    if isinstance(error, ModelUnavailable):
        return ExitCode.MODEL
    if isinstance(error, (RagError, ValidationError)):
        return ExitCode.USAGE
    raise error


def error_message(error: Exception) -> str:
    """What a command prints for ``error``: a settings ValidationError as 'field: problem' items, without
    pydantic's echo of every input value."""
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        items = [
            (".".join(str(part) for part in e["loc"]) + ": " if e["loc"] else "") + e["msg"].removeprefix("Value error, ")
            for e in error.errors(include_url=False)
        ]
        return "invalid settings: " + "; ".join(items)
    return str(error)
