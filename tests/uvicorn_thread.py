"""``zerank serve``'s uvicorn server run in a background thread of the test process, for the server tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from zerank.serving.arguments import ServeArguments
from zerank.serving.app import make_server


@contextmanager
def running_server(app, args: ServeArguments, timeout: float = 60.0) -> Iterator[tuple[str, object, threading.Thread]]:
    """``zerank serve``'s uvicorn server (``make_server``) of ``app`` on 127.0.0.1 and a free port, in a background
    thread; yields (url, server, thread)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = make_server(app, args, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
