"""`dcase-t6 augment` through the chat-completions API, against a small server this test starts on 127.0.0.1:
scripted answers (good, malformed, 429 then good, 500, a stall past the timeout, refusals, junk), the request
cap, dry runs, resume after a failure, after `--max-requests` and after `kill -9`, with no request answered
twice."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from dcase_t6.captions.mixing import MixSettings, sample_pairs
from dcase_t6.captions.source import CaptionSource, read_captions
from dcase_t6.cli import main
from dcase_t6.runs.config import build_config
from dcase_t6.training.augmentation import read_extra_captions, read_merged_captions
from helpers.servers import KEY, KEY_ENV, ChatServer, good_answer

MIX_TEMPLATE = "MIX|{caption_1}|{caption_2}"
FORWARD_TEMPLATE = "FWD|{code}|{caption}"
BACK_TEMPLATE = "BACK|{code}|{text}"


@pytest.fixture
def server():
    servers = []

    def start(script=None):
        servers.append(ChatServer(script))
        return servers[-1]

    yield start
    for running in servers:
        running.close()


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("templates")
    paths = {}
    for name, text in (("mix", MIX_TEMPLATE), ("forward", FORWARD_TEMPLATE), ("back", BACK_TEMPLATE)):
        paths[name] = folder / f"{name}.txt"
        paths[name].write_text(text)
    return paths


def mix_args(root, out, base, templates, *extra) -> list[str]:
    return ["augment", "llm-mix", "--data-root", str(root), "--dataset", "synthetic", "--out", str(out),
            "--api-base", base, "--model", "test-model", "--api-key-env", KEY_ENV, "--prompt", str(templates["mix"]),
            "--timeout", "1", "--retries", "2", "--concurrency", "1", "--json", *extra]


def invoke(args: list[str], key: str | None = KEY):
    result = CliRunner().invoke(main, args, env={KEY_ENV: key})
    return result, (json.loads(result.stdout) if result.exit_code == 0 else None)


def journal_entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()[1:]]


def test_scripted_answers_are_kept_skipped_or_failed_and_a_second_run_asks_only_the_failed_one(
        tiny_data_root, tmp_path, server, templates):
    junk = "text:ein Hund bellt laut im Garten und ein Auto f\u00e4hrt \u65e5\u672c"
    script = ["good", "malformed", "429", "good", "500", "500", "500", "stall", "good",
              "text:I'm sorry, but I can't help with that.", "no-choices", "text:", junk,
              "text:" + " ".join(["word"] * 40), "text:line one is here\nand two"]
    chat = server(script)
    out = tmp_path / "mix.csv"
    started = time.monotonic()
    result, report = invoke(mix_args(tiny_data_root, out, chat.base, templates, "--pairs", "14"))
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 15
    # pair: 0 good, 1 malformed, 2 429 then good, 3 500 x3 (failed), 4 stall then good, 5 refusal, 6 no choices,
    # 7 empty, 8 non-ASCII, 9 40 words, 10 two lines, 11-13 good
    assert report["kept"] == 6 and report["failed"] == 1 and report["pending"] == 0
    assert report["rejected"] == {"empty": 1, "malformed response": 2, "non-ASCII characters": 1,
                                  "outside 5-30 words": 1, "refusal": 1, "several lines": 1}
    assert report["requests"] == 14 and report["attempts"] == len(script) + 3
    assert len(chat.received) == len(script) + 3
    rows = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(rows.columns) == ["file_name_1", "file_name_2", "caption", "dataset"] and len(rows) == 6
    captions = read_captions(CaptionSource(str(tiny_data_root), "synthetic"))
    pairs = sample_pairs(captions, MixSettings(14, 0))
    kept_pairs = [0, 2, 4, 11, 12, 13]
    assert rows["file_name_1"].tolist() == [pairs[i].first.file_name for i in kept_pairs]
    assert rows["caption"].tolist()[0] == good_answer(MIX_TEMPLATE.format(caption_1=pairs[0].first.caption,
                                                                          caption_2=pairs[0].second.caption))
    entries = journal_entries(out.with_suffix(".journal.jsonl"))
    assert [entry["verdict"] for entry in entries].count("failed") == 1
    assert next(e for e in entries if e["verdict"] == "failed")["detail"].startswith("HTTP 500")
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["generator"]["model"] == "test-model" and meta["generator"]["prompts"]["mix"]["text"] == MIX_TEMPLATE
    assert meta["counts"]["kept"] == 6 and "LLM mix" in meta["text_augmentation"]

    answered_before = set(chat.answered)
    result, again = invoke(mix_args(tiny_data_root, out, chat.base, templates, "--pairs", "14"))
    assert result.exit_code == 0, result.output
    assert again["requests"] == 1 and again["kept"] == 7 and again["failed"] == 0
    assert chat.received[-1] == MIX_TEMPLATE.format(caption_1=pairs[3].first.caption, caption_2=pairs[3].second.caption)
    assert not answered_before & set(chat.received[len(script) + 3:])
    # what training reads
    config = build_config(None, {"data_root": str(tiny_data_root), "datasets": "synthetic", "audio_mix.p": 0.5,
                                 "audio_mix.merged_captions_file": str(out)})
    clip_index = {f"synthetic/{name}": i for i, name in enumerate(dict.fromkeys(c.file_name for c in captions))}
    merged = read_merged_captions(str(out), clip_index, config)
    assert sum(len(partners) for partners in merged.values()) == 2 * 7


def test_back_translation_through_the_api_with_a_request_cap_then_resume(tiny_data_root, tmp_path, server, templates):
    chat = server()
    out = tmp_path / "bt.csv"
    args = ["augment", "back-translate", "--data-root", str(tiny_data_root), "--dataset", "synthetic", "--out",
            str(out), "--api-base", chat.base, "--model", "test-model", "--api-key-env", KEY_ENV, "--languages",
            "de,fr,ja", "--prompt-forward", str(templates["forward"]), "--prompt-back", str(templates["back"]),
            "--concurrency", "3", "--json"]
    result, dry = invoke([*args, "--dry-run"], key=None)  # a dry run needs no key and creates nothing
    assert result.exit_code == 0, result.output
    captions = read_captions(CaptionSource(str(tiny_data_root), "synthetic"))
    assert dry["estimate"]["requests"] == 2 * len(captions) and dry["estimate"]["prompt_tokens"] > 0
    assert not out.exists() and not out.with_suffix(".journal.jsonl").exists() and chat.received == []

    result, capped = invoke([*args, "--max-requests", "7"])
    assert result.exit_code == 0, result.output
    assert capped["stopped"] == "max-requests" and capped["requests"] == 7 and len(chat.received) == 7
    assert 0 < len(pd.read_csv(out)) <= 3
    result, dry = invoke([*args, "--dry-run"])
    assert dry["estimate"]["requests"] == 2 * len(captions) - 7

    result, done = invoke(args)
    assert result.exit_code == 0, result.output
    assert done["stopped"] is None and done["kept"] == len(captions) and done["requests"] == 2 * len(captions) - 7
    rows = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(rows.columns) == ["file_name", "caption", "dataset", "pivot"] and len(rows) == len(captions)
    assert set(rows["pivot"]) == {"de", "fr", "ja"}
    assert rows["caption"][0] == "It sounds like " + captions[0].caption.lower()
    # every request exactly once (clips that share a caption text are asked once each)
    expected = [prompt for pivot, caption in zip(rows["pivot"], captions)
                for prompt in (f"FWD|{pivot}|{caption.caption}", f"BACK|{pivot}|[{pivot}] {caption.caption}")]
    assert Counter(chat.received) == Counter(expected)
    config = build_config(None, {"data_root": str(tiny_data_root), "datasets": "synthetic",
                                 "caption_augmentation.extra_captions_p": 0.5,
                                 "caption_augmentation.extra_captions_file": str(out)})
    clip_index = {f"synthetic/{name}": i for i, name in enumerate(dict.fromkeys(c.file_name for c in captions))}
    extra = read_extra_captions(str(out), clip_index, config)
    assert sum(len(texts) for texts in extra.values()) == len(captions)
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["generator"]["prompts"]["forward"]["text"] == FORWARD_TEMPLATE and meta["languages"] == ["de", "fr",
                                                                                                         "ja"]


def test_default_templates_are_sent_and_recorded(tiny_data_root, tmp_path, server):
    chat = server(["text:A siren wails while a bell rings in the distance."] * 3)
    out = tmp_path / "mix.csv"
    result = CliRunner().invoke(main, ["augment", "llm-mix", "--data-root", str(tiny_data_root), "--dataset",
                                       "synthetic", "--pairs", "3", "--out", str(out), "--api-base", chat.base,
                                       "--model", "gpt-test", "--api-key-env", KEY_ENV], env={KEY_ENV: KEY})
    assert result.exit_code == 0, result.output
    assert "kept" in result.stdout and "mix.meta.json" in result.stdout.replace("\n", "")
    assert all(prompt.startswith("Two sound recordings are played at the same time") and "Caption 2: " in prompt
               for prompt in chat.received)
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["generator"]["prompts"]["mix"]["origin"] == "default"


def test_endpoint_errors_are_one_line_naming_the_fix(tiny_data_root, tmp_path, server, templates):
    chat = server()
    out = tmp_path / "mix.csv"
    base = mix_args(tiny_data_root, out, chat.base, templates, "--pairs", "2")
    result, _ = invoke(base, key=None)
    assert result.exit_code == 2 and f"environment variable {KEY_ENV} is not set: export {KEY_ENV}=" in result.stderr
    assert not out.with_suffix(".journal.jsonl").exists()
    result, _ = invoke(base, key="wrong-key")
    assert result.exit_code == 2 and f"the key in {KEY_ENV} was refused (401" in result.stderr
    assert "Traceback" not in result.output
    other_model = [*base[:base.index("--model") + 1], "missing-model", *base[base.index("--model") + 2:]]
    result, _ = invoke(other_model)  # the journal of the refused run holds answers of test-model only
    assert result.exit_code == 2 and 'written with model = "test-model", now "missing-model"' in result.stderr
    other_model[other_model.index("--out") + 1] = str(tmp_path / "other.csv")
    result, _ = invoke(other_model)
    assert result.exit_code == 2 and "model 'missing-model' or the chat-completions URL was not found" in result.stderr
    bad = tmp_path / "bad.txt"
    bad.write_text("Merge {caption_1} and {caption_3}")
    result, _ = invoke([*base, "--prompt", str(bad)])
    assert result.exit_code == 2 and "unknown field {caption_3}" in result.stderr
    result, _ = invoke(mix_args(tiny_data_root, tmp_path / "mix.txt", chat.base, templates, "--pairs", "2"))
    assert result.exit_code == 2 and "name it NAME.csv" in result.stderr
    result, _ = invoke(["augment", "back-translate", "--data-root", str(tiny_data_root), "--dataset", "synthetic",
                        "--out", str(out), "--model", "gpt-4o"])
    assert result.exit_code == 2 and "--model needs --api-base" in result.stderr
    result, _ = invoke(mix_args(tiny_data_root, out, chat.base, templates, "--pairs", "100000"))
    assert result.exit_code == 2 and "at most 66 different pairs" in result.stderr
    assert chat.received == []


def test_a_dead_endpoint_stops_the_run_after_failures_in_a_row_and_keeps_the_answers(tiny_data_root, tmp_path, server,
                                                                                      templates):
    chat = server(["good", "good", *["500"] * 30])
    out = tmp_path / "mix.csv"
    result, _ = invoke(mix_args(tiny_data_root, out, chat.base, templates, "--pairs", "20", "--retries", "0"))
    assert result.exit_code == 2 and "5 requests in a row got no answer (last: HTTP 500" in result.stderr
    assert len(pd.read_csv(out)) == 2 and len(chat.received) == 7  # written before the error; nothing else sent
    result, report = invoke(mix_args(tiny_data_root, out, chat.base, templates, "--pairs", "20", "--retries", "0",
                                     "--max-requests", "100"))
    assert result.exit_code == 2  # still failing: 5 more, then stop
    chat.script.clear()
    result, report = invoke(mix_args(tiny_data_root, out, chat.base, templates, "--pairs", "20"))
    assert result.exit_code == 0 and report["kept"] == 20 and report["requests"] == 18


# The command in a fresh interpreter, as a user runs it (killed with SIGKILL by the test).
def _spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dcase_t6", *args], env={**os.environ, KEY_ENV: KEY},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_kill_9_while_a_request_is_in_flight_then_resume_asks_nothing_twice(tiny_data_root, tmp_path, server,
                                                                             templates):
    chat = server(["good"] * 5 + ["hang"])
    out = tmp_path / "mix.csv"
    args = mix_args(tiny_data_root, out, chat.base, templates, "--pairs", "12", "--timeout", "30")
    process = _spawn(args)
    deadline = time.monotonic() + 30
    while len(chat.received) < 6 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert len(chat.received) == 6, process.communicate(timeout=10)
    process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL
    journal = out.with_suffix(".journal.jsonl")
    assert [entry["verdict"] for entry in journal_entries(journal)] == ["kept"] * 5
    assert not out.exists()  # the CSV is written at the end only, atomically
    with open(journal, "ab") as handle:  # as if the process had died in the middle of writing a line
        handle.write(b'{"key": "0123456789abcdef01234567", "step": "mix", "verd')
    answered_before = list(chat.answered)
    chat.release.set()

    result, report = invoke(args)
    assert result.exit_code == 0, result.output
    assert report["requests"] == 7 and report["kept"] == 12
    resumed = chat.received[6:]
    assert resumed[0] == chat.received[5]  # the request that never got its answer is asked again
    assert not set(answered_before) & set(resumed)
    assert all(re.fullmatch(r"\{.*\}", line) for line in journal.read_text().splitlines())

    reference = tmp_path / "reference.csv"  # an uninterrupted run gives the same file
    result, _ = invoke(mix_args(tiny_data_root, reference, chat.base, templates, "--pairs", "12"))
    assert result.exit_code == 0 and reference.read_text() == out.read_text()


def test_ctrl_c_finishes_the_request_in_flight_writes_the_csv_and_exits_130(tiny_data_root, tmp_path, server,
                                                                           templates):
    chat = server(["good"] * 5 + ["hang"])
    out = tmp_path / "mix.csv"
    process = _spawn(mix_args(tiny_data_root, out, chat.base, templates, "--pairs", "12", "--timeout", "30"))
    deadline = time.monotonic() + 30
    while len(chat.received) < 6 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    chat.release.set()  # the hung request closes without an answer; the client retries it once more
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr.decode()[-2000:]
    report = json.loads(stdout)
    assert report["stopped"] == "interrupted" and report["kept"] == 6 and report["pending"] == 6
    assert len(pd.read_csv(out)) == 6 and len(chat.received) == 7
