"""Ingest: getting series from where they land to the pipeline (the mobile unit's watched folder)."""
