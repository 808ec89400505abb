"""Reading a store: catalog SQL, arrays and their rows. Features take a `Store`; the
notebook API (`actdb.Database`) adds the feature methods on top of it."""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from .. import imagenet, weightspec
from ..errors import ActdbError
from . import arrays
from .catalog import Catalog
from .stored_array import StoredArray

READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN"}
# An array's data version: a digest of its done ids and of the digests of its committed chunks
# (arrays.rows_digest: the done rows' ids and stored values, recorded in the transaction that
# marks them done). Any change of stored values changes it, so every derived artifact keyed by
# it (index records, unit statistics, maps, report pages) is recomputed, not served: a re-ingest
# of changed files at the same ids too. Arrays made before chunk digests get one of their ids alone.
ARRAYS_QUERY = """
WITH marked AS (SELECT array_id, count(*) AS n,
                       printf('%d.%d.%s', count(*), bit_xor(hash(image_id)), sum(hash(image_id))::VARCHAR) AS ids
                FROM done GROUP BY array_id),
     digested AS ({digests})
SELECT a.id, m.name AS model, m.weights, m.weights_digest, a.layer, a.reduce, a.channels, a.dtype, a.precision,
       a.resize, a.zarr_path, coalesce(marked.n, 0) AS rows_done,
       left(md5(coalesce(marked.ids, '0') || coalesce('/' || digested.chunks, '')), 16) AS data_version,
       m.id AS model_id, m.preprocess, m.input_size, m.model_path, m.weights_path
FROM arrays a JOIN models m ON m.id = a.model_id LEFT JOIN marked ON marked.array_id = a.id
     LEFT JOIN digested ON digested.array_id = a.id ORDER BY a.id
"""
CHUNK_DIGESTS = ("SELECT array_id, string_agg(chunk::VARCHAR || ':' || digest, ',' ORDER BY chunk) AS chunks "
                 "FROM chunk_digests GROUP BY array_id")
NO_CHUNK_DIGESTS = "SELECT NULL::INTEGER AS array_id, NULL::VARCHAR AS chunks WHERE false"  # a store made before them


def store_path(path: str | Path | None) -> Path:
    path = path or os.environ.get("ACTDB_STORE")
    if not path:
        raise ActdbError("no store given: name one (actdb --store PATH, or actdb.open(PATH)) or set ACTDB_STORE")
    return Path(path)


