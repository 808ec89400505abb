"""`actdb predict`: top-k ImageNet classes per image and model, each model with its own
preprocessing; a model whose weights are missing says so and the others still answer."""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import imagenet
from .choices import invalid
from .errors import ActdbError
from .results import table

COLUMNS = ["query", "model", "rank", "class_index", "wnid", "name", "probability"]


def predict(queries: list[str], *, models: list[str] = ("efficientnet_lite0",), top: int = 5,
            resize: str = "center-crop", weights: str = "imagenet", db=None) -> pd.DataFrame:
    """One row per (query, model, rank). A query is an image file, or `id:N` or
    `optimized:NAME` of the store `db`; a model that cannot answer is named in the warnings."""
    from .images import pixels_of_file
    from .models import load_model
    from .models.forward import classify
    from .resolve import image_file

    if not 1 <= top <= 1000:
        raise invalid("top", top, "give a number of classes between 1 and 1000")
    files = [image_file(q, db) for q in queries]
    rows, unavailable = [], []
    for name in models:
        try:
            loaded = load_model(name, weights, "float32")
        except ActdbError as exc:
            unavailable.append(f"{name}: unavailable: {exc}")
            continue
        pixels = np.stack([pixels_of_file(f, loaded.input_size, resize) for f in files])
        indices, probs = classify(loaded, pixels, top)
        for query, index_row, prob_row in zip(queries, indices, probs):
            for rank, (index, prob) in enumerate(zip(index_row, prob_row), start=1):
                c = imagenet.by_index(int(index))
                rows.append((query, name, rank, c.index, c.wnid, c.name, float(prob)))
    if not rows and unavailable:
        raise ActdbError("no model could answer: " + "; ".join(unavailable))
    return table(pd.DataFrame(rows, columns=COLUMNS), warnings=unavailable)
