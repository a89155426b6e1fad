"""Benchmark `dcase-t6 augment` against a chat-completions server started here on 127.0.0.1, and project what a
run over Clotho costs.

1. Throughput: LLM mix of the same pairs with 1 and with 8 requests in flight, against a server that takes
   ``--latency`` seconds per answer (as a hosted model does): requests/s and the speed-up (goal: >= 5x of
   the ideal 8x). With no latency, the overhead of the client, the checks and the journal (each answer
   flushed to disk) per request.
2. Cost projection: the dry-run estimate (4 characters a token + 7 a message) with the default prompts for
   back-translation of Clotho's 19,195 development captions and for 50,000 LLM-mix pairs (the AISTAT 2025
   count), from the lengths of the 1,037 real Clotho captions of the dev-test relevance file in tests/data.

``--write-docs`` puts the figures into this script's block of docs/speed.md (also when the goal is missed, before
the script exits with 1). Usage:

    .venv/bin/python benchmarks/bench_augment.py [--latency 0.05] [--pairs 240] [--write-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd

import _published
from dcase_t6.captions.backtranslation import BackTranslationItem
from dcase_t6.captions.endpoint import EndpointSettings
from dcase_t6.captions.engine import AugmentRun, OutputFiles, SpendLimits
from dcase_t6.captions.journal import Journal
from dcase_t6.captions.mixing import MixItem, MixPair, MixSettings, llm_mix
from dcase_t6.captions.prompts import load_template
from dcase_t6.captions.source import CaptionSource, SourceCaption
from dcase_t6.data.layout import Layout
from dcase_t6.data.synthetic import SyntheticConfig, prepare_synthetic

CLOTHO_CAPTIONS = 19_195  # development: 3,839 clips x 5 captions
MIX_PAIRS = 50_000
RELEVANCE = Path(__file__).resolve().parent.parent / "tests" / "data" / "clotho-devtest-relevance-metadata_eval.csv"
KEY_ENV = "DCASE_T6_BENCH_KEY"


def serve(latency: float) -> ThreadingHTTPServer:
    """A chat-completions server answering every prompt after ``latency`` seconds with a usable caption."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(latency)
            words = body["messages"][-1]["content"].split()
            text = "A mixture of " + " ".join(words[-8:]).lower()
            data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": text}}],
                               "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def throughput(root: Path, folder: Path, base: str, pairs: int, concurrency: int) -> float:
    """Requests per second of an LLM-mix run of ``pairs`` pairs."""
    out = folder / f"mix-{concurrency}-{time.monotonic_ns()}.csv"
    endpoint = EndpointSettings(base, "bench-model", KEY_ENV, timeout=30, retries=0)
    started = time.perf_counter()
    report = llm_mix(CaptionSource(str(root), "synthetic"), MixSettings(pairs, seed=concurrency), endpoint,
                     load_template("mix"), AugmentRun(OutputFiles.beside(out), SpendLimits(concurrency=concurrency)))
    seconds = time.perf_counter() - started
    assert report.requests == pairs and report.kept == pairs, report
    return pairs / seconds


def projection() -> dict:
    """Requests and estimated tokens for Clotho back-translation and 50,000 LLM-mix pairs."""
    captions = pd.read_csv(RELEVANCE)["query"].tolist()
    journal = Journal(Path(tempfile.gettempdir()) / "absent.jsonl", "back-translation", {}, write=False)
    forward, back, mix = load_template("forward"), load_template("back"), load_template("mix")
    per_caption = np.zeros(2)
    for number, text in enumerate(captions):
        item = BackTranslationItem(SourceCaption("clotho", f"{number}.wav", "1", text), "de", 0, forward, back)
        per_caption += np.array(item.estimate(journal)).sum(axis=0)
    per_caption /= len(captions)
    rng, per_pair = np.random.default_rng(0), np.zeros(2)
    for number in range(5000):
        one, two = rng.choice(len(captions), 2, replace=False)
        pair = MixPair(number, SourceCaption("clotho", "a", "1", captions[one]), SourceCaption("clotho", "b", "1",
                                                                                                captions[two]))
        per_pair += np.array(MixItem(pair, 0, mix).estimate(journal)).sum(axis=0)
    per_pair /= 5000
    return {"captions_measured": len(captions), "mean_words": float(np.mean([len(c.split()) for c in captions])),
            "back_translation": {"requests": 2 * CLOTHO_CAPTIONS,
                                 "prompt_tokens": round(per_caption[0] * CLOTHO_CAPTIONS),
                                 "completion_tokens": round(per_caption[1] * CLOTHO_CAPTIONS)},
            "llm_mix": {"requests": MIX_PAIRS, "prompt_tokens": round(per_pair[0] * MIX_PAIRS),
                        "completion_tokens": round(per_pair[1] * MIX_PAIRS)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--pairs", type=int, default=240)
    _published.add_option(parser)
    args = parser.parse_args()
    os.environ[KEY_ENV] = "bench"
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        prepare_synthetic(Layout.at(folder / "data"), SyntheticConfig(development=40, validation=2, evaluation=2,
                                                                      min_duration=2.0, max_duration=2.0))
        slow, instant = serve(args.latency), serve(0.0)
        try:
            base = f"http://127.0.0.1:{slow.server_address[1]}/v1"
            one = throughput(folder / "data", folder, base, args.pairs, 1)
            eight = throughput(folder / "data", folder, base, args.pairs, 8)
            base = f"http://127.0.0.1:{instant.server_address[1]}/v1"
            overhead = 1000 / throughput(folder / "data", folder, base, args.pairs, 1)
        finally:
            slow.shutdown()
            instant.shutdown()
    speedup = eight / one
    print(f"LLM mix, {args.pairs} pairs, server latency {args.latency * 1000:.0f} ms: {one:.1f} req/s with 1 in "
          f"flight, {eight:.1f} req/s with 8: {speedup:.1f}x (goal >= 5x) {'OK' if speedup >= 5 else 'MISSED'}")
    print(f"overhead per request (client, checks, journal flushed to disk), no latency: {overhead:.1f} ms")
    cost = projection()
    rows = [_published.Row(f"`augment` LLM mix, {args.pairs} pairs, server latency {args.latency * 1000:.0f} ms: "
                           "8 requests in flight vs 1",
                           f"{speedup:.1f}x the throughput ({one:.1f} vs {eight:.1f} requests/s)", ">= 5x"),
            _published.Row("`augment` overhead per request (client, checks, journal flushed to disk)",
                           f"{overhead:.1f} ms")]
    for name, numbers in (("back-translation of Clotho's 19,195 development captions", cost["back_translation"]),
                          ("LLM mix of 50,000 Clotho pairs", cost["llm_mix"])):
        print(f"{name}: {numbers['requests']:,} requests, ~{numbers['prompt_tokens']:,} prompt + "
              f"~{numbers['completion_tokens']:,} completion tokens (default prompts; captions of "
              f"{cost['mean_words']:.1f} words on average)")
        rows.append(_published.Row(f"`augment --dry-run` estimate: {name}",
                                   f"{numbers['requests']:,} requests, ~{numbers['prompt_tokens'] / 1e6:.1f} M "
                                   f"prompt + ~{numbers['completion_tokens'] / 1e6:.1f} M completion tokens"))
    _published.finish(__file__, rows, args.write_docs)
    if speedup < 5:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
