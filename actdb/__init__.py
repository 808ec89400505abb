"""actdb: a batch activation database and query tool for CNN interpretability."""
from .errors import ActdbError
from .database import Database, open

__all__ = ["ActdbError", "Database", "open"]
__version__ = "0.1.0"
