"""The rag-ingest command."""
