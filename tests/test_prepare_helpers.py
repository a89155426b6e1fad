"""Shared builders for the prepare tests: real small WAV/FLAC files, 7z archives and a local HTTP server."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import py7zr
import soundfile as sf

from dcase_t6.data.synthetic import SyntheticConfig, generate

SMALL = SyntheticConfig(seed=3, development=4, validation=3, evaluation=5, min_duration=2.0, max_duration=3.0)


def write_tone(path: Path, seconds: float = 1.0, rate: int = 44100, channels: int = 1, frequency: float = 440.0,
               amplitude: float = 0.5, subtype: str | None = None) -> np.ndarray:
    """Write a sine tone (silence if amplitude is 0) and return the samples written."""
    t = np.arange(int(seconds * rate)) / rate
    mono = amplitude * np.sin(2 * np.pi * frequency * t)
    samples = np.stack([mono * (1 - 0.3 * c) for c in range(channels)], axis=1) if channels > 1 else mono
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, rate, subtype=subtype)
    return samples


def md5(path: Path) -> str:
    """MD5 of a file."""
    return hashlib.md5(path.read_bytes()).hexdigest()


def tree_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` by relative path."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def clotho_release(folder: Path, config: SyntheticConfig = SMALL) -> dict[str, str]:
    """Build the nine Clotho v2.1 files (real 7z archives with a top-level part folder) in ``folder``."""
    layout_dir = folder / "layout"
    generate(config, layout_dir)
    for part in ("development", "validation", "evaluation"):
        with py7zr.SevenZipFile(folder / f"clotho_audio_{part}.7z", "w") as archive:
            archive.writeall(layout_dir / "audio" / part, arcname=part)
        for kind in ("captions", "metadata"):
            (folder / f"clotho_{kind}_{part}.csv").write_bytes((layout_dir / f"clotho_{kind}_{part}.csv").read_bytes())
    return {p.name: md5(p) for p in sorted(folder.iterdir()) if p.is_file()}


def seven_zip(path: Path, members: dict[str, bytes], unchecked: bool = False) -> Path:
    """A real 7z archive; ``unchecked`` stores names py7zr would refuse (``../evil``, absolute paths)."""
    with py7zr.SevenZipFile(path, "w") as archive:
        for name, data in members.items():
            (archive._writestr if unchecked else archive.writestr)(data, name)
    return path


class FileServer:
    """Serves ``files`` over HTTP with Range support; can drop the first response after N bytes."""

    def __init__(self, files: dict[str, bytes], drop_after: int | None = None):
        self.files, self.drop_after = files, drop_after
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                server.serve(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def serve(self, handler: http.server.BaseHTTPRequestHandler) -> None:
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
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
