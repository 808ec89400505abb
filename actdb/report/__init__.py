"""`actdb report`: a static site of the store (see `build`)."""
