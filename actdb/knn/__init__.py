"""Nearest rows: FAISS indexes with exact re-ranking (`index`) and the metrics on FAISS's two
(`metrics`). Below the features, so that query's nearest images and classes and the
analytics' trajectory search the same way; above the shared basics it builds on."""
