"""Nearest images and nearest classes over stored activations (FAISS)."""
