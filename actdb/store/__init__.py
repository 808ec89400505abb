"""A store is a directory: catalog.duckdb (metadata) + activations.zarr (vectors) + indexes/."""
