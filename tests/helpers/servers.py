"""Servers a test talks to: local HTTP servers on 127.0.0.1 (a file server with Range support, a scripted
OpenAI-compatible chat-completions API) and a real `dcase-t6 explore` server run as the user runs it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY_ENV, KEY = "DCASE_T6_TEST_KEY", "test-key-123"


class LocalServer:
    """A ThreadingHTTPServer on 127.0.0.1 (a free port) whose ``handler`` answers in daemon threads, served by a
    daemon thread from the start until ``close``. ``url`` is its root, ``base`` the API base ``url`` + ``v1``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.base = f"{self.url}v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class FileServer(LocalServer):
    """Serves ``files`` over HTTP with Range support; can drop the first response after N bytes."""

    def __init__(self, files: dict[str, bytes], drop_after: int | None = None):
        self.files, self.drop_after = files, drop_after
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                server.serve(self)

        super().__init__(Handler)

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        """Answer one GET: 404, 200, 206 for a Range, 416 past the end."""
        name = handler.path.lstrip("/").split("?")[0]
        requested = handler.headers.get("Range")
        self.requests.append((name, requested))
        if name not in self.files:
            handler.send_error(404)
            return
        data = self.files[name]
        start = int(requested.split("=")[1].split("-")[0]) if requested else 0
        if start >= len(data) and requested:
            handler.send_response(416)
            handler.send_header("Content-Range", f"bytes */{len(data)}")
            handler.end_headers()
            return
        handler.send_response(206 if requested else 200)
        if requested:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.send_header("Content-Length", str(len(data) - start))
        handler.end_headers()
        body = data[start:]
        if self.drop_after is not None:
            body, self.drop_after = body[: self.drop_after], None
        handler.wfile.write(body)
        handler.wfile.flush()
        handler.close_connection = True


@contextlib.contextmanager
def serving(files: dict[str, bytes], drop_after: int | None = None) -> Iterator[FileServer]:
    """Run a FileServer in a thread for the duration of the block."""
    server = FileServer(files, drop_after)
    try:
        yield server
    finally:
        server.close()


def good_answer(prompt: str) -> str:
    """A deterministic usable answer to each test template (``MIX|...``, ``FWD|...``, ``BACK|...``)."""
    kind, *fields = prompt.split("|")
    if kind == "MIX":
        first, second = (" ".join(text.rstrip(".").split()[:4]).lower() for text in fields)
        return f"{first.capitalize()} together with {second}."
    if kind == "FWD":
        return f"[{fields[0]}] {fields[1]}"
    if kind == "BACK":
        return "It sounds like " + fields[1].split("] ", 1)[1].lower()
    return "A dog barks while a car passes by outside."


class ChatServer(LocalServer):
    """An OpenAI-compatible /v1/chat/completions server. The n-th request that arrives (retries included) gets
    ``script[n]`` (then "good"): good, malformed (not JSON), no-choices, 429, 500, stall (answers after 3 s),
    hang (answers only when released), or a fixed 200 answer ("text:..."). Every prompt received and answered is
    recorded."""

    def __init__(self, script: list[str] | None = None):
        self.script, self.received, self.answered = list(script or []), [], []
        self.release, self.lock = threading.Event(), threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions" or self.headers.get("Authorization") != f"Bearer {KEY}":
                    return self._send(401 if self.path == "/v1/chat/completions" else 404,
                                      {"error": {"message": "wrong key or path"}})
                if body.get("model") == "missing-model":
                    return self._send(404, {"error": {"message": "The model does not exist"}})
                prompt = body["messages"][-1]["content"]
                with server.lock:
                    server.received.append(prompt)
                    action = server.script.pop(0) if server.script else "good"
                if action in ("429", "500"):
                    return self._send(int(action), {"error": {"message": f"scripted {action}"}},
                                      {"retry-after-ms": "10"})
                if action == "stall":  # past the client's timeout: it gives up and retries
                    time.sleep(3)
                    return None
                if action == "hang":
                    server.release.wait(60)
                    return None
                if action == "malformed":
                    return self._raw(200, b"this is not JSON")
                if action == "no-choices":
                    return self._send(200, {"id": "x", "object": "chat.completion", "choices": []})
                text = action[5:] if action.startswith("text:") else good_answer(prompt)
                with server.lock:
                    server.answered.append(prompt)
                self._send(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                                 "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}],
                                 "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4,
                                           "total_tokens": len(prompt) // 4 + len(text) // 4}})

            def _send(self, status, payload, headers=None):
                self._raw(status, json.dumps(payload).encode(), headers)

            def _raw(self, status, data, headers=None):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout, killed)
                    pass

            def log_message(self, *args):
                pass

        super().__init__(Handler)

    def close(self):
        self.release.set()
        super().close()


def start_server(command: list[str]) -> subprocess.Popen:
    """``dcase-t6 explore ... --json`` as the user runs it, its output unbuffered."""
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def started_json(process: subprocess.Popen) -> dict:
    """The JSON object a server started with ``--json`` prints once it listens (the stderr if it ended first)."""
    lines = []
    while not lines or lines[-1] != "}\n":
        line = process.stdout.readline()
        assert line, process.stderr.read()
        lines.append(line)
    return json.loads("".join(lines))
