"""Representational similarity between stored arrays over the same images: linear CKA
(Kornblith et al. 2019), its debiased form, and RSA over class centroids.

Everything here reads stored rows; no model runs, so TensorFlow is not imported.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..choices import COMPARE_METHODS, check_choice
from ..distance import prepare
from ..errors import ActdbError
from ..moments import class_means
from ..results import Result
from ..store.stored_array import StoredArray

METHODS = COMPARE_METHODS


@dataclass
class Comparison(Result):
    method: str
    names: list[str]  # one per array: model/layer
    matrix: pd.DataFrame  # names x names similarity
    images: int  # rows every array has (after --where and --max-images)
    classes: int | None = None  # for rsa: class centroids compared

    def pairs(self) -> pd.DataFrame:
        """Each unordered pair once: a, b, similarity."""
        rows = [{"a": a, "b": b, self.method: float(self.matrix.loc[a, b])}
                for i, a in enumerate(self.names) for b in self.names[i + 1 :]]
        return pd.DataFrame(rows)


def linear_cka(x: np.ndarray, y: np.ndarray, debiased: bool = False) -> float:
    """Linear CKA of (n, p) and (n, q) rows, in feature space (p x q products, no n x n Gram).

    debiased: Kornblith's feature-space form of the unbiased HSIC estimator (Song et al. 2012)."""
    x = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
    y = y.astype(np.float64) - y.mean(axis=0, dtype=np.float64)
    cross = np.linalg.norm(y.T @ x) ** 2
    self_x = np.linalg.norm(x.T @ x)
    self_y = np.linalg.norm(y.T @ y)
    if debiased:
        n = x.shape[0]
        if n < 4:
            raise ActdbError("debiased CKA needs at least 4 images")
        rows_x, rows_y = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)
        cross = _debiased_hsic(cross, rows_x, rows_y, n)
        self_x = np.sqrt(max(_debiased_hsic(self_x**2, rows_x, rows_x, n), 0.0))
        self_y = np.sqrt(max(_debiased_hsic(self_y**2, rows_y, rows_y, n), 0.0))
    denominator = self_x * self_y
    return float(cross / denominator) if denominator > 0 else float("nan")


def _debiased_hsic(dot: float, rows_x: np.ndarray, rows_y: np.ndarray, n: int) -> float:
    """The U-statistic HSIC of centred features, up to a factor shared by numerator and norms."""
    return dot - n / (n - 2) * rows_x.dot(rows_y) + rows_x.sum() * rows_y.sum() / ((n - 1) * (n - 2))


def correlation_rdm(centroids: np.ndarray) -> np.ndarray:
    """Condensed (upper-triangle, row-major) 1 - Pearson r between every pair of rows."""
    z = prepare(centroids, "correlation", np.float64)
    return 1.0 - (z @ z.T)[np.triu_indices(len(z), 1)]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of average ranks (ties share their mean rank)."""
    ranks_a, ranks_b = _average_ranks(a), _average_ranks(b)
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2  # mean of 1-based ranks start+1..end
    return ranks


def rsa(x: np.ndarray, y: np.ndarray, labels: np.ndarray) -> float:
    """Spearman correlation of the correlation-distance RDMs of the class centroids."""
    return spearman(correlation_rdm(class_means(x, labels)[1]), correlation_rdm(class_means(y, labels)[1]))


MIN_CKA_IMAGES = 4


def compare(db, found: list[StoredArray], *, method: str = "cka", where: str | None = None,
            max_images: int = 5000, seed: int = 0) -> Comparison:
    """Similarity of every pair of stored arrays on the images all of them hold."""
    check_choice("method", method, METHODS)
    found = list(dict.fromkeys(found))
    if len(found) < 2:
        raise ActdbError("compare needs at least two different arrays: --layers a,b or --models m1,m2")
    ids, labels = _common_rows(db, found, where, max_images, seed)
    values = [db.rows(a, ids) for a in found]
    names = [a.name for a in found]
    if method == "rsa":
        kept = pd.notna(labels)
        labels = labels[kept].astype(str)
        classes = len(np.unique(labels))
        if classes < 3:
            raise ActdbError(f"rsa compares class centroids and needs at least 3 labelled classes; these rows have "
                             f"{classes}: use --method cka, or a --where with more classes")
        values = [v[kept] for v in values]
    similarity = np.eye(len(values))
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            if method == "rsa":
                similarity[i, j] = rsa(values[i], values[j], labels)
            else:
                similarity[i, j] = linear_cka(values[i], values[j], debiased=method == "cka-debiased")
            similarity[j, i] = similarity[i, j]
    matrix = pd.DataFrame(similarity, index=names, columns=names)
    warnings = []
    if method != "rsa" and len(ids) < MIN_CKA_IMAGES:
        warnings.append(f"CKA over {len(ids)} images says little (over 2 centred images it is always 1): "
                        f"compare at least {MIN_CKA_IMAGES}")
    return Comparison(method, names, matrix, len(ids), classes if method == "rsa" else None, warnings=warnings)


def _common_rows(db, found: list[StoredArray], where: str | None, max_images: int, seed: int):
    """Image ids (sorted) done in every array and matching `where`, a seeded sample of at most
    `max_images`; and their labels."""
    array_ids = ", ".join(str(a.id) for a in found)
    condition = f"AND ({where})" if where else ""
    frame = db.sql(
        f"SELECT i.id, i.label FROM images i WHERE i.id IN (SELECT image_id FROM done WHERE array_id IN ({array_ids}) "
        f"GROUP BY image_id HAVING count(*) = {len(found)}) {condition} ORDER BY i.id")
    if len(frame) < 2:
        raise ActdbError(f"only {len(frame)} image(s) have rows in every compared array"
                         f"{' and match --where' if where else ''}: nothing to compare")
    if len(frame) > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(frame), max_images, replace=False))
        frame = frame.iloc[keep]
    return frame.id.to_numpy(np.int64), frame.label.to_numpy(object)
