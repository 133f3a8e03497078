"""Errors that carry the fix in their message."""


class RagError(Exception):
    """Base of every error this package raises on purpose."""


class ModelUnavailable(RagError):
    """A model could not be found, verified or loaded; the message says what to install or set."""


class PdfError(RagError):
    """A PDF that cannot be ingested; the message is the reason shown to the user."""


class IndexMissing(RagError):
    """No index at the configured path; run rag-ingest first."""


class UsageError(RagError):
    """Bad arguments to a command."""
