"""`actdb predict`: top-k ImageNet classes per image and model, each model with its own
preprocessing; a model whose weights are missing says so and the others still answer."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import imagenet
from .errors import ActdbError


@dataclass
class Prediction:
    query: str
    model: str
    rank: int
    class_index: int
    wnid: str
    name: str
    probability: float


def predict(queries: list[str], model_names: list[str], top: int = 5, resize: str = "center-crop",
            weights: str = "imagenet", db=None) -> tuple[list[Prediction], dict[str, str]]:
    """Predictions for every (query, model), and a one-line reason per model that could not answer.
    A query is an image file, `id:N` or `optimized:NAME` of the store `db`."""
    from .images import pixels_of_file
    from .models import load_model
    from .models.forward import classify
    from .resolve import image_file

    if not 1 <= top <= 1000:
        raise ActdbError("--top must be between 1 and 1000")
    files = [image_file(q, db) for q in queries]
    rows, unavailable = [], {}
    for name in model_names:
        try:
            loaded = load_model(name, weights, "float32")
        except ActdbError as exc:
            unavailable[name] = str(exc)
            continue
        pixels = np.stack([pixels_of_file(f, loaded.input_size, resize) for f in files])
        indices, probs = classify(loaded, pixels, top)
        for query, index_row, prob_row in zip(queries, indices, probs):
            for rank, (index, prob) in enumerate(zip(index_row, prob_row), start=1):
                c = imagenet.by_index(int(index))
                rows.append(Prediction(query, name, rank, c.index, c.wnid, c.name, float(prob)))
    if not rows and unavailable:
        raise ActdbError("no model could answer: " + "; ".join(f"{k}: {v}" for k, v in unavailable.items()))
    return rows, unavailable

