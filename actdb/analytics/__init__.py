"""Analyses over a store, one small module per command. Each computes and returns data
(DataFrames, arrays); drawing lives apart, so a notebook can compute without plotting."""
