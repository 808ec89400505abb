"""FAISS indexes over activation rows: streamed builds, recall-tuned search effort, exact ranking.

Every index is an `IDMap2` around one of four kinds, so rows keep their image ids (rows
can be missing) and can be read back by id:

- ``flat``: exact brute force; 4*d bytes per row.
- ``ivf``: IVF-Flat with K = 4*sqrt(N) lists trained on a sample; about flat's memory.
  `nprobe` lists are searched and nprobe = K is exhaustive, so any recall target is
  reachable. `auto` picks it when flat is too slow for one query.
- ``hnsw``: HNSW32 graph; no training, 4*d + 256 bytes per row, but a graph insert per
  row made builds ~3x slower than ivf (200k x 512, 2 cores). Chosen only on request.
- ``ivfpq``: IVF with d/8-byte product-quantised codes, for when memory is short.
  Distances are to the decoded vectors, so approximate, and high recall targets may be
  out of reach (the build report says so).

Answers are ranked exactly: FAISS proposes candidates with float32 matrix products,
whose rounding can reorder near-ties; the candidates' distances are then recomputed per
pair in float64 from the index's own vectors and sorted by (distance, id). Candidates
are fetched until every row within rounding of the k-th distance is in, so equal
distances always resolve to the smaller ids.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np

from ..choices import INDEX_KINDS, check_choice
from ..distance import check_metric, paired_distances_gathered, prepare, screening_distances
from ..errors import ActdbError
from ..files import atomic_path
from .metrics import faiss_metric_type, prepare_queries, reported_distances

Blocks = Iterable[tuple[np.ndarray, np.ndarray]]
ReadRows = Callable[[np.ndarray], np.ndarray]

KINDS = INDEX_KINDS
RECALL_K = 10
DEFAULT_RECALL_TARGET = 0.99  # a research answer should be right first; --recall lowers it
DEFAULT_EVAL_QUERIES = 500
DEFAULT_LATENCY_BUDGET_SECONDS = 0.05
# FAISS scans for one query on one core: 4.5 GB/s measured at 1M x 512 (bench/query.py),
# 9 GB/s at 200k x 512, on the 2-core dev machine.
FLAT_SCAN_BYTES_PER_SECOND = 5e9
# IDMap2 keeps an id array and a reverse hash map per row.
ID_BYTES_PER_ROW = 48
HNSW_NEIGHBOURS = 32
# FAISS wiki: K between 4*sqrt(N) and 16*sqrt(N) for search speed; training and adding cost
# grow with K. Measured on 1M x 512 at recall@10 0.99 (2 cores): 4*sqrt(N) (IVF4000, nprobe 40)
# builds in 99.6 s and answers in 2.7 ms p50; 2*sqrt(N) (IVF2000, nprobe 64) in 49.3 s and 6.1 ms.
# A build a researcher waits for matters more than 3 ms per query.
LISTS_PER_SQRT_ROW = 2
TRAIN_ROWS_PER_LIST = 40  # FAISS warns below 39 training rows per list
PQ_TRAIN_ROWS = 10_000  # 39 rows for each of a sub-quantiser's 256 codewords
DIMS_PER_PQ_BYTE = 8
MIN_APPROXIMATE_ROWS = 1_000
# Filtered searches on approximate kinds scan the allowed rows exactly up to this many:
# cheap (tens of ms), and selector search on a small allowed set misses neighbours.
EXACT_FILTER_MAX_ROWS = 65_536
# Bound on the rounding of screening distances, relative to the squared norms involved
# (float32 matrix products are ~1e-6; generous so that ties are never cut).
SCREEN_RELATIVE_ERROR = 1e-4
READ_BATCH_ROWS = 65_536
EXACT_BATCH_ENTRIES = 1 << 24  # query-row distances held at once in an exact scan (128 MiB)


class _Tuning(NamedTuple):
    search_params: dict[str, int]
    recall_at_10: float
    n_eval_queries: int
    target_reached: bool
    recall_curve: tuple[tuple[int, float], ...]


_EXACT_TUNING = _Tuning({}, 1.0, 0, True, ())  # flat: exact by construction, nothing to tune


@dataclass(frozen=True)
class BuildReport:
    """What was built and the recall it delivers, measured on held-out stored rows.

    recall_at_10 is over the 10 nearest *other* rows of each evaluation row, so the
    query's trivially found self-match does not inflate it. A flat index is exact by
    construction: recall 1.0, nothing measured.
    """

    kind: str
    metric: str
    factory: str
    search_params: dict[str, int]
    n_rows: int
    n_skipped: int  # rows with NaN/inf values (failed images), not indexed
    build_seconds: float
    recall_at_10: float
    n_eval_queries: int
    recall_target: float
    target_reached: bool
    recall_curve: tuple[tuple[int, float], ...]  # (search effort, recall@10) as tuned


def bytes_per_row(kind: str, dim: int) -> int:
    """Estimated index memory per row, ids included."""
    vector_bytes = {
        "flat": 4 * dim,
        "ivf": 4 * dim + 16,  # list entry id + direct map
        "hnsw": 4 * dim + 8 * HNSW_NEIGHBOURS + 16,  # level-0 links + levels/offsets
        "ivfpq": _pq_bytes(dim) + 16,
    }
    return vector_bytes[checked_kind(kind)] + ID_BYTES_PER_ROW


def choose_kind(
    n_rows: int,
    dim: int,
    memory_budget_bytes: int,
    latency_budget_seconds: float = DEFAULT_LATENCY_BUDGET_SECONDS,
) -> str:
    """The `auto` kind: flat while it fits and one query scans within the latency budget.

    Otherwise ivf (about flat's memory, cheap to build, recall tunable up to exact), and
    ivfpq when even ivf does not fit the memory budget.
    """
    def fits(kind: str) -> bool:
        return n_rows * bytes_per_row(kind, dim) <= memory_budget_bytes

    scan_seconds = n_rows * dim * 4 / FLAT_SCAN_BYTES_PER_SECOND
    if fits("flat") and scan_seconds <= latency_budget_seconds:
        return "flat"
    for kind in ("ivf", "ivfpq"):
        if fits(kind):
            return kind
    needed_gib = n_rows * bytes_per_row("ivfpq", dim) / 2**30
    raise ActdbError(
        f"even a compressed (ivfpq) index of {n_rows} rows needs {needed_gib:.1f} GiB; raise the memory budget"
    )


def build_index(
    blocks: Blocks,
    dim: int,
    metric: str = "l2",
    kind: str = "flat",
    *,
    valid_ids: np.ndarray | None = None,
    read_rows: ReadRows | None = None,
    recall_target: float = DEFAULT_RECALL_TARGET,
    n_eval_queries: int = DEFAULT_EVAL_QUERIES,
    seed: int = 0,
) -> tuple[faiss.Index, BuildReport]:
    """Build an index from `(ids, vectors)` blocks in one pass, holding one block at a time.

    Rows with NaN/inf are skipped. Approximate kinds need `valid_ids` (ids of the stored
    rows) and `read_rows(ids) -> vectors`: training rows and held-out evaluation rows are
    sampled from them, the evaluation rows' exact neighbours are computed while the blocks
    stream by, and the search effort is then raised until recall@10 >= recall_target.
    """
    check_metric(metric)
    started = time.perf_counter()
    if checked_kind(kind) == "flat":
        index = faiss.index_factory(dim, "IDMap2,Flat", faiss_metric_type(metric))
        n_rows, n_skipped = _add_blocks(index, blocks, metric)
        tuning = _EXACT_TUNING
    else:
        index, n_rows, n_skipped, tuning = _build_approximate(
            blocks, dim, metric, kind, valid_ids, read_rows, recall_target, n_eval_queries, seed
        )
    report = BuildReport(
        kind=kind, metric=metric, factory=_factory(index), n_rows=n_rows, n_skipped=n_skipped,
        build_seconds=time.perf_counter() - started, recall_target=recall_target, **tuning._asdict(),
    )
    return index, report


def add_to_index(index: faiss.Index, blocks: Blocks, metric: str) -> tuple[int, int]:
    """Add new rows without a rebuild; returns (rows added, NaN rows skipped).

    Every kind allows it. flat and hnsw stay as good as a rebuild; ivf and ivfpq keep the
    lists trained on the original sample, so rebuild (and re-measure recall) once the
    added rows are a sizeable share or differ in distribution.
    """
    _check_index_metric(index, metric)
    return _add_blocks(index, blocks, metric)


def save_index(index: faiss.Index, path: str | os.PathLike) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    with atomic_path(path) as temporary:
        faiss.write_index(index, str(temporary))


def load_index(path: str | os.PathLike, mapped: bool = False) -> faiss.Index:
    """Read an index; nprobe/efSearch are stored in the file (see `apply_search_params`).

    `mapped` (IVF kinds only): memory-mapped read-only, so a query touches the lists it probes
    instead of reading the whole file (2.6 GB for 1.28M x 512)."""
    if not Path(path).is_file():
        raise ActdbError(f"no index file at {path}; build the index first")
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mapped else 0)
    except RuntimeError as error:
        raise ActdbError(f"index file {path} is unreadable ({str(error).splitlines()[0]}); rebuild it") from error


def index_kind(index: faiss.Index) -> str:
    """Which of KINDS an index built here is."""
    if not isinstance(index, faiss.IndexIDMap2):
        raise ActdbError("not an actdb index (expected IDMap2 around flat/ivf/hnsw/ivfpq); rebuild it")
    inner = faiss.downcast_index(index.index)
    for kind, inner_type in (
        ("flat", faiss.IndexFlat),
        ("hnsw", faiss.IndexHNSW),
        ("ivfpq", faiss.IndexIVFPQ),
        ("ivf", faiss.IndexIVFFlat),
    ):
        if isinstance(inner, inner_type):
            return kind
    raise ActdbError(f"unsupported index type {type(inner).__name__}; rebuild the index")


def search_params(index: faiss.Index) -> dict[str, int]:
    """The index's current search effort: {'nprobe': n}, {'efSearch': n} or {} for flat."""
    kind = index_kind(index)
    if kind == "hnsw":
        return {"efSearch": faiss.downcast_index(index.index).hnsw.efSearch}
    if kind in ("ivf", "ivfpq"):
        return {"nprobe": faiss.extract_index_ivf(index).nprobe}
    return {}


def apply_search_params(index: faiss.Index, params: dict[str, int]) -> None:
    """Set the search effort, e.g. a BuildReport's search_params after loading elsewhere."""
    space = faiss.ParameterSpace()
    for name, value in params.items():
        try:
            space.set_index_parameter(index, name, float(value))
        except RuntimeError as error:
            raise ActdbError(f"search parameter {name!r} does not apply to a {index_kind(index)} index") from error


def search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    metric: str,
    allowed_ids: np.ndarray | None = None,
    *,
    exact_filter_max_rows: int = EXACT_FILTER_MAX_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest rows of each query: (ids, distances), each (queries, min(k, available)).

    All queries go to FAISS in one batch. Rows are sorted by (distance, id). With
    `allowed_ids` only those rows (that are indexed) are answered, always
    min(k, n allowed) of them: approximate kinds scan a small allowed set exactly, and any
    query that FAISS answers short (IVF lists or HNSW paths without enough allowed rows)
    is answered by an exact scan of the allowed rows.
    """
    _check_index_metric(index, metric)
    prepared = prepare_queries(queries, metric)
    if prepared.shape[1] != index.d:
        raise ActdbError(f"queries have {prepared.shape[1]} dimensions but the index has {index.d}")
    if k < 1:
        raise ActdbError(f"k must be at least 1, got {k}")
    candidates = None if allowed_ids is None else _indexed_subset(index, allowed_ids)
    k = min(k, index.ntotal if candidates is None else len(candidates))
    if k == 0:
        return np.empty((len(prepared), 0), np.int64), np.empty((len(prepared), 0))
    if candidates is not None and index_kind(index) != "flat" and len(candidates) <= exact_filter_max_rows:
        return _exact_search(index, prepared, k, metric, candidates)
    ids, distances = _refined_search(index, prepared, k, metric, candidates)
    short = (ids < 0).any(axis=1)
    if short.any():
        ids[short], distances[short] = _exact_search(index, prepared[short], k, metric, candidates)
    return ids, distances


def exact_search(queries: np.ndarray, blocks: Blocks, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The exact k nearest rows of each query among `(ids, vectors)` blocks streamed by (as
    stored: prepared here; rows with NaN/inf skipped, as an index skips them): (ids, distances),
    each (queries, k), sorted by (distance, id) as `search` sorts, padded with -1 / inf when
    the blocks hold fewer than k rows. No index needed; one block is held at a time."""
    check_metric(metric)
    if k < 1:
        raise ActdbError(f"k must be at least 1, got {k}")
    nearest = _ExactTopK(prepare_queries(queries, metric), k, metric)
    for ids, vectors in blocks:
        vectors = np.asarray(vectors)
        finite = np.isfinite(vectors).all(axis=1)
        if finite.any():
            nearest.update(np.asarray(ids, dtype=np.int64)[finite], prepare(vectors[finite], metric))
    return nearest.ids, nearest.distances


# --- building -----------------------------------------------------------------------


def checked_kind(kind: str) -> str:
    return check_choice("kind", kind, KINDS, "index kind")


def _check_index_metric(index: faiss.Index, metric: str) -> None:
    if index.metric_type != faiss_metric_type(metric):
        raise ActdbError(f"this index was not built for metric {metric!r}; pass the metric it was built with")


def _factory(index: faiss.Index) -> str:
    inner = faiss.downcast_index(index.index)
    kind = index_kind(index)
    if kind == "flat":
        return "IDMap2,Flat"
    if kind == "hnsw":
        return f"IDMap2,HNSW{inner.hnsw.nb_neighbors(1)}"
    codes = f"PQ{inner.pq.M}" if kind == "ivfpq" else "Flat"
    return f"IDMap2,IVF{inner.nlist},{codes}"


def _pq_bytes(dim: int) -> int:
    """Sub-quantisers (one byte each): the largest divisor of dim up to dim/8."""
    return max(m for m in range(1, max(1, dim // DIMS_PER_PQ_BYTE) + 1) if dim % m == 0)


def _build_approximate(blocks, dim, metric, kind, valid_ids, read_rows, recall_target, n_eval_queries, seed):
    if valid_ids is None or read_rows is None:
        raise ActdbError(f"a {kind} index needs valid_ids and read_rows, to train and to measure recall")
    valid_ids = np.asarray(valid_ids, dtype=np.int64)
    if len(valid_ids) < MIN_APPROXIMATE_ROWS:
        raise ActdbError(f"{len(valid_ids)} rows are too few for a {kind} index; use flat")
    shuffled = np.random.default_rng(seed).permutation(valid_ids)
    n_eval = min(n_eval_queries, len(valid_ids) // 2)
    eval_ids, trainable_ids = np.sort(shuffled[:n_eval]), shuffled[n_eval:]
    index = faiss.index_factory(dim, _approximate_factory(kind, dim, len(valid_ids), len(trainable_ids)),
                                faiss_metric_type(metric))
    _train(index, kind, trainable_ids, read_rows, metric)
    eval_vectors = np.asarray(read_rows(eval_ids))
    truth = _ExactTopK(prepare_queries(eval_vectors, metric), RECALL_K + 1, metric)
    n_rows, n_skipped = _add_blocks(index, blocks, metric, on_added=truth.update)
    tuning = _tune(index, eval_vectors, eval_ids, truth.ids, metric, recall_target)
    return index, n_rows, n_skipped, tuning


def _approximate_factory(kind: str, dim: int, n_rows: int, n_trainable: int) -> str:
    if kind == "hnsw":
        return f"IDMap2,HNSW{HNSW_NEIGHBOURS}"
    n_lists = max(1, min(round(LISTS_PER_SQRT_ROW * math.sqrt(n_rows)), n_trainable // TRAIN_ROWS_PER_LIST))
    codes = f"PQ{_pq_bytes(dim)}" if kind == "ivfpq" else "Flat"
    return f"IDMap2,IVF{n_lists},{codes}"


def _train(index: faiss.Index, kind: str, trainable_ids: np.ndarray, read_rows: ReadRows, metric: str) -> None:
    """Train IVF lists (and PQ codebooks) on a sample; keep a direct map so rows read back by id."""
    if kind == "hnsw":
        return
    ivf = faiss.downcast_index(index.index)
    n_train = TRAIN_ROWS_PER_LIST * ivf.nlist
    if kind == "ivfpq":
        n_train = max(n_train, PQ_TRAIN_ROWS)
        ivf.do_polysemous_training = False  # the factory's default; costly and unused here
    index.train(prepare(read_rows(np.sort(trainable_ids[:n_train])), metric))
    ivf.make_direct_map()


def _add_blocks(index, blocks: Blocks, metric: str, on_added=None) -> tuple[int, int]:
    """Add finite rows block by block; reject ids already present. Returns (added, skipped)."""
    present = _presence(indexed_ids(index))
    n_added = n_skipped = 0
    for ids, vectors in blocks:
        ids, vectors = np.asarray(ids, dtype=np.int64), np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape != (len(ids), index.d):
            raise ActdbError(f"a block has vectors of shape {vectors.shape} for {len(ids)} ids of dimension {index.d}")
        finite = np.isfinite(vectors).all(axis=1)
        ids, rows = ids[finite], prepare(vectors[finite], metric)
        present = _claim_ids(present, ids)
        index.add_with_ids(rows, ids)
        if on_added is not None:
            on_added(ids, rows)
        n_added += len(ids)
        n_skipped += int((~finite).sum())
    return n_added, n_skipped


def _presence(ids: np.ndarray) -> np.ndarray:
    """A boolean array marking the (non-negative) ids."""
    present = np.zeros(int(ids.max(initial=-1)) + 1, dtype=bool)
    present[ids] = True
    return present


def _claim_ids(present: np.ndarray, ids: np.ndarray) -> np.ndarray:
    if ids.size == 0:
        return present
    if ids.min() < 0:
        raise ActdbError(f"row id {int(ids.min())} is negative; row ids must be >= 0")
    if ids.max() >= len(present):
        present = np.pad(present, (0, max(int(ids.max()) + 1, 2 * len(present)) - len(present)))
    taken = present[ids] | (np.bincount(ids - ids.min()) > 1)[ids - ids.min()]
    if taken.any():
        raise ActdbError(f"row id {int(ids[taken][0])} is already in the index; add only new rows")
    present[ids] = True
    return present


# --- recall tuning ------------------------------------------------------------------


def _tune(index, eval_vectors, eval_ids, truth_ids, metric, recall_target) -> _Tuning:
    """The least search effort whose recall@10 reaches the target, to within 1/8.

    Doubles the effort until the target is reached, then bisects back; if even the
    largest effort misses the target, keeps the best effort tried and says so.
    """
    name, efforts = _effort_ladder(index)
    curve: dict[int, float] = {}

    def reaches_target(effort: int) -> bool:
        apply_search_params(index, {name: effort})
        found, _ = search(index, eval_vectors, RECALL_K + 1, metric)
        curve[effort] = _recall(found, truth_ids, eval_ids)
        return curve[effort] >= recall_target

    below = 0
    for effort in efforts:
        if reaches_target(effort):
            break
        below = effort
    else:  # even the largest effort misses the target
        effort, below = max(curve, key=lambda tried: (curve[tried], -tried)), 0
    while below and effort - below > max(1, below // 8):
        middle = (below + effort) // 2
        if reaches_target(middle):
            effort = middle
        else:
            below = middle
    apply_search_params(index, {name: effort})
    reached = curve[effort] >= recall_target
    return _Tuning({name: effort}, curve[effort], len(eval_ids), reached, tuple(sorted(curve.items())))


def _effort_ladder(index) -> tuple[str, list[int]]:
    """Doubling efforts: efSearch 16..4096 for hnsw, nprobe 1..nlist (exhaustive) for IVF."""
    if index_kind(index) == "hnsw":
        return "efSearch", [16 << step for step in range(9)]
    n_lists = faiss.extract_index_ivf(index).nlist
    return "nprobe", [1 << step for step in range(max(0, n_lists - 1).bit_length())] + [n_lists]


def _recall(found: np.ndarray, truth: np.ndarray, query_ids: np.ndarray) -> float:
    """Share of each query's 10 nearest other rows that were found."""
    hits = total = 0
    for own_id, found_ids, true_ids in zip(query_ids, found, truth):
        true_ids = true_ids[(true_ids != own_id) & (true_ids >= 0)][:RECALL_K]
        found_ids = found_ids[found_ids != own_id][:RECALL_K]
        hits += len(np.intersect1d(found_ids, true_ids))
        total += len(true_ids)
    return hits / total


# --- searching ----------------------------------------------------------------------


def indexed_ids(index) -> np.ndarray:
    """The image ids an index holds, in the order they were added: a copy, so they outlive the index.

    The one way ids are read. `index.id_map` is a view into the index's memory that does not
    keep the index alive: read from a temporary (`open(...).id_map`) it is freed memory."""
    return faiss.vector_to_array(index.id_map)


def _indexed_subset(index, allowed_ids) -> np.ndarray:
    """The allowed ids that are in the index, sorted and unique."""
    allowed = np.unique(np.asarray(allowed_ids, dtype=np.int64).ravel())
    present = _presence(indexed_ids(index))
    allowed = allowed[(allowed >= 0) & (allowed < len(present))]
    return allowed[present[allowed]]


def _filtered_parameters(index, allowed: np.ndarray):
    """SearchParameters that restrict FAISS to `allowed`, at the index's current effort."""
    bitmap = np.packbits(_presence(allowed), bitorder="little")
    selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
    effort = search_params(index)
    if "nprobe" in effort:
        params = faiss.SearchParametersIVF(sel=selector, nprobe=effort["nprobe"])
    elif "efSearch" in effort:
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=effort["efSearch"])
    else:
        params = faiss.SearchParameters(sel=selector)
    params.keepalive = (selector, bitmap)  # FAISS holds raw pointers to both
    return params


def _refined_search(index, queries, k, metric, candidates):
    """FAISS candidates, re-ranked exactly; fetches more while ties reach the last candidate."""
    params = None if candidates is None else _filtered_parameters(index, candidates)
    n_available = index.ntotal if candidates is None else len(candidates)
    squared_norms = np.einsum("ij,ij->i", queries, queries, dtype=np.float64)
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    distances = np.full((len(queries), k), np.inf)
    pending = np.arange(len(queries))
    fetch = min(2 * k, n_available)
    while pending.size:
        raw, found = index.search(queries[pending], fetch, params=params)
        screened = np.where(found >= 0, reported_distances(raw, metric), np.inf)
        limit = _tie_limit(screened[:, k - 1], squared_norms[pending], metric)
        in_window = (found >= 0) & (screened <= limit[:, None])
        complete = ~in_window[:, -1] | (fetch >= n_available)
        query_rows, columns = np.nonzero(in_window)
        candidate_ids = found[query_rows, columns]
        waiting = queries[pending]
        exact = paired_distances_gathered(
            len(query_rows), queries.shape[1],
            lambda part: (waiting[query_rows[part]], index.reconstruct_batch(candidate_ids[part])), metric)
        top_ids, top_distances = _top_k_per_query(query_rows, candidate_ids, exact, len(pending), k)
        done = pending[complete]
        ids[done], distances[done] = top_ids[complete], top_distances[complete]
        pending, fetch = pending[~complete], min(2 * fetch, n_available)
    return ids, distances


def _exact_search(index, queries, k, metric, candidates):
    """Exact k nearest among `candidates` (all rows if None), reading vectors from the index."""
    ids = indexed_ids(index) if candidates is None else candidates
    nearest = _ExactTopK(queries, k, metric)
    for start in range(0, len(ids), READ_BATCH_ROWS):
        batch = ids[start:start + READ_BATCH_ROWS]
        nearest.update(batch, index.reconstruct_batch(batch))
    return nearest.ids, nearest.distances


def _tie_limit(kth: np.ndarray, query_squared_norms: np.ndarray, metric: str) -> np.ndarray:
    """Largest screened distance that may still tie or beat `kth` once computed exactly.

    Screening rounds by at most SCREEN_RELATIVE_ERROR of the squared norms of query and
    row (unit norms for cosine/correlation; for l2 a competing row's norm is at most
    |q| + kth), once on the candidate and once on the k-th row.
    """
    if metric != "l2":
        return kth + 2 * SCREEN_RELATIVE_ERROR
    query_norms = np.sqrt(query_squared_norms)
    slack = SCREEN_RELATIVE_ERROR * (query_squared_norms + (query_norms + kth) ** 2)
    return np.sqrt(kth**2 + 2 * slack)


def _top_k_per_query(query_rows, ids, distances, n_queries, k):
    """(n_queries, k) ids and distances from candidate triples, by (distance, id); -1/inf pad."""
    order = np.lexsort((ids, distances, query_rows))
    query_rows, ids, distances = query_rows[order], ids[order], distances[order]
    rank = np.arange(len(order)) - np.searchsorted(query_rows, query_rows)
    kept = rank < k
    top_ids = np.full((n_queries, k), -1, dtype=np.int64)
    top_distances = np.full((n_queries, k), np.inf)
    top_ids[query_rows[kept], rank[kept]] = ids[kept]
    top_distances[query_rows[kept], rank[kept]] = distances[kept]
    return top_ids, top_distances


class _ExactTopK:
    """The exact k nearest rows of fixed (prepared) queries, updated block by block.

    Each block is screened with one float32 matrix product (twice float64's speed, and its
    rounding, ~1e-6 of the squared norms, is well inside SCREEN_RELATIVE_ERROR); the rows
    within rounding of a query's k-th screened distance get per-pair float64 distances, so
    ties are ranked by id.
    """

    def __init__(self, queries: np.ndarray, k: int, metric: str):
        self.queries, self.k, self.metric = queries, k, metric
        self.queries32 = np.ascontiguousarray(queries, dtype=np.float32)
        self.squared_norms = np.einsum("ij,ij->i", queries, queries, dtype=np.float64)
        self.ids = np.full((len(queries), k), -1, dtype=np.int64)
        self.distances = np.full((len(queries), k), np.inf)

    def update(self, ids: np.ndarray, rows: np.ndarray) -> None:
        step = max(1, EXACT_BATCH_ENTRIES // max(1, len(self.queries)))
        for start in range(0, len(ids), step):
            self._update_slice(ids[start:start + step], rows[start:start + step])

    def _update_slice(self, ids: np.ndarray, rows: np.ndarray) -> None:
        screened = screening_distances(self.queries32, rows, self.metric)
        kth_column = min(self.k, len(ids)) - 1
        kth = np.partition(screened, kth_column, axis=1)[:, kth_column]
        query_rows, columns = np.nonzero(screened <= _tie_limit(kth, self.squared_norms, self.metric)[:, None])
        exact = paired_distances_gathered(len(query_rows), rows.shape[1],
                                          lambda part: (self.queries[query_rows[part]], rows[columns[part]]),
                                          self.metric)
        kept_rows, kept_columns = np.nonzero(self.ids >= 0)
        self.ids, self.distances = _top_k_per_query(
            np.concatenate([kept_rows, query_rows]),
            np.concatenate([self.ids[kept_rows, kept_columns], ids[columns]]),
            np.concatenate([self.distances[kept_rows, kept_columns], exact]),
            len(self.queries),
            self.k,
        )
