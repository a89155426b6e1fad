"""`export --push-to-hub` and `embed --model OWNER/NAME` through huggingface_hub against a local hub
(127.0.0.1, ``HF_ENDPOINT``) that keeps what is committed and serves it back; offline, one clear line."""

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.common.outputs import MARKER
from dcase_t6.embedding.checkpoints import SplitRequest, embed_run
from dcase_t6.runs.config import build_config
from dcase_t6.runs.registry import Registry
from dcase_t6.training import trainer as training

TOKEN = "hf_local_test_token"
COMMIT = "c" * 40
DEV_TEST = "development-testing"


class LocalHub:
    """The hub endpoints that create_repo, upload_folder (regular uploads: the file contents travel in the commit
    request) and snapshot_download use; every write needs the token."""

    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.authorized: list[bool] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, code: int, body=b"", headers: dict | None = None, kind="application/json"):
                data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def do_POST(self):
                path = urlparse(self.path).path
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                authorized = self.headers.get("Authorization") == f"Bearer {TOKEN}"
                hub.authorized.append(authorized)
                if not authorized:
                    return self.reply(401, {"error": "Invalid credentials in Authorization header"})
                base = f"http://127.0.0.1:{self.server.server_port}"
                if path == "/api/repos/create":
                    request = json.loads(body)
                    repo = f"{request['organization']}/{request['name']}"
                    hub.repos.setdefault(repo, {})
                    return self.reply(200, {"url": f"{base}/{repo}"})
                if path == "/api/validate-yaml":
                    return self.reply(200, {"errors": [], "warnings": []})
                repo = "/".join(path.split("/")[3:5])
                if "/preupload/" in path:
                    files = json.loads(body)["files"]
                    return self.reply(200, {"files": [{"path": item["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False} for item in files]})
                if "/commit/" in path:
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            hub.repos[repo][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    return self.reply(200, {"commitUrl": f"{base}/{repo}/commit/{COMMIT}", "commitOid": COMMIT})
                self.reply(404, {"error": "not found"})

            def do_GET(self):
                parts = unquote(urlparse(self.path).path).strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 6:
                    files = hub.repos.get("/".join(parts[2:4]))
                    if files is None:
                        return self.reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                    if parts[4] == "revision":
                        return self.reply(200, {"id": "/".join(parts[2:4]), "sha": COMMIT,
                                                "siblings": [{"rfilename": name} for name in sorted(files)]})
                    if parts[4] == "tree":
                        folders = sorted({str(Path(name).parent) for name in files} - {"."})
                        return self.reply(200, [{"type": "directory", "path": folder, "oid": COMMIT, "size": 0}
                                                for folder in folders] + [
                            {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                            for name, data in sorted(files.items())])
                if len(parts) >= 5 and parts[2] == "resolve":
                    data = hub.repos.get("/".join(parts[:2]), {}).get("/".join(parts[4:]))
                    if data is None:
                        return self.reply(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                    return self.reply(200, data, {"X-Repo-Commit": COMMIT,
                                                  "ETag": f'"{hashlib.sha1(data).hexdigest()}"'},
                                      "application/octet-stream")
                self.reply(404, {"error": "not found"})

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(monkeypatch, tmp_path):
    local = LocalHub()
    monkeypatch.setenv("HF_ENDPOINT", local.endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    yield local
    local.close()


@pytest.fixture(scope="module")
def run(tiny_training, tmp_path_factory) -> tuple[Path, str]:
    workdir = tmp_path_factory.mktemp("hub-work")
    run_id = training.train_new(workdir, build_config(None, {**tiny_training, "name": "hubbed"})).run
    embed_run(workdir, run_id, SplitRequest(tiny_training["data_root"], "synthetic", DEV_TEST, batch_size=4))
    return workdir, run_id


def invoke(workdir: Path, *args):
    return CliRunner().invoke(main, ["--workdir", str(workdir), *[str(arg) for arg in args]])


def test_push_uploads_the_folder_and_a_hub_id_embeds_and_imports_it(hub, run, tmp_path, tiny_training):
    workdir, run_id = run
    pushed = invoke(workdir, "export", run_id, "--out", tmp_path / "model", "--push-to-hub", "team/tiny-model",
                    "--json")
    assert pushed.exit_code == 0, pushed.output
    result = json.loads(pushed.output)
    assert result["hub_url"] == f"{hub.endpoint}/team/tiny-model/commit/{COMMIT}"
    folder = tmp_path / "model"
    local = {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*")
             if path.is_file() and path.name != MARKER}  # the marker of a folder dcase-t6 wrote is not uploaded
    assert (folder / MARKER).is_file() and hub.repos["team/tiny-model"] == local and all(hub.authorized)
    assert "dcase-t6 embed --model team/tiny-model" in local["README.md"].decode()
    # embed with the hub id: downloaded into HF_HUB_CACHE, then the same vectors as the run
    embedded = invoke(tmp_path, "embed", "--model", "team/tiny-model", "--data-root", tiny_training["data_root"],
                      "--dataset", "synthetic", "--split", DEV_TEST, "--out", tmp_path / "emb", "--batch-size", 4,
                      "--json")
    assert embedded.exit_code == 0, embedded.output
    written = json.loads(embedded.output[embedded.output.index("{"):])
    assert Path(written["model"]).is_relative_to(tmp_path / "hub-cache")
    with np.load(written["embeddings"]) as ours, \
            np.load(workdir / "runs" / run_id / "outputs" / f"synthetic.{DEV_TEST}.embeddings.npz") as theirs:
        assert np.array_equal(ours["audio"], theirs["audio"]) and np.array_equal(ours["text"], theirs["text"])
    imported = invoke(tmp_path / "other", "runs", "import", "team/tiny-model", "--json")
    assert imported.exit_code == 0, imported.output
    record = Registry(tmp_path / "other").file(run_id, "import", "model")
    assert record.info["source"] == "team/tiny-model" and record.info["dev_test"]["dataset"] == "synthetic"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_hub_is_one_line_and_the_folder_stays_complete(run, tmp_path, monkeypatch):
    workdir, run_id = run
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = invoke(workdir, "export", run_id, "--out", tmp_path / "model", "--push-to-hub", "team/tiny-model")
    assert result.exit_code == 2
    [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert f"cannot upload {tmp_path / 'model'} to the hub repo team/tiny-model" in line
    assert "the folder is complete: retry, or upload it with `hf upload team/tiny-model" in line
    assert (tmp_path / "model" / "model.safetensors").is_file() and (tmp_path / "model" / "README.md").is_file()


def cli_subprocess(workdir: Path, *args, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcase_t6", "--workdir", str(workdir), *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=300)


@pytest.mark.slow
def test_offline_mode_push_and_download_fail_with_one_line(run, tmp_path):
    workdir, run_id = run
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "HF_ENDPOINT": "",
               "HF_HUB_CACHE": str(tmp_path / "hub-cache")}
    pushed = cli_subprocess(workdir, "export", run_id, "--out", tmp_path / "model", "--push-to-hub", "team/x",
                            env=offline)
    assert pushed.returncode == 2
    [line] = pushed.stderr.strip().splitlines()
    assert line.startswith("error: cannot upload") and "Offline" in line and "HF_HUB_OFFLINE must not be set" in line
    assert (tmp_path / "model" / "config.json").is_file()
    embedded = cli_subprocess(tmp_path, "embed", "--model", "team/x", "--data-root", tmp_path, "--out",
                              tmp_path / "emb", env=offline)
    assert embedded.returncode == 2
    [line] = embedded.stderr.strip().splitlines()
    assert line.startswith("error: team/x: not a local folder, and downloading it from the Hugging Face hub failed")


@pytest.mark.slow
def test_without_a_token_the_hub_refuses_and_the_line_says_how_to_log_in(run, tmp_path, hub):
    workdir, run_id = run
    no_token = {"HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf-home"), "HF_ENDPOINT": hub.endpoint}
    pushed = cli_subprocess(workdir, "export", run_id, "--out", tmp_path / "model", "--push-to-hub", "team/x",
                            env=no_token)
    assert pushed.returncode == 2 and hub.authorized == [False]
    [line] = pushed.stderr.strip().splitlines()
    assert "401" in line and "`hf auth login` or HF_TOKEN" in line
    assert "team/x" not in hub.repos


def test_a_bad_repo_id_is_refused_before_anything_is_written(run, tmp_path):
    workdir, run_id = run
    result = invoke(workdir, "export", run_id, "--out", tmp_path / "model", "--push-to-hub", "not a repo")
    assert result.exit_code == 2 and "not a hub repo id; expected OWNER/NAME" in result.output
    assert not (tmp_path / "model").exists()
