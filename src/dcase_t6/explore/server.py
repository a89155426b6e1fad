"""``explore``'s local web server: Werkzeug's threaded WSGI server answering the pages of a
:class:`~dcase_t6.explore.pages.Site` and the clips' audio with HTTP Range (browsers seek with it).

Only GET and HEAD of the site's own paths are answered; audio by clip index, from ``--audio`` only. With a
:class:`~dcase_t6.explore.searchbox.SearchBox` (``--index``) also the search page, its endpoint and the found files.
"""

from __future__ import annotations

import errno
import socket
import threading
from dataclasses import dataclass

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server, select_address_family
from werkzeug.utils import send_file
from werkzeug.wrappers import Request, Response

from dcase_t6.common.errors import UserError
from dcase_t6.explore.pages import Site
from dcase_t6.explore.searchbox import AUDIO_PREFIX, ENDPOINT, SearchBox

AUDIO_MAX_AGE = 3600


class ExploreApp:
    """The WSGI application of one site.

    Args:
        site: the pages and the audio folder to serve (None: only the search page).
        search: the search page over an index, if any.
    """

    def __init__(self, site: Site | None, search: SearchBox | None = None):
        self.site, self.search = site, search

    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            response = self.respond(request)
        except HTTPException as error:
            response = error.get_response(environ)
        return response(environ, start_response)

    def respond(self, request: Request) -> Response:
        """The response to ``request``: a page, an audio file (ranges honoured), or an HTTP error."""
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed(valid_methods=["GET", "HEAD"])
        path = request.path.lstrip("/")
        if self.search is not None:
            searched = self._search(path, request)
            if searched is not None:
                return searched
        if self.site is None:
            raise NotFound()
        if path.startswith("audio/"):
            file = self.site.audio.lookup(path[len("audio/"):])
            if file is None:
                raise NotFound()
            return send_file(file, request.environ, conditional=True, max_age=AUDIO_MAX_AGE)
        page = self.site.render(path)
        if page is None:
            raise NotFound()
        response = Response(page.content, content_type=page.media_type)
        response.headers["Cache-Control"] = "no-cache"
        return response

    def _search(self, path: str, request: Request) -> Response | None:
        """The search page, its endpoint's answer or a found file's audio; None for other paths."""
        if path == ENDPOINT:
            status, body = self.search.answer(request.args)
            response = Response(body, status=status, content_type="application/json")
            response.headers["Cache-Control"] = "no-store"
            return response
        if path.startswith(AUDIO_PREFIX):
            file = self.search.audio.lookup(path[len(AUDIO_PREFIX):])
            if file is None:
                raise NotFound()
            return send_file(file, request.environ, conditional=True, max_age=AUDIO_MAX_AGE)
        page = self.search.render(path)
        if page is None:
            return None
        response = Response(page.content, content_type=page.media_type)
        response.headers["Cache-Control"] = "no-cache"
        return response


class _QuietHandler(WSGIRequestHandler):
    """Werkzeug's request handler without a log line per request."""

    def log_request(self, code="-", size="-") -> None:
        pass


@dataclass
class ExploreServer:
    """A bound server: ``url`` is where the site is; ``serve_forever`` (or ``start`` in a thread) answers."""

    server: BaseWSGIServer
    url: str
    serving: bool = False

    def serve_forever(self) -> None:
        """Answer requests until ``shutdown`` or Ctrl-C."""
        self.serving = True
        try:
            self.server.serve_forever()
        finally:
            self.server.server_close()

    def start(self) -> threading.Thread:
        """Answer requests in a daemon thread (tests, benchmarks); ``shutdown`` stops it."""
        self.serving = True
        thread = threading.Thread(target=self.server.serve_forever, name="explore-server", daemon=True)
        thread.start()
        return thread

    def shutdown(self) -> None:
        """Stop answering (when serving) and close the socket."""
        if self.serving:
            self.server.shutdown()
            self.serving = False
        self.server.server_close()


def bind(site: Site | None, host: str = "127.0.0.1", port: int = 0, search: SearchBox | None = None
         ) -> ExploreServer:
    """Bind the explorer's server on ``host``:``port`` (0: a free port) and start ranking every clip in the
    background, so clip pages are ready when asked for.

    Args:
        site: what to serve (None: only the search page).
        host: the address to listen on (127.0.0.1 unless the user says otherwise).
        port: the TCP port, 0 for a free one.
        search: the search page over an index (``--index``), if any.

    Returns:
        The bound :class:`ExploreServer`; nothing is answered before ``serve_forever`` or ``start``.
    """
    try:  # bound here, not by make_server, which prints and exits with code 1 on a busy port
        listening = socket.create_server((host, port), family=select_address_family(host, port))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise UserError(f"--port {port}: {host}:{port} is in use; pick another port, or leave --port out for a "
                            "free one") from None
        raise UserError(f"--host {host} --port {port}: cannot listen there ({error.strerror or error}); use "
                        "--host 127.0.0.1 and a free --port") from None
    with listening:
        server = make_server(host, port, ExploreApp(site, search), threaded=True, request_handler=_QuietHandler,
                             fd=listening.fileno())
    bound_port = server.socket.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    if site is not None:
        exploration = site.exploration
        threading.Thread(target=lambda: [exploration.positions(index) for index in range(len(exploration.systems))],
                         name="explore-rank-clips", daemon=True).start()
    return ExploreServer(server, f"http://{shown}:{bound_port}/")
