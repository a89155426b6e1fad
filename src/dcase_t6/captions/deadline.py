"""``augment --timeout``: a deadline for one HTTP attempt as a whole, not for each read.

The HTTP client's own timeouts bound each network operation: a server that sends one byte every few seconds
never trips a read timeout and can hold a request for as long as it likes. Here every attempt (the ``openai``
client's first try and each retry) gets a watchdog: when ``seconds`` have passed since the request left, its
connection is shut down, so whatever the attempt was doing (connecting, sending, waiting for the headers,
reading a dripping body) ends at once and the attempt counts as timed out (retried like any timeout).

How, with public interfaces of httpx (or httpx2) and httpcore only: an event hook of the HTTP client starts the
watchdog of each request it sends and asks for a fresh connection (``Connection: close``: a connection is never
reused, so its socket is always seen being opened); httpcore's ``trace`` extension hands over that socket when
it is connected, and says when the response is closed (the watchdog then stands down).
"""

from __future__ import annotations

import socket
import threading

_OPENED = ("connect_tcp.complete", "connect_unix_socket.complete", "start_tls.complete")
_CLOSED = (".response_closed.started", "connect_tcp.failed", "connect_unix_socket.failed", "start_tls.failed")
_local = threading.local()


class AttemptDeadline:
    """The watchdog of one attempt: shuts its connection down ``seconds`` after :meth:`start`.

    Args:
        seconds: the deadline of the whole attempt.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._done = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()

    def trace(self, event: str, info: dict) -> None:
        """httpcore's trace callback: remembers the socket of the connection, stands down when it is closed."""
        if event.endswith(_OPENED):
            stream = info.get("return_value")
            found = stream.get_extra_info("socket") if stream is not None else None
            with self._lock:
                self._socket = found if isinstance(found, socket.socket) else self._socket
                if self.expired:
                    self._cut()
        elif event.endswith(_CLOSED):
            self.finish()  # httpcore closes the connection next: its socket is not ours to touch any more

    def finish(self) -> None:
        """The attempt is over (answered, failed or abandoned): the watchdog stands down."""
        with self._lock:
            self._done = True
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            self._cut()

    def _cut(self) -> None:
        sock = self._socket
        if sock is None or sock.fileno() < 0:
            return
        try:  # the plain socket's shutdown (not ssl's, which drops its state under the reading thread)
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass


def deadline_hook(seconds: float):
    """The HTTP client's ``request`` event hook that puts each attempt under a deadline of ``seconds``."""

    def on_request(request) -> None:
        previous = getattr(_local, "attempt", None)
        if previous is not None:
            previous.finish()
        attempt = AttemptDeadline(seconds)
        request.headers["Connection"] = "close"
        request.extensions["trace"] = attempt.trace
        _local.attempt = attempt
        attempt.start()

    return on_request


def last_attempt_expired() -> bool:
    """Whether the last attempt sent from this thread was cut by its deadline (then ends the watchdog)."""
    attempt = getattr(_local, "attempt", None)
    if attempt is None:
        return False
    attempt.finish()
    return attempt.expired


def end_attempt() -> None:
    """Stand the watchdog of this thread's last attempt down (its request has returned)."""
    attempt = getattr(_local, "attempt", None)
    if attempt is not None:
        attempt.finish()
        _local.attempt = None
