"""Hostile inputs, round two: `augment` against a server that drips its answer, sends 5 MB answers or finds a
damaged journal; pipes, devices and sockets given as input files; `explore` and links leading out of --audio;
metadata YAML with huge values and keys that are not texts.

Every case is a real `dcase-t6` command on real files (a server on 127.0.0.1 stands in for the LLM endpoint) and
must end in bounded time with one clear line (or the documented output), never a traceback.
"""

import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from dcase_t6.cli import main
from helpers.explore import FILES
from helpers.servers import KEY, KEY_ENV, ChatServer, LocalServer, start_server, started_json
from helpers.submission import PDF, label, make_system

ANSWER = "A dog barks while a car passes by on a wet road."


def invoke(args: list, env: dict | None = None, limit: float = 15.0):
    """``dcase-t6 ARGS`` in a thread: a command that opened a FIFO would block forever, so the test fails after
    ``limit`` seconds instead of hanging."""
    box = {}
    thread = threading.Thread(target=lambda: box.update(result=CliRunner().invoke(main, [str(a) for a in args],
                                                                                   env=env)), daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"dcase-t6 {' '.join(map(str, args))} still running after {limit} s"
    return box["result"]


def one_line_error(args: list, env: dict | None = None) -> str:
    result = invoke(args, env)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# --- augment: a deadline per attempt -------------------------------------------------------------------------------


class DripServer(LocalServer):
    """A chat-completions server that sends its (good) answer one byte every 50 ms: the body (headers at once) or
    the status line and headers themselves; 20 s in all, each read well within any per-read timeout."""

    def __init__(self, where: str, seconds: float = 20.0):
        server = self
        self.received, self.hung_up = [], []  # when each request arrived, when its client hung up

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                server.received.append(time.monotonic())
                body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": ANSWER}}]})
                head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                        "\r\n").encode()
                slow = head if where == "headers" else body.encode()
                step = max(1, len(slow) // int(seconds / 0.05))
                try:
                    if where == "body":
                        self.wfile.write(head)
                    for start in range(0, len(slow), step):
                        self.wfile.write(slow[start:start + step])
                        self.wfile.flush()
                        time.sleep(0.05)
                    if where == "headers":
                        self.wfile.write(body.encode())
                except OSError:  # the client hung up: stop dripping
                    server.hung_up.append(time.monotonic())

            def log_message(self, *args):
                pass

        super().__init__(Handler)


def mix(root, out, base, *extra) -> list:
    return ["augment", "llm-mix", "--data-root", root, "--dataset", "synthetic", "--out", out, "--api-base", base,
            "--model", "test-model", "--api-key-env", KEY_ENV, "--concurrency", "1", "--json", *extra]


@pytest.mark.parametrize("where", ["body", "headers"])
def test_augment_timeout_is_a_deadline_for_the_whole_attempt(tiny_data_root, tmp_path, where):
    server = DripServer(where)
    out = tmp_path / "mix.csv"
    try:
        started = time.monotonic()
        result = invoke(mix(tiny_data_root, out, server.base, "--pairs", "1", "--timeout", "1", "--retries", "0"),
                        {KEY_ENV: KEY}, limit=30)
        seconds = time.monotonic() - started
    finally:
        server.close()
    assert result.exit_code == 0, result.output
    assert len(server.received) == 1 and len(server.hung_up) == 1, "the client read the whole drip"
    attempt = server.hung_up[0] - server.received[0]
    assert attempt < 2, f"one attempt of --timeout 1 lasted {attempt:.1f} s"
    assert seconds < 8, f"the command took {seconds:.1f} s"  # the server would drip for 20 s
    report = json.loads(result.stdout)
    assert report["failed"] == 1 and report["kept"] == 0
    entry = json.loads(out.with_suffix(".journal.jsonl").read_text().splitlines()[1])
    assert entry["verdict"] == "failed" and entry["detail"].startswith("no complete answer within 1 s")


# --- augment: the journal keeps what a resume needs ----------------------------------------------------------------


def test_huge_answers_are_journaled_as_an_excerpt_and_resume_asks_nothing_again(tiny_data_root, tmp_path):
    five_mb = ["word " * 1_000_000, "abc " * 1_250_000, " ".join(["x" * 1_000_000] * 5)]  # the last: 5 "words"
    chat = ChatServer([f"text:{text}" for text in five_mb])
    out = tmp_path / "mix.csv"
    try:
        result = invoke(mix(tiny_data_root, out, chat.base, "--pairs", "3"), {KEY_ENV: KEY}, limit=60)
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["kept"] == 0 and report["rejected"] == {"longer than 1,000 characters": 3}
        journal = out.with_suffix(".journal.jsonl")
        assert journal.stat().st_size < 10_000, journal.stat().st_size
        entries = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
        assert [entry["verdict"] for entry in entries] == ["rejected"] * 3
        assert all(len(entry["text"]) < 300 and "characters in all, the rest not journaled]" in entry["text"]
                   for entry in entries)
        assert entries[0]["detail"] == "4,999,999 characters" and entries[2]["detail"] == "5,000,004 characters"
        again = invoke(mix(tiny_data_root, out, chat.base, "--pairs", "3"), {KEY_ENV: KEY})
        assert again.exit_code == 0 and json.loads(again.stdout)["requests"] == 0 and len(chat.received) == 3
    finally:
        chat.close()


@pytest.fixture(scope="module")
def answered_journal(tiny_data_root, tmp_path_factory) -> Path:
    """A journal of a real run that kept one answer."""
    chat = ChatServer([f"text:{ANSWER}"])
    out = tmp_path_factory.mktemp("journal") / "mix.csv"
    try:
        result = invoke(mix(tiny_data_root, out, chat.base, "--pairs", "1"), {KEY_ENV: KEY})
    finally:
        chat.close()
    assert result.exit_code == 0, result.output
    return out.with_suffix(".journal.jsonl")


def _entry_edit(**changes):
    def edit(header: dict, entry: dict) -> list:
        return [header, {**entry, **changes}]
    return edit


JOURNAL_DAMAGE = {
    "key-a-list": (_entry_edit(key=["a", "b"]), "line 2 is not a journal entry (key is a list, not a text"),
    "tokens-as-text": (_entry_edit(prompt_tokens="many"),
                       "line 2 is not a journal entry (prompt_tokens is a text, not a whole number >= 0"),
    "negative-attempts": (_entry_edit(attempts=-3),
                          "line 2 is not a journal entry (attempts is the number -3, not a whole number >= 0"),
    "unknown-verdict": (_entry_edit(verdict="maybe"),
                        'line 2 is not a journal entry (verdict is "maybe", none of kept, rejected, failed'),
    "info-a-list": (_entry_edit(info=[1]), "line 2 is not a journal entry (info is a list, not an object"),
    "header-a-list": (lambda header, entry: [[header], entry],
                      "line 1 is not the header of a journal (a list, not a JSON object"),
    "generator-a-list": (lambda header, entry: [{**header, "generator": [1, "a"]}, entry],
                         "line 1 is not the header of a journal (its generator is a list, not an object"),
}


@pytest.mark.parametrize("damage", list(JOURNAL_DAMAGE))
def test_a_damaged_journal_is_one_line_naming_the_line_and_the_fix(tiny_data_root, tmp_path, answered_journal,
                                                                   damage):
    edit, expected = JOURNAL_DAMAGE[damage]
    header, entry = (json.loads(line) for line in answered_journal.read_text().splitlines())
    out = tmp_path / "mix.csv"
    journal = out.with_suffix(".journal.jsonl")
    journal.write_text("".join(json.dumps(record) + "\n" for record in edit(header, entry)))
    before = journal.read_bytes()
    for extra in (["--dry-run"], []):
        line = one_line_error(mix(tiny_data_root, out, "http://127.0.0.1:9/v1", "--pairs", "1", *extra),
                              {KEY_ENV: KEY})
        assert line.startswith(f"error: {journal}: {expected}"), line
        fix = "move the journal away" if expected.startswith("line 1") else "delete that line"
        assert fix in line and journal.read_bytes() == before


# --- pipes, devices and sockets given as input files ----------------------------------------------------------------


@pytest.fixture
def specials(tmp_path, tiny_data_root):
    """A FIFO, a UNIX socket, /dev/zero, and the regular files the commands need besides."""
    system = make_system(tmp_path, 1)
    report = tmp_path / "report.pdf"
    report.write_bytes(PDF)
    relevance = tmp_path / "relevance.csv"
    relevance.write_text("query,audio_filenames\n")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    folder = tempfile.mkdtemp(prefix="dt6-")  # a socket's path must be short
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(os.path.join(folder, "s"))
    yield {"system": system, "report": report, "relevance": relevance, "fifo": fifo, "socket": Path(folder) / "s",
           "data": tiny_data_root, "out": tmp_path / "out"}
    listener.close()
    shutil.rmtree(folder, ignore_errors=True)


SPECIAL_COMMANDS = {
    "evaluate-predictions": lambda s, x: ["evaluate", "-p", x, "-r", s["relevance"]],
    "evaluate-relevance": lambda s, x: ["evaluate", "-p", s["system"].predictions, "-r", x],
    "train-config": lambda s, x: ["--workdir", s["out"], "train", "--config", x],
    "ensemble-weights": lambda s, x: ["ensemble", "--apply", "-w", x, "-s", f"a={s['system'].predictions}", "-s",
                                      f"b={s['system'].predictions}", "--out", s["out"] / "e.csv"],
    "package-meta": lambda s, x: ["package", "-l", label(1), "-p", s["system"].predictions, "-m", x, "--report",
                                  s["report"], "--out", s["out"] / "s.zip"],
    "package-report": lambda s, x: ["package", "-l", label(1), "-p", s["system"].predictions, "-m", s["system"].meta,
                                    "--report", x, "--out", s["out"] / "s.zip"],
    "init-meta-results": lambda s, x: ["package", "--init-meta", "--label", label(1), "--results", x, "--out",
                                       s["out"] / "m.yaml"],
    "augment-prompt": lambda s, x: mix(s["data"], s["out"] / "m.csv", "http://127.0.0.1:9/v1", "--pairs", "1",
                                       "--dry-run", "--prompt", x),
    "augment-journal": lambda s, x: mix(s["data"], s["out"] / "m.csv", "http://127.0.0.1:9/v1", "--pairs", "1",
                                        "--dry-run", "--journal", x),
}
KINDS = {"fifo": "a named pipe (FIFO)", "socket": "a socket", "zero": "a character device"}


@pytest.mark.parametrize(("command", "kind"), [*((name, "fifo") for name in SPECIAL_COMMANDS),
                                               ("evaluate-predictions", "socket"), ("package-meta", "socket"),
                                               ("evaluate-predictions", "zero"), ("train-config", "zero"),
                                               ("package-report", "zero")])
def test_a_pipe_device_or_socket_is_not_a_regular_file(specials, command, kind):
    path = Path("/dev/zero") if kind == "zero" else specials[kind]
    line = one_line_error(SPECIAL_COMMANDS[command](specials, path), {KEY_ENV: KEY})
    assert line.startswith(f"error: {path}: not a regular file but {KINDS[kind]}; pass the path of a regular file"), \
        line


def test_check_of_a_pipe_names_it_without_opening_it(specials):
    result = invoke(["package", "--check", specials["fifo"]])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{specials['fifo']}: not a regular file but a named pipe (FIFO)" in result.output


# --- explore: only regular files inside --audio --------------------------------------------------------------------


def _link_out(case) -> tuple[Path, Path]:
    """Replace a.wav in --audio with a link to a file outside it, and h.wav with a link to g.wav inside it."""
    outside = case["tmp"] / "private.wav"
    shutil.move(case["audio"] / "a.wav", outside)
    (case["audio"] / "a.wav").symlink_to(outside)
    (case["audio"] / "h.wav").unlink()
    (case["audio"] / "h.wav").symlink_to(case["audio"] / "g.wav")
    return outside, case["audio"] / "g.wav"


def test_explore_site_leaves_out_a_link_leading_out_of_audio(case, tmp_path):
    outside, inside = _link_out(case)
    site = tmp_path / "site"
    result = invoke(["explore", "-p", case["first"], "-r", case["relevance"], "--audio", case["audio"], "--html", site,
                     "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["audio_files"] == len(FILES) - 1
    assert "1 of 6 clips have no file" in result.stderr and "links leading out of the folder" in result.stderr
    copied = {path.read_bytes() for path in (site / "audio").iterdir()}
    assert outside.read_bytes() not in copied and inside.read_bytes() in copied
    assert not (site / "audio" / "0.wav").exists() and (site / "audio" / f"{FILES.index('h.wav')}.wav").exists()


def test_explore_server_answers_404_for_a_link_leading_out_of_audio(case):
    _link_out(case)
    process = start_server([sys.executable, "-m", "dcase_t6", "explore", "-p", str(case["first"]), "-r",
                            str(case["relevance"]), "--audio", str(case["audio"]), "--json"])
    try:
        url = started_json(process)["url"]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "audio/0.wav", timeout=10)
        assert refused.value.code == 404
        with urllib.request.urlopen(url + f"audio/{FILES.index('h.wav')}.wav", timeout=10) as response:
            assert response.status == 200 and response.read() == (case["audio"] / "g.wav").read_bytes()
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_explore_names_the_links_when_every_clip_leads_out_of_audio(case, tmp_path):
    links = tmp_path / "links"
    links.mkdir()
    for name in FILES:
        (links / name).symlink_to(case["audio"] / name)
    line = one_line_error(["explore", "-p", case["first"], "-r", case["relevance"], "--audio", links, "--html",
                           tmp_path / "site"])
    assert "are links that lead out of this folder" in line and "pass --audio the folder the links lead to" in line
    assert not (tmp_path / "site").exists()


# --- metadata messages ----------------------------------------------------------------------------------------------


@pytest.fixture
def system(tmp_path):
    report = tmp_path / "report.pdf"
    report.write_bytes(PDF)
    return make_system(tmp_path, 1), report


def _package(system, meta: Path, tmp_path: Path) -> list:
    files, report = system
    return ["package", "-l", label(1), "-p", files.predictions, "-m", meta, "--report", report, "--out",
            tmp_path / "submission.zip"]


def test_a_200_kb_metadata_value_is_named_not_echoed(system, tmp_path):
    meta = yaml.safe_load(system[0].meta.read_text(encoding="utf-8"))
    meta["submission"]["abbreviation"] = "x" * 200_000
    path = tmp_path / "meta.yaml"
    path.write_text(yaml.safe_dump(meta, allow_unicode=True, width=10**9), encoding="utf-8")
    result = invoke(_package(system, path, tmp_path))
    assert result.exit_code == 2 and len(result.output) < 1000, len(result.output)
    assert "submission.abbreviation: 'xxxx" in result.output and "... (200,000 characters) has more than 10" \
        in result.output
    assert not (tmp_path / "submission.zip").exists()


@pytest.mark.parametrize(("keys", "expected"), [
    ("1: a\ntrue: b\n", "key '1' is read by YAML as the number 1, not a text"),
    ("true: b\n", "key 'true' is read by YAML as the boolean true, not a text"),
    ("null: b\n", "key 'null' is read by YAML as null, not a text"),
    ("2025-06-01: b\n", "key '2025-06-01' is read by YAML as a date, not a text"),
])
def test_metadata_keys_that_are_not_texts_are_named_as_such(system, tmp_path, keys, expected):
    text = system[0].meta.read_text(encoding="utf-8")
    path = tmp_path / "meta.yaml"
    path.write_text(text + keys, encoding="utf-8")
    line = one_line_error(_package(system, path, tmp_path))
    first = len(text.splitlines()) + 1
    assert line.startswith(f"error: {path}: line {first}: {expected}; metadata keys are texts: quote it"), line
    assert "duplicate" not in line
