"""The ingest writer's background thread hands every error to the main thread, never a hang."""
from __future__ import annotations

import threading

import pytest

from actdb.ingest.writer import StoreWriter


class FailingCatalog:
    """A catalog whose transactions fail, as a commit refused for a damaged chunk does."""

    def write(self):
        raise RuntimeError("the commit failed")


def test_an_error_in_the_last_commit_is_raised_by_close_not_waited_on():
    writer = StoreWriter(FailingCatalog(), run_id=1, targets=[], model_id=1, predictions=False,
                         commit_seconds=3600)
    raised = []

    def close():
        with pytest.raises(RuntimeError, match="the commit failed"):
            writer.close()
        raised.append(True)

    closer = threading.Thread(target=close, daemon=True)
    closer.start()
    closer.join(timeout=30)
    assert not closer.is_alive(), "close() still waits for a writer thread that stopped"
    assert raised == [True]
