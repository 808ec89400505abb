"""`actdb report --serve`: the site over http://localhost (the standard library's server).

The port is bound before the report is built: a port in use is refused in one line before
any work, not after it."""
from __future__ import annotations

import http.server
import sys
from pathlib import Path

from ..errors import ActdbError


class ReportServer:
    """Bound to 127.0.0.1:`port` at once; `serve(index)` then serves that report's folder."""

    def __init__(self, port: int):
        self.folder: str | None = None

        def handler(*args, **kwargs):
            return http.server.SimpleHTTPRequestHandler(*args, directory=self.folder, **kwargs)

        try:
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        except OSError as exc:
            raise ActdbError(f"port={port}: cannot serve on 127.0.0.1:{port} ({exc.strerror}); give another port",
                             f"--port {port}: cannot serve on 127.0.0.1:{port} ({exc.strerror}); give another "
                             "--port") from None
        self.port = port

    def serve(self, index: str | Path) -> None:
        """Until Ctrl-C."""
        self.folder = str(Path(index).parent)
        print(f"serving {self.folder} at http://127.0.0.1:{self.port}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
        try:
            self.server.serve_forever()
        except KeyboardInterrupt:
            pass

    def close(self) -> None:
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