class Store:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.catalog = Catalog(self.path)
        self._memo: dict = {}
        self._memo_stamp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        """Nothing stays open between calls (each opens a short catalog session); `with` for symmetry."""

    def memoized(self, key, compute):
        """`compute()` once per catalog state. Opening the catalog costs ~25 ms; a stat of its
        files tells whether anything was committed since, so repeated queries skip it."""
        stamp = self.catalog.stamp()
        if stamp != self._memo_stamp:
            self._memo, self._memo_stamp = {}, stamp
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def sql(self, query: str, params: list | None = None, *, memoize: bool = False) -> pd.DataFrame:
        """Read-only SQL on the catalog; statements that write are refused before they run.

        `memoize`: reuse the answer while the catalog is unchanged (for small, repeated lookups)."""
        if memoize:
            return self.memoized(("sql", query, repr(params)), lambda: self.sql(query, params)).copy()
        try:
            statements = duckdb.extract_statements(query)
        except duckdb.Error as exc:
            raise ActdbError(f"SQL error: {str(exc).splitlines()[0]}") from None
        if not statements:
            raise ActdbError("empty SQL statement")
        for statement in statements:
            kind = statement.type.name
            if kind not in READ_ONLY_STATEMENTS:
                raise ActdbError(f"actdb sql is read-only: {kind} statements are refused (use SELECT)")
        if len(statements) > 1:
            raise ActdbError(f"give one statement at a time ({len(statements)} given)")
        with self.catalog.read() as con:
            try:
                return con.execute(query, params or []).df()
            except duckdb.PermissionException:
                raise ActdbError("SQL here reaches only the catalog's tables and views: files, URLs and "
                                 "extensions are refused") from None
            except duckdb.Error as exc:
                raise ActdbError(f"SQL error: {str(exc).splitlines()[0]}") from None

    def has_table(self, name: str) -> bool:
        """Tables added after a store was made (optimized_images) are created on first write."""
        found = self.sql("SELECT count(*) AS n FROM information_schema.tables WHERE table_name = ?", [name],
                         memoize=True)
        return bool(found.n[0])

    def images(self, classes: str | list[str] | None = None) -> pd.DataFrame:
        where, params = _class_filter(self.class_labels(classes))
        return self.sql(f"SELECT * FROM images {where} ORDER BY id", params)

    def arrays(self) -> list[StoredArray]:
        """Every stored array, in the order they were made."""
        return list(self.memoized("arrays", self._read_arrays))

    def _read_arrays(self) -> tuple[StoredArray, ...]:
        digests = CHUNK_DIGESTS if self.has_table("chunk_digests") else NO_CHUNK_DIGESTS
        frame = self.sql(ARRAYS_QUERY.format(digests=digests))
        return tuple(StoredArray(**{k: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v)
                                    for k, v in row.items()}) for row in frame.to_dict("records"))

    def errors(self) -> pd.DataFrame:
        return self.sql("SELECT * FROM errors ORDER BY logged_at")

    def array(self, model: str | None = None, layer: str | None = None, *, reduce: str = "mean",
              weights: str | None = None) -> StoredArray:
        """The one stored array that fits; model and layer may be left out when only one fits."""
        stored = self.arrays()
        wanted_weights = weightspec.recorded(weights)
        match = [a for a in stored if a.reduce == reduce and (model is None or a.model == model)
                 and (layer is None or a.layer == layer) and (weights is None or a.weights == wanted_weights)]
        wanted = f"{model or '?'}/{layer or '?'}/{reduce}" + (f" ({weights} weights)" if weights else "")
        if not match:
            choices = _choices(stored, ["model", "layer", "reduce", "weights"])
            raise ActdbError(f"no stored array {wanted} in {self.path}; stored arrays: {choices[0]}",
                             f"no stored array {wanted} in {self.path}; stored arrays: {choices[1]}")
        if len(match) > 1:
            differing = [c for c in ("model", "layer", "reduce", "weights")
                         if len({getattr(a, c) for a in match}) > 1]
            choices = _choices(match, ["model", "layer", *differing])
            raise ActdbError(f"several stored arrays fit {wanted}: name one of {choices[0]}",
                             f"several stored arrays fit {wanted}: name one of {choices[1]}")
        return match[0]

    def done_ids(self, array: StoredArray, classes: str | list[str] | None = None) -> np.ndarray:
        """The image ids with a row in `array` (only those of `classes`), ascending."""
        where, params = _class_filter(self.class_labels(classes, array), prefix="AND")
        frame = self.sql(
            f"SELECT d.image_id FROM done d JOIN images ON images.id = d.image_id "
            f"WHERE d.array_id = ? {where} ORDER BY d.image_id",
            [array.id, *params],
        )
        return frame["image_id"].to_numpy(np.int64)

    def activations(self, model: str | None = None, layer: str | None = None, *, reduce: str = "mean", ids=None,
                    classes: str | list[str] | None = None, weights: str | None = None, return_ids: bool = False):
        """Stored vectors as float32 (n, channels), row k for image ids[k].

        Without `ids`: every image done for this array (optionally only `classes`), in id order.
        """
        array = self.array(model, layer, reduce=reduce, weights=weights)
        done = self.done_ids(array, classes)
        if ids is None:
            ids = done
        else:
            ids = np.asarray(ids, dtype=np.int64)
            missing = ids[~np.isin(ids, done)]
            if len(missing):
                raise ActdbError(f"{len(missing)} of the requested images (e.g. id {missing[0]}) have no "
                                 f"{array.name} activations yet: ingest them first")
        values = self.rows(array, ids)
        return (ids, values) if return_ids else values

    def rows(self, array: StoredArray, ids) -> np.ndarray:
        """Rows `ids` (done) of `array` as float32, in the order given."""
        return arrays.read_rows(arrays.open_array(self.path, array.zarr_path), np.asarray(ids, dtype=np.int64))

    def class_labels(self, classes: str | list[str] | None, array: StoredArray | None = None) -> list[str] | None:
        """Classes as stored labels: a label, a wnid or an ImageNet name each (a string is one class).
        With `array`, each must have rows in it. A class no image has is an error, not an empty result."""
        if classes is None:
            return None
        names = [classes] if isinstance(classes, str) else list(classes)
        if not all(isinstance(name, str) and name.strip() for name in names) or not names:
            raise ActdbError(f"classes {classes!r}: give class names (labels, wnids or ImageNet names)")
        return list(dict.fromkeys(self.class_label(name, array) for name in names))

    def class_label(self, name: str, array: StoredArray | None = None) -> str:
        """One class as its stored label (see `class_labels`)."""
        labels = self.labels(array)
        if name in labels:
            return name
        wnids = [name]
        with contextlib.suppress(ActdbError):
            wnids.append(imagenet.resolve(name).wnid)  # an ImageNet name, however spelled
        found = self.sql("SELECT DISTINCT label FROM images WHERE wnid IN (SELECT unnest(?::VARCHAR[])) "
                         "AND label IS NOT NULL", [wnids], memoize=True)
        if len(found) == 1 and found.label[0] in labels:
            return found.label[0]
        shown = ", ".join(labels[:12]) + (" ..." if len(labels) > 12 else "")
        where = f"rows in {array.describe()}" if array is not None else "images in this store"
        raise ActdbError(f"class {name!r} has no {where}; stored classes: {shown or 'none: no image has a label'}")

    def labels(self, array: StoredArray | None = None) -> list[str]:
        """The labels with at least one stored row (in `array`, or in any array), sorted."""
        if array is None:
            query, params = "SELECT DISTINCT label FROM images WHERE label IS NOT NULL ORDER BY 1", []
        else:
            query = ("SELECT DISTINCT i.label FROM done d JOIN images i ON i.id = d.image_id "
                     "WHERE d.array_id = ? AND i.label IS NOT NULL ORDER BY 1")
            params = [array.id]
        return self.sql(query, params, memoize=True).label.tolist()

    def info(self) -> dict:
        """What is stored: counts, models, arrays, classes, errors, size on disk."""
        with self.catalog.read() as con:
            def scalar(q):
                return con.execute(q).fetchone()[0]

            stored = "id IN (SELECT image_id FROM done)"  # images with a row in some array
            summary = {
                "store": str(self.path),
                "images": scalar(f"SELECT count(*) FROM images WHERE {stored}"),
                "classes": scalar(f"SELECT count(DISTINCT label) FROM images WHERE label IS NOT NULL AND {stored}"),
                "failed_images": scalar("SELECT count(DISTINCT coalesce(image_id::VARCHAR, path)) FROM errors"),
                "errors": scalar("SELECT count(*) FROM errors"),
                "sources": con.execute(
                    f"SELECT source, split, count(*) FILTER ({stored}) AS images, count(*) FILTER (NOT {stored}) "
                    "AS not_stored FROM images GROUP BY ALL ORDER BY source, split"
                ).df().to_dict("records"),
                "models": con.execute(
                    "SELECT name, weights, preprocess, input_size FROM models ORDER BY id"
                ).df().to_dict("records"),
                "arrays": con.execute(
                    "SELECT model, weights, layer, reduce, channels, dtype, precision, resize, rows_done "
                    "FROM array_list ORDER BY array_id"
                ).df().to_dict("records"),
                "top_classes": con.execute(
                    f"SELECT label, count(*) AS images FROM images WHERE label IS NOT NULL AND {stored} "
                    "GROUP BY label ORDER BY images DESC, label LIMIT 10"
                ).df().to_dict("records"),
                "runs": con.execute(
                    "SELECT id, status, planned, ingested, skipped, failed, round(images_per_s, 2) AS images_per_s, "
                    "params->>'pid' AS pid, params->>'host' AS host FROM runs ORDER BY id DESC LIMIT 5"
                ).df().to_dict("records"),
            }
        for run in summary["runs"]:
            pid, host = run.pop("pid"), run.pop("host")
            run["status"] = _shown_status(run["status"], pid, host)
        summary["bytes_on_disk"] = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return summary


def _shown_status(status: str, pid, host) -> str:
    """A `running` run whose process is gone from this machine was killed (SIGKILL, a crash)."""
    if status != "running" or not pid or host != socket.gethostname():
        return status
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return "killed"
    except PermissionError:
        pass  # alive, another user's
    return status


def _choices(stored: list[StoredArray], columns: list[str]) -> tuple[str, str]:
    """Arrays as keyword arguments and as command-line options, "none yet" when there are none."""
    api, cli = [], []
    for array in stored:
        values = {c: array.selection()[c] for c in columns}
        api.append("(" + ", ".join(f"{c}={v!r}" for c, v in values.items()) + ")")
        cli.append(" ".join(f"--{c} {v}" for c, v in values.items()))
    return (" or ".join(api) or "none yet"), (" | ".join(cli) or "none yet")


def _class_filter(labels: list[str] | None, prefix: str = "WHERE") -> tuple[str, list]:
    if labels is None:
        return "", []
    return f"{prefix} images.label IN (SELECT unnest(?::VARCHAR[]))", [labels]
