"""HTTP routes: each module parses a request, calls ``rag`` and maps the result to ``api.schemas``."""
