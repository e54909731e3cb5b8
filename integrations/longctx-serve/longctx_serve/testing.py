"""Run an app on a real uvicorn server in a background thread (tests, benchmarks, notebooks).

>>> from longctx_serve.testing import LiveServer
>>> with LiveServer(create_app(engine)) as live:              # doctest: +SKIP
...     OpenAI(base_url=live.base_url, api_key="-").models.list()
"""

from __future__ import annotations

import socket
import threading
import time


class LiveServer:
    """``with LiveServer(app) as live:`` serves ``app`` on a free port of 127.0.0.1 until the block ends."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 30.0):
        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.host, self.port, self.app = host, port, app
        self.start_timeout_s = start_timeout_s
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name=f"longctx-serve-{port}", daemon=True)

    @property
    def base_url(self) -> str:
        """The OpenAI ``base_url`` (ends with ``/v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.server.should_exit = True
                raise RuntimeError(f"the server on {self.host}:{self.port} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
