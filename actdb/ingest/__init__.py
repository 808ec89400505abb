"""Ingest: sources (which images) -> pipeline (decode, batch, forward, reduce) -> writer (store)."""
