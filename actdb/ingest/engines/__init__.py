"""Engines execute an ingest plan (`run.Plan`): `local` in this process, `ray` on Ray Data."""
