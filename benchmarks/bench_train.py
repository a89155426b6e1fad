"""Training and embedding throughput on this machine, and the data-loader wait as a share of step time.

Backbones: ``tiny-cnn`` and PaSST (random weights: the pretrained file cannot be downloaded here, the
compute is the same). Text: the tiny random RoBERTa, so the numbers measure the audio side. Data:
a generated synthetic dataset read through the prepared audio cache, as training reads it.
Goal: data-loader wait < 5% of step time. ``--write-docs`` (or ``--write-docs=PAGE``) puts the figures into
this script's block of docs/speed.md.

    .venv/bin/python benchmarks/bench_train.py [--quick] [--write-docs]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import _published
from dcase_t6.data.audio_cache import AudioCache
from dcase_t6.data.cache_build import CacheRequest, build_cache
from dcase_t6.data.layout import Layout
from dcase_t6.data.synthetic import SyntheticConfig, prepare_synthetic
from dcase_t6.embedding.encode import Clips, EncodeSettings, embed_audio
from dcase_t6.models import DualEncoder
from dcase_t6.runs.config import build_config
from dcase_t6.training import losses
from dcase_t6.training.augmentation import PairAugmenter
from dcase_t6.training.data import BatchSource, TrainingData, epoch_batches, load_pairs
from dcase_t6.training.distributed import World

CASES = {"tiny-cnn": {"batch_size": 32, "steps": 8, "seconds": 10.0, "embed": 64},
         "passt": {"batch_size": 2, "steps": 2, "seconds": 10.0, "embed": 4}}
LABELS = {"tiny-cnn": "tiny-cnn", "passt": "PaSST (random weights)"}


def measure(root: Path, backbone: str, batch_size: int, steps: int, seconds: float, embed: int) -> dict:
    config = build_config(None, {"data_root": str(root), "datasets": "synthetic", "model.backbone": backbone,
                                 "model.text_model": "tiny-random", "audio_weights": "random",
                                 "batch_size": batch_size, "audio_seconds": seconds})
    model = DualEncoder(config.model, audio_weights="random")
    build_cache(Layout.at(root), CacheRequest(model.sample_rate, ["synthetic"]))
    store = AudioCache(root, model.sample_rate)
    pairs = load_pairs(config)
    max_samples = int(seconds * model.sample_rate)
    augmenter = PairAugmenter(config, pairs.captions, pairs.clip_ids, pairs.clip_names)
    data = TrainingData(pairs, store, augmenter, max_samples, batch_size, 0, 1, World(), str(root))
    source = BatchSource(data, 0, epoch_batches(len(pairs.captions), batch_size, 0, 0)[:steps + 1])
    loader = iter(torch.utils.data.DataLoader(source, batch_size=None, num_workers=1))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    next(loader)  # warm-up batch (worker start, first allocations)
    wait = compute = 0.0
    for _ in range(steps):
        start = time.perf_counter()
        batch = next(loader)
        loaded = time.perf_counter()
        audio, text = model.encode_audio(batch.waveforms, batch.lengths), model.encode_text(batch.captions)
        losses.multi_positive_infonce(audio, text, batch.clip_ids, batch.clip_ids, 0.05).backward()
        optimizer.step()
        optimizer.zero_grad()
        wait, compute = wait + loaded - start, compute + time.perf_counter() - loaded
    paths = [Path(p) for p in dict.fromkeys(pairs.paths)][:embed]
    start = time.perf_counter()
    embed_audio(model, Clips(paths, store.clip, max_samples), EncodeSettings(16, torch.device("cpu")))
    embed_s = time.perf_counter() - start
    return {"steps_per_s": steps / (wait + compute), "clips_per_s_train": steps * batch_size / (wait + compute),
            "wait_fraction": wait / (wait + compute), "embed_clips_per_s": len(paths) / embed_s}


def main() -> None:
    quick = "--quick" in sys.argv
    document = _published.requested()
    rows = []
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        prepare_synthetic(Layout.at(root), SyntheticConfig(development=64 if quick else 128, validation=4,
                                                            evaluation=4, min_duration=8.0, max_duration=10.0))
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, clips 8-10 s")
        for backbone, case in CASES.items():
            if quick:
                case = {**case, "steps": max(1, case["steps"] // 2)}
            result = measure(root, backbone, **case)
            print(f"{backbone:9s} batch {case['batch_size']:3d}: {result['steps_per_s']:.3f} steps/s "
                  f"({result['clips_per_s_train']:.1f} clips/s), data-loader wait "
                  f"{100 * result['wait_fraction']:.1f}% of step time (goal < 5%: "
                  f"{'met' if result['wait_fraction'] < 0.05 else 'NOT met'}), "
                  f"embedding {result['embed_clips_per_s']:.1f} clips/s")
            rows.append(_published.Row(
                f"training, {LABELS[backbone]}, batch {case['batch_size']}",
                f"{result['steps_per_s']:.2f} steps/s, data-loader wait {100 * result['wait_fraction']:.1f}%; "
                f"embedding {result['embed_clips_per_s']:.3g} clips/s", "wait < 5%"))
    _published.finish(__file__, rows, document)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
