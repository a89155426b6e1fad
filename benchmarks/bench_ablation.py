"""Ablation on the synthetic data: each training choice of docs/training.md switched on alone against the demo's
configuration (examples/demo-train.yaml: tiny-cnn + the frozen MiniLM, 6 epochs), from the same seed.

For each variant: dev-test mAP@16 on the synthetic multi-relevance file (18 queries, 40 clips) and the training
time per optimizer step against the demo's configuration. Synthetic numbers with a toy model only show that each
switch trains end to end and what it costs; they say nothing of what it is worth on Clotho with PaSST + RoBERTa.
Gradient checkpointing is left out: with tiny-cnn and a frozen text model there is nothing to checkpoint (its
equal gradients and memory are measured by tests/test_gradient_checkpointing.py and bench_checkpointing.py).
``--write-docs`` puts the table into this script's block of docs/speed.md.

    .venv/bin/python benchmarks/bench_ablation.py [--epochs 6] [--seed 0] [--write-docs]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import _published
from dcase_t6.data.layout import Layout
from dcase_t6.data.synthetic import SyntheticConfig, prepare_synthetic
from dcase_t6.embedding.checkpoints import SplitRequest, embed_run
from dcase_t6.retrieval.evaluation import evaluate
from dcase_t6.retrieval.ground_truth import read_ground_truth
from dcase_t6.retrieval.matrices import read_matrix
from dcase_t6.runs.config import build_config
from dcase_t6.training import trainer

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "examples" / "demo-train.yaml"
# (label, --set overrides); the first is the reference every other row is compared with
VARIANTS = [
    ("demo configuration (reference)", {}),
    ("hard-negative batches from the model itself (share 0.5, 8 neighbours)", {"negatives.mining": "self"}),
    ("HN-NCE weighting, hardness 0.5", {"negatives.hardness": "0.5"}),
    ("gradient cache, chunks of 8 (batch 32)", {"grad_cache_chunk": "8"}),
    ("layer-wise lr decay 0.7 (audio encoder)", {"finetune.layer_decay": "0.7"}),
    ("first 2 audio blocks frozen", {"finetune.audio_frozen_blocks": "2"}),
    ("mean pooling", {"model.pooling": "mean"}),
    ("attention pooling", {"model.pooling": "attention"}),
    ("2-layer MLP projection heads", {"model.projection": "mlp"}),
]


def train_and_score(root: Path, workdir: Path, overrides: dict, epochs: int, seed: int) -> tuple[float, float]:
    """mAP@16 on synthetic dev-test and the seconds per optimizer step of one variant."""
    config = build_config(DEMO_CONFIG, {"data_root": str(root), "epochs": str(epochs), "seed": str(seed),
                                        "decay_epochs": str(max(1, epochs - 1)), **overrides})
    start = time.perf_counter()
    outcome = trainer.train_new(workdir, config)
    seconds = time.perf_counter() - start
    embedded = embed_run(workdir, outcome.run, SplitRequest(str(root), "synthetic", "development-testing"))
    relevance = read_ground_truth("ablation", Layout.at(root).relevance_file("synthetic"))
    score = evaluate(read_matrix(embedded.similarity), relevance).scores["mAP@16"]
    return score, seconds / outcome.step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    _published.add_option(parser)
    options = parser.parse_args()
    torch.set_num_threads(1)  # one thread: step times compare with the machine's load left out as far as possible
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root, workdir = Path(folder) / "data", Path(folder) / "work"
        prepare_synthetic(Layout.at(root), SyntheticConfig())
        reference_map = reference_step = None
        for label, overrides in VARIANTS:
            score, step_s = train_and_score(root, workdir, overrides, options.epochs, options.seed)
            if reference_map is None:
                reference_map, reference_step = score, step_s
            print(f"{label:72s} mAP@16 {score:.3f} ({score - reference_map:+.3f})  "
                  f"{step_s:.3f} s/step ({step_s / reference_step:.2f}x)")
            setting = ", ".join(f"{key}={value}" for key, value in overrides.items()) or "examples/demo-train.yaml"
            rows.append(_published.Row(
                f"{label} (`{setting}`)",
                f"mAP@16 {score:.3f} ({score - reference_map:+.3f}); step time {step_s / reference_step:.2f}x",
                "trains end to end"))
    note = (f"seed {options.seed}, {options.epochs} epochs, one thread; synthetic data with a toy model: the numbers "
            "show each switch works, not what it is worth on Clotho")
    _published.finish(__file__, rows, options.write_docs, note=note)
    if options.write_docs is not None:  # the README shows the same table (its block names this script too)
        _published.publish(Path(__file__).name, rows, ROOT / "README.md", note)


if __name__ == "__main__":
    main()
