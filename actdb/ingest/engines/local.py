"""The single-process engine: a tf.data reader, the forward pass in this process, and a
background writer thread for chunks and catalog commits."""
from __future__ import annotations

import threading

import numpy as np

from .. import pipeline, writer
from ..plan import IngestSummary, Plan, execute


class LocalEngine:
    name = "local"

    def __init__(self):
        self._warm_up: threading.Thread | None = None

    def default_batch_size(self, input_size: int) -> int:
        from ...models import forward

        return forward.default_batch_size(input_size, forward.default_strategy())

    def start(self, extractor) -> None:
        """Tracing overlaps the weights digest and the catalog registration."""
        self._warm_up = threading.Thread(target=extractor.warm_up, name="actdb-trace", daemon=True)
        self._warm_up.start()

    def run(self, plan: Plan, loaded, extractor, progress: bool) -> IngestSummary:
        if self._warm_up is not None:
            self._warm_up.join()
        todo, todo_paths = plan.todo, plan.todo_paths
        dataset = pipeline.image_dataset(todo, todo_paths, extractor.input_size, plan.options.resize,
                                         extractor.batch_size)
        store_writer = writer.StoreWriter(plan.catalog, plan.run_id, plan.targets, plan.model_id,
                                          plan.options.predictions, commit_seconds=plan.options.commit_seconds,
                                          changed=plan.changed)

        def body(advance):
            expected = 0  # position in todo: ids that never came out of the pipeline failed to decode
            for batch in dataset:
                batch_ids = batch["id"].numpy()
                expected = _report_dropped(store_writer, todo, todo_paths, expected, batch_ids)
                outputs = extractor(batch["pixels"])
                store_writer.put(writer.Batch(batch_ids, batch["fingerprint"].numpy(), batch["height"].numpy(),
                                              batch["width"].numpy(), outputs))
                advance(len(batch_ids))
            _report_dropped(store_writer, todo, todo_paths, expected, None)

        summary, _ = execute(plan, store_writer, body, progress, self.name)
        return summary


def connect(options) -> LocalEngine:
    return LocalEngine()


def _report_dropped(store_writer, todo, todo_paths, expected: int, batch_ids) -> int:
    """Ids before the end of this batch that it does not contain were dropped as undecodable."""
    stop = len(todo) if batch_ids is None else int(np.searchsorted(todo, batch_ids[-1], side="right"))
    window = todo[expected:stop]
    dropped = window if batch_ids is None else window[~np.isin(window, batch_ids)]
    if len(dropped):
        positions = np.searchsorted(todo, dropped)
        store_writer.fail([(int(i), todo_paths[p]) for i, p in zip(dropped, positions)])
    return stop
