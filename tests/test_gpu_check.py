"""The GPU acceptance run cannot rot: ``benchmarks/gpu_check.py --smoke`` takes every code path of the real run
(the three real audio architectures with roberta-large's widths, training through the builder and loop of
``dcase-t6 train``, ``embed``, the compiled run, torchrun with 2 processes, and the recipe and resume checks:
SID 3, SID 4, a CPU-started resume and a deterministic resume on 2 processes) on the CPU, one step each (three
or four for the checks), and writes a JSON report with every field and two markdown tables."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
BACKBONES = ("passt", "beats", "eat")
TRAINING_FIELDS = ("status", "cap_s", "wall_s", "build_s", "device", "parameters", "workers", "steps", "warmup_steps",
                   "timed_steps", "steps_per_s", "pairs_per_s", "median_step_s", "data_wait_share", "losses",
                   "steps_done", "peak_gpu_memory_gib", "peak_host_memory_gib", "warmup_s")
CHECKS = ("sid3", "sid4", "resume-cpu", "deterministic-resume")
CHECK_NAMES = ["passt/sid3", "passt/sid4", "passt/resume-cpu", "passt/deterministic-resume/2"]


@pytest.mark.slow
def test_smoke_run_measures_every_backbone_trained_compiled_embedded_and_under_torchrun(tmp_path):
    json_path, markdown_path = tmp_path / "out" / "gpu-check.json", tmp_path / "out" / "gpu-check.md"
    finished = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--json", str(json_path), "--markdown",
                               str(markdown_path), "--workdir", str(tmp_path / "work")], capture_output=True, text=True,
                              timeout=2700, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert finished.returncode == 0, (finished.stdout + finished.stderr)[-4000:]
    assert not (tmp_path / "work").exists()  # the work folder (data, GBs of checkpoints) is removed
    check_smoke_report(json.loads(json_path.read_text(encoding="utf-8")), markdown_path.read_text(encoding="utf-8"))


def check_smoke_report(report: dict, markdown: str) -> None:
    """Every field of a --smoke report, with sane values."""
    environment = report["environment"]
    assert environment["torch"] == torch.__version__ and environment["cuda"] == torch.version.cuda
    assert environment["gpus"] == 0 and environment["cards"] == [] and environment["device"].startswith("CPU")
    assert environment["code_version"].startswith("0.") and environment["cpu_cores"] >= 1
    settings = report["settings"]
    assert settings["smoke"] and settings["batch_size"] == 2 and settings["text_layers"] == 2
    assert settings["compile_backend"] == "aot_eager" and settings["processes"] == 2
    assert 0 < report["setup_s"] < report["total_s"] <= settings["budget_s"]

    assert settings["checks"] == list(CHECKS) and settings["check_batch"] == 4 and settings["check_steps"] == 3
    measurements = {item["name"]: item for item in report["measurements"]}
    expected = [f"{b}/train" for b in BACKBONES] + [f"{b}/compiled" for b in BACKBONES] + ["passt/distributed/2"]
    assert list(measurements) == CHECK_NAMES + expected
    check_checks(measurements, report["checks"], markdown)
    for name, item in ((name, measurements[name]) for name in expected):
        assert item["status"] == "ok", (name, item.get("error"), item.get("log_tail"))
        assert [field for field in TRAINING_FIELDS if field not in item] == [], name
        assert item["steps_done"] == item["steps"] == 1 and item["timed_steps"] == 1 and item["warmup_steps"] == 0
        assert 0 < item["steps_per_s"] < 100 and item["pairs_per_s"] == pytest.approx(2 * item["steps_per_s"], abs=1e-3)
        assert 0 < item["median_step_s"] <= item["wall_s"] <= item["cap_s"]
        assert 0 <= item["data_wait_share"] <= 1 and item["device"] == "cpu"
        assert item["peak_gpu_memory_gib"] is None and 0.1 < item["peak_host_memory_gib"] < 64
        assert len(item["losses"]) == 1 and all(math.isfinite(loss) and loss > 0 for loss in item["losses"])
        assert item["parameters"] > 100_000_000  # the real audio architecture + roberta-large's widths (2 layers)
        assert item["processes"] == (2 if item["kind"] == "distributed" else 1)
    for backbone in BACKBONES:
        embedded = measurements[f"{backbone}/train"]
        assert embedded["embed_clips"] == 2 and embedded["embed_clips_per_s"] > 0 and embedded["embed_finite"]
        assert measurements[f"{backbone}/compiled"]["graphs_compiled"] >= 1
        assert "embed_clips_per_s" not in measurements[f"{backbone}/compiled"]
    checkpoint = measurements["passt/train"]
    assert checkpoint["checkpoint_s"] > 0 and checkpoint["checkpoint_gib"] > 0.5  # weights + AdamW state

    summary = {row["backbone"]: row for row in report["summary"]}
    assert list(summary) == list(BACKBONES)
    for backbone, row in summary.items():
        item, compiled = measurements[f"{backbone}/train"], measurements[f"{backbone}/compiled"]
        assert (row["steps_per_s"], row["embed_clips_per_s"]) == (item["steps_per_s"], item["embed_clips_per_s"])
        assert row["compile_speedup"] == pytest.approx(compiled["steps_per_s"] / item["steps_per_s"], abs=1e-3)
    assert summary["passt"]["scaling"] == pytest.approx(
        measurements["passt/distributed/2"]["steps_per_s"] / measurements["passt/train"]["steps_per_s"], abs=1e-3)
    assert summary["beats"]["scaling"] is None

    table = markdown.splitlines()
    assert table[0].startswith("GPU acceptance run (`benchmarks/gpu_check.py` --smoke)")
    rows = [line for line in table if line.startswith("| ") and line.split("|")[1].strip() in BACKBONES]
    assert [row.split("|")[1].strip() for row in rows] == list(BACKBONES)
    assert all(len(row.split("|")) == 10 for row in rows)


def check_checks(measurements: dict, rows: list[dict], markdown: str) -> None:
    """The recipe and resume checks: each passed, with the numbers that show what it checked."""
    for name in CHECK_NAMES:
        item = measurements[name]
        assert item["status"] == "ok" and item["passed"] and item["problems"] == [], (name, item.get("error"),
                                                                                      item.get("log_tail"))
        assert item["backbone"] == "passt" and item["device"] == "cpu" and 0 < item["wall_s"] <= item["cap_s"]
        assert item["processes"] == (2 if item["kind"] == "deterministic-resume" else 1)
    for name, terms in (("passt/sid3", {"loss", "contrastive", "distillation"}),
                        ("passt/sid4", {"loss", "contrastive", "cluster"})):
        item = measurements[name]
        assert item["steps_done"] == item["steps"] == 3 and item["batch_size"] == 4 and item["losses_finite"]
        assert set(item["loss_terms"]) == terms and all(len(values) == 3 for values in item["loss_terms"].values())
        assert all(math.isfinite(value) and value > 0 for values in item["loss_terms"].values() for value in values)
        assert item["steps_per_s"] > 0 and item["build_s"] > 0 and item["parameters"] > 100_000_000
        assert item["pairs_seen"] == 12
    sid3, sid4 = measurements["passt/sid3"], measurements["passt/sid4"]
    assert sid3["teacher_status"] == "finished" and sid3["teacher_steps"] == 1 and sid3["teacher_s"] > 0
    assert 0 < sid3["mixed_pairs"] < 12 and sid3["edited_captions"] > 0 and sid3["cluster_classes"] == 0
    assert sid4["cluster_classes"] == 8 and sid4["mixed_pairs"] == sid4["edited_captions"] == 0
    resumed = measurements["passt/resume-cpu"]
    assert (resumed["cpu_status"], resumed["cpu_steps"]) == ("stopped", 1) and resumed["cpu_scaler_state"] == {}
    assert (resumed["resumed_status"], resumed["resumed_steps"], resumed["resumed_device"]) == ("stopped", 2, "cpu")
    assert resumed["epoch_batches"] == 2 and math.isfinite(resumed["mean_loss"]) and resumed["batch_size"] == 4
    assert resumed["resumed_scaler_state"] == {}  # resumed on the CPU too: fp32, no scaler
    deterministic = measurements["passt/deterministic-resume/2"]
    steps = (deterministic["uninterrupted_steps"], deterministic["stopped_at"], deterministic["resumed_steps"])
    assert steps == (4, 2, 4)
    assert deterministic["max_abs_weight_difference"] == 0 and deterministic["differing_tensors"] == 0
    assert deterministic["loss_sum_difference"] == 0 and deterministic["same_position"]
    assert deterministic["tensors"] > 100 and min(deterministic[f"{part}_s"] for part in
                                                  ("uninterrupted", "stopped", "resume")) > 0

    assert [row["check"] for row in rows] == list(CHECKS)
    assert all(row["passed"] and row["status"] == "ok" and row["detail"] for row in rows)
    assert [row["processes"] for row in rows] == [1, 1, 1, 2]
    table = markdown.splitlines()
    assert any(line.startswith("Recipe and resume checks: PaSST") for line in table)
    lines = [line for line in table if line.startswith("| ") and line.split("|")[1].strip() in CHECKS]
    assert [line.split("|")[1].strip() for line in lines] == list(CHECKS)
    assert all(len(line.split("|")) == 8 and line.split("|")[3].strip() == "pass" for line in lines)
    assert "max abs weight difference 0 " in lines[3] and "2 processes under torchrun" in lines[3]
