"""The single-process engine: a tf.data reader, the forward pass in this process, and a
background writer thread for chunks and catalog commits."""
from __future__ import annotations

import sys
import time

import numpy as np

from .. import pipeline, writer


def run(plan, extractor, progress: bool):
    from tqdm import tqdm

    from ..run import IngestSummary

    catalog, run_id, todo, todo_paths = plan.catalog, plan.run_id, plan.todo, plan.todo_paths
    dataset = pipeline.image_dataset(todo, todo_paths, extractor.input_size, plan.options.resize,
                                     extractor.batch_size)
    store_writer = writer.StoreWriter(catalog, run_id, plan.targets, plan.model_id, plan.options.predictions,
                                      commit_seconds=plan.options.commit_seconds)
    bar = tqdm(total=len(todo), unit="img", disable=not progress or len(todo) == 0, file=sys.stderr,
               dynamic_ncols=True, smoothing=0.1)
    expected = 0  # position in todo: ids that never came out of the pipeline failed to decode
    status = "failed"
    start = time.monotonic()
    try:
        for batch in dataset:
            batch_ids = batch["id"].numpy()
            expected = _report_dropped(store_writer, todo, todo_paths, expected, batch_ids)
            outputs = extractor(batch["pixels"])
            store_writer.put(writer.Batch(batch_ids, batch["fingerprint"].numpy(), batch["height"].numpy(),
                                          batch["width"].numpy(), outputs))
            bar.update(len(batch_ids))
        _report_dropped(store_writer, todo, todo_paths, expected, None)
        status = "done"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        bar.close()
        store_writer.close()
        seconds = time.monotonic() - start
        plan.finish(status, store_writer.ingested, seconds)
    return IngestSummary(run_id, plan.listed, store_writer.ingested, plan.skipped,
                         store_writer.failed + plan.previously_failed, seconds, [t.layer for t in plan.targets])


def _report_dropped(store_writer, todo, todo_paths, expected: int, batch_ids) -> int:
    """Ids before the end of this batch that it does not contain were dropped as undecodable."""
    stop = len(todo) if batch_ids is None else int(np.searchsorted(todo, batch_ids[-1], side="right"))
    window = todo[expected:stop]
    dropped = window if batch_ids is None else window[~np.isin(window, batch_ids)]
    if len(dropped):
        positions = np.searchsorted(todo, dropped)
        store_writer.fail([(int(i), todo_paths[p]) for i, p in zip(dropped, positions)])
    return stop
