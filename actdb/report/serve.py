"""`actdb report --serve`: the site over http://localhost (the standard library's server)."""
from __future__ import annotations

import functools
import http.server
import sys
from pathlib import Path


def serve(index: str, port: int) -> None:
    folder = Path(index).parent
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        print(f"serving {folder} at http://127.0.0.1:{port}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
