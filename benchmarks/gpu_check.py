"""GPU acceptance run: the real architectures trained through the project's own builder and loop, timed.

For each audio backbone (passt, beats, eat; random weights, the published architectures) with the
roberta-large architecture (random weights from a RobertaConfig of roberta-large's sizes and a byte-level BPE
tokenizer trained here on the captions: nothing is downloaded), batch 64, ``--precision fp16``, PaSST's
patchout 15/2, generated clips of Clotho's length mix (15-30 s, uniform), a fixed number of optimizer steps
after warm-up:

* training (compile off, 1 GPU): steps/s, pairs/s, peak GPU memory (``torch.cuda.max_memory_allocated``) and
  the data-loader wait as a share of step time; for passt also one ``last.pt`` of the real size, written
  and timed;
* ``embed`` in eval mode (``embedding.encode.embed_audio``, what ``dcase-t6 embed`` calls, batch 32): clips/s;
* training with config key ``compile: on`` (inductor): steps/s, and the warm-up time that pays for compiling;
* with 2 or more GPUs: the same training under ``torchrun --nproc_per_node N`` (global batch 64), and its
  steps/s over 1 GPU's.

Training goes through ``training.builder.build_training`` and ``training.loop.TrainingLoop``, what
``dcase-t6 train`` runs, with two changes: a sink that times every optimizer step (``log_every`` 1), and no
checkpoint writes except the one timed (a ``last.pt`` of PaSST + roberta-large with AdamW's state is about
5 GB: tens of seconds per measurement that say nothing about step speed).

Each measurement runs in its own process (torchrun for N GPUs) under its own time cap: its share of the
time left of ``--budget-s`` (default 450 s, so the whole run ends within 8 minutes; a compiled run's share
is twice the others'). A measurement that reaches its cap is killed and keeps the steps it had finished.
The card (``torch.cuda.get_device_name``), torch, CUDA and cuDNN versions and the code version are
recorded. Written: ``--json`` (everything) and ``--markdown`` (one table), by default under ``results/``.

Before them, the recipe and resume checks (pass/fail, PaSST only, small: batch 16, crops of 10 s, roberta-large's
widths with 4 layers, 3 steps; each in its own process under its own cap, ``CHECK_CAPS_S``):

* ``sid3`` (the AISTAT 2025 recipe's SID 3): a teacher trained for one epoch of 1 step (on the 10 pairs of the
  validation split) and registered, then a student with ``init_from`` and ``distill_from`` it (the teacher embeds
  the training split on the GPU), ``audio_mix.p`` 0.5 with a merged-captions CSV made from the synthetic captions,
  and ``caption_augmentation`` (word deletion and WordNet synonyms, p 0.5): its loss terms finite, the pairs mixed
  and the captions edited, steps/s;
* ``sid4``: ``clusters.method`` kmeans (8 clusters of the captions' embeddings by the text model), weight 0.05: the
  cluster term finite at every step;
* ``resume-cpu``: ``train`` with ``--precision fp16`` for 1 step on the CPU (fp32 there; its checkpoint holds the
  disabled scaler's empty state), then ``train --resume`` (``trainer.resume``) on the GPU for 1 more step;
* ``deterministic-resume``: ``deterministic: true``, 4 steps uninterrupted against 2 steps, stopped, and resumed to
  4 (under ``torchrun --nproc_per_node N`` with 2 or more GPUs, else 1 process): the largest absolute difference
  of the final weights (0 expected) and of the epoch's summed loss.

Each is recorded with its numbers in the JSON (``checks``) and a second markdown table.

``--smoke`` (no GPU needed; ``tests/test_gpu_check.py`` runs it on the CPU) takes the same code paths
small: 1 step (timed from the loop's start: no warm-up), batch 2, clips of 3-5 s, roberta-large's widths
with 2 layers instead of 24, the compiled run with backend ``aot_eager`` instead of inductor (inductor's C++ code
generation for these layers takes minutes on a CPU), and ``torchrun`` with 2 CPU processes (gloo) for passt
only; the checks with batch 4, ``resume-cpu`` resuming on the CPU and ``deterministic-resume`` on 2 CPU processes.

    .venv/bin/python benchmarks/gpu_check.py                          # make gpu-check
    .venv/bin/python benchmarks/gpu_check.py --smoke --json /tmp/smoke.json --markdown /tmp/smoke.md
    .venv/bin/python benchmarks/gpu_check.py --backbones '' --json /tmp/checks.json --markdown /tmp/checks.md
                                                                        # the recipe and resume checks only
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dcase_t6.models.text import ROBERTA_LARGE_SIZES, save_random_roberta

STARTED = time.perf_counter()
BACKBONES = ("passt", "beats", "eat")
CAPTIONS_PER_CLIP = 5  # Clotho's layout, which the synthetic dataset follows
EMBED_BATCH = 32  # `dcase-t6 embed --batch-size`'s default
# Shares of the time left that a measurement's cap gets: a compiled run also pays for compiling.
SHARES = {"train": 1.0, "compiled": 2.0, "distributed": 1.0}
RESERVE_S = 10.0  # kept back from the budget for writing the outputs and removing the work folder
# The recipe and resume checks (PaSST only), run first, each with its own cap on a GPU: about 90 s in all expected.
CHECKS = ("sid3", "sid4", "resume-cpu", "deterministic-resume")
CHECK_CAPS_S = {"sid3": 60.0, "sid4": 40.0, "resume-cpu": 60.0, "deterministic-resume": 60.0}
VALIDATION_CLIPS = 2  # of the generated dataset: the sid3 teacher's one epoch is its 10 pairs, 1 step
CHECK_CLUSTERS = 8  # sid4's kmeans clusters
CPU_BATCH = 4  # resume-cpu's batch: its first step is on the CPU
DETERMINISTIC_STEPS, STOPPED_AT = 4, 2  # deterministic-resume: 4 steps uninterrupted, or 2, stop, resume to 4


@dataclass(frozen=True)
class Settings:
    """What the run measures with (the full run's, or the smoke run's reductions)."""

    smoke: bool
    batch_size: int
    warmup_steps: int
    compile_warmup_steps: int
    timed_steps: int
    min_clip_s: float
    max_clip_s: float
    text_layers: int
    embed_clips: int
    embed_batch: int
    compile_backend: str | None  # None: what config key compile: on uses (inductor)
    workers: int
    processes: int  # 1, or N for the torchrun measurements
    distributed_backbones: tuple[str, ...]
    backbones: tuple[str, ...]
    budget_s: float
    min_cap_s: float
    checks: tuple[str, ...]  # the recipe and resume checks to run (CHECKS)
    check_batch: int
    check_steps: int
    check_seconds: float  # the checks' audio_seconds (crops)
    check_text_layers: int

    @classmethod
    def of(cls, arguments: argparse.Namespace, gpus: int) -> Settings:
        backbones = tuple(name for name in arguments.backbones.split(",") if name)
        checks = tuple(name for name in arguments.checks.split(",") if name and name != "none")
        unknown = [name for name in checks if name not in CHECKS]
        if unknown:
            sys.exit(f"gpu_check: unknown check {unknown[0]!r}; the checks are {', '.join(CHECKS)} (or none)")
        cores = os.cpu_count() or 2
        if arguments.smoke:
            return cls(smoke=True, batch_size=2, warmup_steps=0, compile_warmup_steps=0, timed_steps=1,
                       min_clip_s=3.0, max_clip_s=5.0, text_layers=2, embed_clips=4, embed_batch=2,
                       compile_backend="aot_eager", workers=1, processes=2,
                       distributed_backbones=tuple(b for b in backbones if b == "passt"), backbones=backbones,
                       budget_s=arguments.budget_s or 2400.0, min_cap_s=60.0, checks=checks, check_batch=4,
                       check_steps=3, check_seconds=5.0, check_text_layers=2)
        processes = arguments.gpus or gpus
        return cls(smoke=False, batch_size=arguments.batch_size, warmup_steps=arguments.warmup,
                   compile_warmup_steps=arguments.compile_warmup, timed_steps=arguments.steps, min_clip_s=15.0,
                   max_clip_s=30.0, text_layers=ROBERTA_LARGE_SIZES["num_hidden_layers"], embed_clips=5 * EMBED_BATCH,
                   embed_batch=EMBED_BATCH, compile_backend=None, workers=max(2, min(6, cores // 2 - 1)),
                   processes=processes, distributed_backbones=backbones if processes >= 2 else (),
                   backbones=backbones, budget_s=arguments.budget_s or 450.0, min_cap_s=20.0, checks=checks,
                   check_batch=16, check_steps=3, check_seconds=10.0, check_text_layers=4)

    def pairs_needed(self) -> int:
        """Training pairs for every step of a measurement (or check) within one epoch (no validation, no epoch
        end), plus one batch."""
        steps = max(self.warmup_steps, self.compile_warmup_steps) + self.timed_steps + 1
        return max(self.batch_size * steps, self.check_batch * (max(self.check_steps, DETERMINISTIC_STEPS) + 1))


@dataclass(frozen=True)
class Measurement:
    """One process (or torchrun job) to run: a backbone trained eagerly, compiled, or on N processes, or one of
    the recipe and resume checks (CHECKS, passt)."""

    backbone: str
    kind: str  # train (1 process, compile off, with embed), compiled (1 process), distributed (N processes), CHECKS
    processes: int

    @property
    def name(self) -> str:
        several = self.kind in ("distributed", "deterministic-resume")
        return f"{self.backbone}/{self.kind}" + (f"/{self.processes}" if several else "")


# ----------------------------------------------------------------------------------------------- orchestration


def main() -> None:
    arguments = _arguments()
    if arguments.worker:
        worker(json.loads(Path(arguments.worker).read_text(encoding="utf-8")))
        return
    gpus = torch.cuda.device_count()
    if not gpus and not arguments.smoke:
        sys.exit("gpu_check: no CUDA GPU is visible here; on a CPU run the small version with --smoke")
    settings = Settings.of(arguments, gpus)
    deadline = STARTED + settings.budget_s
    workdir = Path(arguments.workdir or tempfile.mkdtemp(prefix="gpu-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report = {"environment": environment(gpus), "settings": dataclasses.asdict(settings), "setup_s": None,
              "measurements": [], "summary": [], "checks": [], "total_s": None}
    try:
        start = time.perf_counter()
        data_root, text_model, check_text_model = prepare(workdir, settings)
        report["setup_s"] = round(time.perf_counter() - start, 1)
        print(f"setup (data, caches, text models): {report['setup_s']} s", flush=True)
        plan = measurement_plan(settings)
        for index, measurement in enumerate(plan):
            left = deadline - time.perf_counter() - RESERVE_S
            after = len(plan) - index - 1
            if settings.smoke:  # all it may take, the later measurements' minimum caps kept back
                cap = left - settings.min_cap_s * after
            elif measurement.kind in CHECKS:  # its own cap (they come first), the later minimum caps kept back
                cap = min(CHECK_CAPS_S[measurement.kind], left - settings.min_cap_s * after)
            else:  # its share of the time left
                cap = left * SHARES[measurement.kind] / sum(SHARES[later.kind] for later in plan[index:])
            model = check_text_model if measurement.kind in CHECKS else text_model
            result = run_measurement(measurement, settings, cap, workdir, data_root, model)
            report["measurements"].append(result)
            print(f"{measurement.name}: {_brief(result)}", flush=True)
            report["summary"] = summarise(report["measurements"], settings)
            report["checks"] = summarise_checks(report["measurements"])
            report["total_s"] = round(time.perf_counter() - STARTED, 1)
            write_outputs(report, Path(arguments.json), Path(arguments.markdown))
    finally:
        if not arguments.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report["total_s"] = round(time.perf_counter() - STARTED, 1)
    write_outputs(report, Path(arguments.json), Path(arguments.markdown))
    print(markdown(report))
    print(f"written: {arguments.json}, {arguments.markdown} ({report['total_s']} s in all)")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="results/gpu-check.json", help="JSON output (results/gpu-check.json).")
    parser.add_argument("--markdown", default="results/gpu-check.md", help="Markdown table (results/gpu-check.md).")
    parser.add_argument("--smoke", action="store_true", help="The small version of every code path (a CPU will do).")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="Seconds for the whole run, setup included (450; --smoke 1500).")
    parser.add_argument("--backbones", default=",".join(BACKBONES),
                        help="Comma-separated (passt,beats,eat); '' for the checks only.")
    parser.add_argument("--checks", default=",".join(CHECKS),
                        help=f"The recipe and resume checks, comma-separated ({','.join(CHECKS)}); none to skip them.")
    parser.add_argument("--gpus", type=int, default=None, help="Processes of the torchrun runs (all GPUs).")
    parser.add_argument("--batch-size", type=int, default=64, help="Global batch (64, the baseline's).")
    parser.add_argument("--steps", type=int, default=10, help="Timed optimizer steps per measurement (10).")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps first (2).")
    parser.add_argument("--compile-warmup", type=int, default=3,
                        help="Untimed steps first with compile on: compiling, and recompiling once for the "
                             "batch shapes that vary (3).")
    parser.add_argument("--workdir", help="Work folder (default: a temporary folder, removed at the end).")
    parser.add_argument("--keep", action="store_true", help="Keep the work folder (data, logs, runs).")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args()


def environment(gpus: int) -> dict:
    """Where the numbers come from: the cards, torch, CUDA, cuDNN, Python, CPU cores and the code version."""
    from dcase_t6.runs.records import code_version

    cards = []
    for index in range(gpus):
        properties = torch.cuda.get_device_properties(index)
        cards.append({"name": torch.cuda.get_device_name(index), "capability": f"{properties.major}.{properties.minor}",
                      "memory_gib": round(properties.total_memory / 2**30, 1)})
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "gpus": gpus, "cards": cards,
            "device": cards[0]["name"] if cards else f"CPU ({platform.processor() or platform.machine()})",
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if gpus else None, "python": platform.python_version(),
            "cpu_cores": os.cpu_count(), "code_version": code_version()}


def prepare(workdir: Path, settings: Settings) -> tuple[Path, Path, Path]:
    """The generated dataset with its audio caches at 32 and 16 kHz, and the roberta-large architecture in a
    local folder (random weights, the hub model's pooler, a tokenizer trained on the dataset's captions), and with
    the checks' number of layers in another (the same folder when the numbers agree)."""
    from dcase_t6.data.cache_build import CacheRequest, build_cache
    from dcase_t6.data.layout import Layout
    from dcase_t6.data.split_index import read_index
    from dcase_t6.data.synthetic import SyntheticConfig, prepare_synthetic
    from dcase_t6.models import audio as audio_backbones

    data_root = workdir / "data"
    clips = max(math.ceil(settings.pairs_needed() / CAPTIONS_PER_CLIP), settings.embed_clips)
    prepare_synthetic(Layout.at(data_root), SyntheticConfig(development=clips, validation=VALIDATION_CLIPS,
                                                             evaluation=1, min_duration=settings.min_clip_s,
                                                             max_duration=settings.max_clip_s))
    backbones = {*settings.backbones, *(["passt"] if settings.checks else [])}
    for rate in sorted({audio_backbones.sample_rate(backbone) for backbone in backbones}):
        build_cache(Layout.at(data_root), CacheRequest(rate, ["synthetic"], workers=max(1, settings.workers)))
    captions = read_index(data_root, "synthetic")["caption"].tolist()
    text_model = save_roberta_large_architecture(workdir / "roberta-large-architecture", captions,
                                                 settings.text_layers)
    check_text_model = text_model
    if settings.checks and settings.check_text_layers != settings.text_layers:
        check_text_model = save_roberta_large_architecture(
            workdir / f"roberta-large-architecture-{settings.check_text_layers}-layers", captions,
            settings.check_text_layers)
    return data_root, text_model, check_text_model


def save_roberta_large_architecture(folder: Path, captions: list[str], layers: int) -> Path:
    """roberta-large's architecture as ``save_pretrained`` writes it (``RobertaModel`` with its pooler, as the
    hub checkpoint has it), with random weights and ``layers`` layers, and a byte-level BPE tokenizer with
    roberta's special tokens trained on ``captions`` (so a caption is about as many tokens as with roberta's)."""
    return save_random_roberta(folder, captions, tokenizer_vocabulary=4000,
                               **{**ROBERTA_LARGE_SIZES, "num_hidden_layers": layers})


def measurement_plan(settings: Settings) -> list[Measurement]:
    """The recipe and resume checks first (fixed caps: what they leave goes to the rest), then eager training (with
    embed) of every backbone, then compiled, then on N processes."""
    plan = [Measurement("passt", check, settings.processes if check == "deterministic-resume" else 1)
            for check in settings.checks]
    plan += [Measurement(backbone, "train", 1) for backbone in settings.backbones]
    plan += [Measurement(backbone, "compiled", 1) for backbone in settings.backbones]
    return plan + [Measurement(backbone, "distributed", settings.processes)
                   for backbone in settings.distributed_backbones]


def run_measurement(measurement: Measurement, settings: Settings, cap_s: float, workdir: Path, data_root: Path,
                    text_model: Path) -> dict:
    """Run one measurement in its own process (group) for at most ``cap_s`` seconds; what it recorded."""
    folder = workdir / "runs" / measurement.name.replace("/", "-")
    folder.mkdir(parents=True, exist_ok=True)
    result_path, log_path = folder / "result.json", workdir / "logs" / f"{folder.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    base = {"name": measurement.name, "backbone": measurement.backbone, "kind": measurement.kind,
            "processes": measurement.processes, "cap_s": round(cap_s, 1)}
    if cap_s < settings.min_cap_s:
        return {**base, "status": "skipped", "error": f"budget spent: {cap_s:.0f} s left for it"}
    spec = (check_spec if measurement.kind in CHECKS else worker_spec)(measurement, settings, folder, result_path,
                                                                       data_root, text_model)
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    script = str(Path(__file__).resolve())
    command = [sys.executable, script, "--worker", str(spec_path)]
    if measurement.processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                   str(measurement.processes), script, "--worker", str(spec_path)]
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = process.wait(timeout=cap_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the job, its ranks and loader workers
            process.wait()
            returncode = None
    recorded = json.loads(result_path.read_text(encoding="utf-8")) if result_path.exists() else {}
    result = {**base, **recorded, "wall_s": round(time.perf_counter() - start, 1)}
    if returncode is None:
        result["status"] = "cap reached"
    elif returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or ["no output"]
        result.update(status="failed", error=f"exit code {returncode}: {tail[0][-300:]}")
    if result.get("status") != "ok":
        result["log_tail"] = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
    shutil.rmtree(folder, ignore_errors=True)  # checkpoints and registry of the run: GBs, not needed any more
    return result


def worker_spec(measurement: Measurement, settings: Settings, folder: Path, result_path: Path, data_root: Path,
                text_model: Path) -> dict:
    """What the worker process trains and measures: the run's config (the keys `dcase-t6 train` takes) and
    the step counts."""
    compiled = measurement.kind == "compiled"
    warmup = settings.compile_warmup_steps if compiled else settings.warmup_steps
    workers = settings.workers if measurement.processes == 1 else max(1, settings.workers // measurement.processes)
    config = {"name": f"gpu-check-{measurement.backbone}-{measurement.kind}", "data_root": str(data_root),
              "datasets": ["synthetic"], "audio_weights": "random", "batch_size": settings.batch_size,
              "precision": "fp16", "epochs": 1, "max_steps": warmup + settings.timed_steps, "workers": workers,
              "log": "none", "log_every": 1, "audio_seconds": 30.0,
              "compile": "on" if compiled and settings.compile_backend is None else "off",
              "model": {"backbone": measurement.backbone, "text_model": str(text_model), "patchout_t": 15,
                        "patchout_f": 2}}
    return {"config": config, "workdir": str(folder / "work"), "result": str(result_path),
            "warmup_steps": warmup, "timed_steps": settings.timed_steps,
            "compile_backend": settings.compile_backend if compiled else None,
            "embed_clips": settings.embed_clips if measurement.kind == "train" else 0,
            "embed_batch": settings.embed_batch, "checkpoint": measurement.kind == "train"
            and measurement.backbone == "passt"}


def check_spec(measurement: Measurement, settings: Settings, folder: Path, result_path: Path, data_root: Path,
               text_model: Path) -> dict:
    """What a check's worker runs: the check, and the config its runs start from (the keys `dcase-t6 train`
    takes: PaSST, ``text_model`` with the checks' layers, fp16, compile off, crops of ``check_seconds``; every run
    but the sid3 teacher's stops at max_steps within its first epoch, so none validates)."""
    workers = settings.workers if measurement.processes == 1 else max(1, settings.workers // measurement.processes)
    batch = min(CPU_BATCH, settings.check_batch) if measurement.kind == "resume-cpu" else settings.check_batch
    config = {"name": f"gpu-check-{measurement.kind}", "data_root": str(data_root), "datasets": ["synthetic"],
              "audio_weights": "random", "batch_size": batch, "precision": "fp16", "epochs": 1,
              "max_steps": settings.check_steps, "workers": workers, "log": "none", "log_every": 1,
              "audio_seconds": settings.check_seconds, "compile": "off",
              "model": {"backbone": measurement.backbone, "text_model": str(text_model), "patchout_t": 15,
                        "patchout_f": 2}}
    return {"check": measurement.kind, "config": config, "workdir": str(folder / "work"), "result": str(result_path),
            "text_model": str(text_model)}


# ------------------------------------------------------------------------------------------------- the worker


class Recorder:
    """The measurement's numbers, written (atomically, by the main process) after every step and at the end, so
    a process killed at its cap leaves what it had measured."""

    def __init__(self, spec: dict, is_main: bool):
        self.path, self.is_main = Path(spec["result"]), is_main
        self.values: dict = {"status": "running"}

    def update(self, **values) -> None:
        self.values.update(values)
        if self.is_main:
            from dcase_t6.common.jsonfile import write_json

            write_json(self.values, self.path)


class StepClock:
    """A training sink (``log_every`` 1) that times every optimizer step and reads its data-loader wait; after
    ``warmup`` steps it records steps/s, pairs/s, the median step and the data-loader wait share."""

    def __init__(self, recorder: Recorder, warmup: int, batch_size: int, device: torch.device):
        self.recorder, self.warmup, self.batch_size, self.device = recorder, warmup, batch_size, device
        self.start = self.last = time.perf_counter()
        self.timed: list[dict] = []
        self.losses: list[float] = []

    def write(self, epoch: int, record: dict, improved: bool) -> None:
        """Epoch records: none come (the run stops at max_steps within its first epoch)."""

    def write_step(self, step: int, record: dict) -> None:
        _synchronise(self.device)
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        self.losses.append(round(float(record["train_loss"]), 5))
        if step == self.warmup:
            self.recorder.update(warmup_s=round(now - self.start, 2), losses=self.losses)
        elif step == 1 and not self.warmup:  # --smoke: the one step is timed from the loop's start
            self.recorder.update(warmup_s=0.0)
        if step <= self.warmup:
            return
        self.timed.append({"seconds": seconds, "wait_s": float(record["data_wait_fraction"]) * seconds})
        elapsed = sum(item["seconds"] for item in self.timed)
        steps_per_s = len(self.timed) / elapsed
        self.recorder.update(timed_steps=len(self.timed), steps_per_s=round(steps_per_s, 4),
                             pairs_per_s=round(steps_per_s * self.batch_size, 4),
                             median_step_s=round(statistics.median(item["seconds"] for item in self.timed), 4),
                             data_wait_share=round(sum(item["wait_s"] for item in self.timed) / elapsed, 4),
                             losses=self.losses, graphs_compiled=_graphs_compiled())

    def close(self, status: str) -> None:
        pass


class TimedCheckpoints:
    """Stands in for the run's checkpointer: writes through ``real`` (timed, its size recorded, then deleted) or,
    without one, writes nothing."""

    def __init__(self, real, recorder: Recorder):
        self.real, self.recorder = real, recorder

    def save_last(self, model, optimizer, scaler, position) -> None:
        if self.real is None or not self.real.is_main:
            return
        start = time.perf_counter()
        self.real.save_last(model, optimizer, scaler, position)
        path = self.real.directory / "last.pt"
        self.recorder.update(checkpoint_s=round(time.perf_counter() - start, 2),
                             checkpoint_gib=round(path.stat().st_size / 2**30, 3))
        path.unlink()

    def save_best(self, model, position, record) -> None:
        pass


def worker(spec: dict) -> None:
    """Train one measurement's run through the builder and loop of `dcase-t6 train`; record what it measured."""
    if spec.get("check"):
        check_worker(spec)
        return
    import torch.distributed as dist

    from dcase_t6.embedding.encode import Clips, EncodeSettings, embed_audio
    from dcase_t6.runs.config import from_dict
    from dcase_t6.runs.registry import Registry
    from dcase_t6.training.builder import build_training
    from dcase_t6.training.distributed import init_world, share_from_main
    from dcase_t6.training.loop import TrainingLoop
    from dcase_t6.training.trainer import register_run

    world = init_world()
    recorder = Recorder(spec, world.is_main)
    config = from_dict(spec["config"], source="gpu_check")
    registry = Registry(spec["workdir"])
    run_id = share_from_main(register_run(registry, config) if world.is_main else None, world)
    start = time.perf_counter()
    setup = build_training(config, registry, run_id, world)
    if spec["compile_backend"]:  # --smoke: the compiled run's backend (config key compile: on uses inductor)
        setup.model.compile_encoders(backend=spec["compile_backend"])
    recorder.update(build_s=round(time.perf_counter() - start, 2), device=str(world.device),
                    parameters=setup.model.parameter_count(), workers=config.workers,
                    steps=config.max_steps, warmup_steps=spec["warmup_steps"])
    real_checkpointer = setup.checkpointer if spec["checkpoint"] else None
    setup = dataclasses.replace(setup, checkpointer=TimedCheckpoints(real_checkpointer, recorder))
    clock = StepClock(recorder, spec["warmup_steps"], config.batch_size, world.device)
    if world.is_main:
        setup.sinks.append(clock)
    if world.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(world.device)
    position = TrainingLoop(setup, None).run()
    recorder.update(steps_done=position.step, peak_gpu_memory_gib=_peak_gpu_memory_gib(world),
                    peak_host_memory_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3))
    if spec["embed_clips"]:
        paths = list(dict.fromkeys(setup.data.pairs.paths))[:spec["embed_clips"]]
        batch, store, samples = spec["embed_batch"], setup.data.store, setup.data.max_samples
        settings = EncodeSettings(batch, world.device)
        embed_audio(setup.model, Clips(paths[:batch], store.clip, samples), settings)  # warm-up batch
        _synchronise(world.device)
        start = time.perf_counter()
        vectors = embed_audio(setup.model, Clips(paths[batch:], store.clip, samples), settings)
        _synchronise(world.device)
        seconds = time.perf_counter() - start
        recorder.update(embed_clips=len(vectors), embed_clips_per_s=round(len(vectors) / seconds, 2),
                        embed_finite=bool(torch.isfinite(torch.from_numpy(vectors)).all()))
    recorder.update(status="ok")
    if world.size > 1:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ the checks' worker


def check_worker(spec: dict) -> None:
    """Run one recipe or resume check (``spec["check"]``) through the library `dcase-t6 train` runs; record its
    numbers, and ``status`` ok or failed with the problems found."""
    import torch.distributed as dist

    from dcase_t6.training.distributed import init_world

    world = init_world()
    recorder = Recorder(spec, world.is_main)
    recorder.update(device=str(world.device))
    start = time.perf_counter()
    problems = CHECK_RUNS[spec["check"]](spec, world, recorder)
    recorder.update(check_s=round(time.perf_counter() - start, 2), passed=not problems, problems=problems)
    if problems:
        recorder.update(status="failed", error="; ".join(problems))
    else:
        recorder.update(status="ok")
    if world.size > 1:
        dist.destroy_process_group()


class TermLog:
    """A training sink (``log_every`` 1) that records every step's loss and loss terms (``train_<term>``) and the
    steps/s of the steps after the first (which also pays for starting the loader)."""

    def __init__(self, recorder: Recorder, device: torch.device):
        self.recorder, self.device = recorder, device
        self.start = time.perf_counter()
        self.times: list[float] = []
        self.terms: dict[str, list[float]] = {}

    def write(self, epoch: int, record: dict, improved: bool) -> None:
        """Epoch records: none come (the runs stop at max_steps within their first epoch)."""

    def write_step(self, step: int, record: dict) -> None:
        _synchronise(self.device)
        self.times.append(time.perf_counter())
        for key, value in record.items():
            if key.startswith("train_"):
                self.terms.setdefault(key.removeprefix("train_"), []).append(round(float(value), 5))
        elapsed = self.times[-1] - (self.times[0] if len(self.times) > 1 else self.start)
        self.recorder.update(steps_done=step, loss_terms=self.terms,
                             losses_finite=all(math.isfinite(v) for values in self.terms.values() for v in values),
                             steps_per_s=round(max(1, len(self.times) - 1) / elapsed, 4))

    def close(self, status: str) -> None:
        pass


class AugmentationCount:
    """Stands in for the run's objective (the same terms, computed by it) and counts, in the batches it is given,
    the pairs mixed with a partner clip and the unmixed pairs whose caption is not their own (words edited)."""

    def __init__(self, objective, captions: list[str], recorder: Recorder):
        self.objective, self.captions, self.recorder = objective, captions, recorder
        self.counts = {"pairs_seen": 0, "mixed_pairs": 0, "edited_captions": 0}

    def __call__(self, outputs, batch, temperature):
        mixed, pairs = (batch.partners >= 0).tolist(), batch.pairs.tolist()
        self.counts["pairs_seen"] += len(pairs)
        self.counts["mixed_pairs"] += sum(mixed)
        self.counts["edited_captions"] += sum(not mix and caption != self.captions[pair]
                                              for mix, caption, pair in zip(mixed, batch.captions, pairs))
        self.recorder.update(**self.counts)
        return self.objective(outputs, batch, temperature)

    def __getattr__(self, name: str):
        return getattr(self.objective, name)


def _train_counted(spec: dict, world, recorder: Recorder, config) -> None:
    """Register ``config``'s run and train it through the builder and loop of `dcase-t6 train` with its loss terms,
    steps/s and augmented pairs recorded; it writes no checkpoint (it stops at max_steps)."""
    from dcase_t6.runs.registry import Registry
    from dcase_t6.training.builder import build_training
    from dcase_t6.training.distributed import share_from_main
    from dcase_t6.training.loop import TrainingLoop
    from dcase_t6.training.trainer import register_run

    registry = Registry(spec["workdir"])
    run_id = share_from_main(register_run(registry, config) if world.is_main else None, world)
    start = time.perf_counter()
    setup = build_training(config, registry, run_id, world)
    recorder.update(build_s=round(time.perf_counter() - start, 2), parameters=setup.model.parameter_count(),
                    batch_size=config.batch_size, steps=config.max_steps,
                    cluster_classes=setup.config.model.cluster_classes)
    counted = AugmentationCount(setup.objective, setup.data.pairs.captions, recorder)
    setup = dataclasses.replace(setup, objective=counted, checkpointer=TimedCheckpoints(None, recorder))
    if world.is_main:
        setup.sinks.append(TermLog(recorder, world.device))
    if world.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(world.device)
    position = TrainingLoop(setup, None).run()
    recorder.update(steps_done=position.step, peak_gpu_memory_gib=_peak_gpu_memory_gib(world))


def _trained_problems(values: dict, steps: int, terms: tuple[str, ...]) -> list[str]:
    """What is wrong with a counted run's record: steps missing, a term missing or not finite."""
    problems = [] if values.get("steps_done") == steps else [f"{values.get('steps_done')} of {steps} steps done"]
    logged = values.get("loss_terms", {})
    problems += [f"no {term} term logged" for term in terms if len(logged.get(term, [])) != steps]
    return problems + ([] if values.get("losses_finite") else [f"a loss is not finite: {logged}"])


def check_sid3(spec: dict, world, recorder: Recorder) -> list[str]:
    """SID 3: a teacher (one epoch of 1 step on the validation split's pairs, registered with its best checkpoint),
    then a student initialised from it and distilling from it, with audio mixing and caption augmentation."""
    from dcase_t6.runs.config import from_dict
    from dcase_t6.training.trainer import train_new

    base, start = spec["config"], time.perf_counter()
    teacher_config = {**base, "name": "gpu-check-teacher", "train_split": ["development-validation"],
                      "validation_split": None, "max_steps": None,
                      "batch_size": CAPTIONS_PER_CLIP * VALIDATION_CLIPS}
    teacher = train_new(spec["workdir"], from_dict(teacher_config, source="gpu_check"), world)
    recorder.update(teacher_status=teacher.status, teacher_steps=teacher.step,
                    teacher_s=round(time.perf_counter() - start, 2))
    merged = write_merged_captions(Path(base["data_root"]), Path(spec["workdir"]) / "merged-captions.csv")
    student = {**base, "name": "gpu-check-sid3", "init_from": teacher.run, "distill_from": [teacher.run],
               "audio_mix": {"p": 0.5, "merged_captions_file": str(merged)},
               "caption_augmentation": {"deletion_p": 0.5, "synonym_p": 0.5}}
    _train_counted(spec, world, recorder, from_dict(student, source="gpu_check"))
    values = recorder.values
    problems = [] if teacher.status == "finished" else [f"teacher {teacher['status']} at step {teacher['step']}"]
    problems += _trained_problems(values, base["max_steps"], ("contrastive", "distillation"))
    wanted = {"mixed_pairs": "no pair mixed", "edited_captions": "no caption edited"}
    problems += [problem for key, problem in wanted.items() if not values.get(key)]
    return problems


def write_merged_captions(data_root: Path, path: Path) -> Path:
    """A merged-captions CSV (``file_name_1,file_name_2,caption``, as `augment llm-mix` writes) pairing every
    training clip with the next, captioned with their first captions joined."""
    import pandas as pd

    from dcase_t6.data.split_index import read_index

    index = read_index(data_root, "synthetic", "development-training").drop_duplicates("file_name")
    names, captions = index["file_name"].tolist(), index["caption"].tolist()
    rows = [(name, names[(i + 1) % len(names)],
             f"{captions[i].rstrip('.')} and {captions[(i + 1) % len(names)][:1].lower()}"
             f"{captions[(i + 1) % len(names)][1:]}") for i, name in enumerate(names)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["file_name_1", "file_name_2", "caption"]).to_csv(path, index=False)
    return path


def check_sid4(spec: dict, world, recorder: Recorder) -> list[str]:
    """SID 4's cluster loss: kmeans clusters of the training captions (embedded by the text model), weight 0.05."""
    from dcase_t6.runs.config import from_dict

    base = spec["config"]
    clusters = {"method": "kmeans", "count": CHECK_CLUSTERS, "weight": 0.05, "source": f"model:{spec['text_model']}"}
    _train_counted(spec, world, recorder, from_dict({**base, "clusters": clusters}, source="gpu_check"))
    values = recorder.values
    problems = _trained_problems(values, base["max_steps"], ("contrastive", "cluster"))
    return problems + ([] if values.get("cluster_classes", 0) >= 2 else
                       [f"{values.get('cluster_classes')} cluster classes"])


def _last_checkpoint(workdir: str, run: str) -> dict:
    """A run's ``last`` checkpoint, its tensors memory-mapped (read only where compared)."""
    from dcase_t6.runs.registry import Registry

    path = Registry(workdir).file(run, "checkpoint", "last", verify=False).path
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def check_resume_cpu(spec: dict, world, recorder: Recorder) -> list[str]:
    """An fp16 run trained 1 step on the CPU (fp32 there), resumed on this process's device (the GPU) for 1 more."""
    from dcase_t6.runs.config import from_dict
    from dcase_t6.training.distributed import World
    from dcase_t6.training.trainer import resume, train_new

    base, start = spec["config"], time.perf_counter()
    first = train_new(spec["workdir"], from_dict({**base, "max_steps": 1}, source="gpu_check"),
                      World(device=torch.device("cpu")))
    saved = _last_checkpoint(spec["workdir"], first.run)
    recorder.update(batch_size=base["batch_size"], cpu_status=first.status, cpu_steps=first.step,
                    cpu_s=round(time.perf_counter() - start, 2), cpu_scaler_state=saved["scaler"])
    start = time.perf_counter()
    resumed = resume(spec["workdir"], first.run, max_steps=2, world=world)
    after = _last_checkpoint(spec["workdir"], first.run)
    sums = after["position"]["epoch_sums"]
    mean_loss = sums["loss_sum"] / max(1, sums["batches"])
    recorder.update(resumed_status=resumed.status, resumed_steps=resumed.step, resumed_device=str(world.device),
                    resume_s=round(time.perf_counter() - start, 2), resumed_scaler_state=after["scaler"],
                    epoch_batches=sums["batches"], mean_loss=round(mean_loss, 5))
    problems = [] if (first.status, first.step) == ("stopped", 1) else [f"the CPU run {first['status']} at "
                                                                              f"step {first['step']}"]
    problems += [] if (resumed.status, resumed.step) == ("stopped", 2) else [
        f"the resumed run {resumed['status']} at step {resumed['step']}"]
    return problems + ([] if math.isfinite(mean_loss) and sums["batches"] == 2 else
                       [f"epoch sums after the resume: {sums['batches']} batches, mean loss {mean_loss}"])


def check_deterministic_resume(spec: dict, world, recorder: Recorder) -> list[str]:
    """``deterministic: true``: DETERMINISTIC_STEPS steps uninterrupted against STOPPED_AT, stopped, and resumed to
    DETERMINISTIC_STEPS, on this job's processes; the final weights compared."""
    from dcase_t6.runs.config import from_dict
    from dcase_t6.training.trainer import resume, train_new

    base = {**spec["config"], "deterministic": True, "max_steps": DETERMINISTIC_STEPS}
    workdir, times = spec["workdir"], [time.perf_counter()]
    # One call after the other in the same processes, as a pipeline does: every process returns only once the main
    # one has saved and registered the run's `last` checkpoint (trainer.continue_run ends with a barrier).
    whole = train_new(workdir, from_dict({**base, "name": "gpu-check-uninterrupted"}, source="gpu_check"), world)
    times.append(time.perf_counter())
    stopped = train_new(workdir, from_dict({**base, "name": "gpu-check-stopped", "max_steps": STOPPED_AT},
                                           source="gpu_check"), world)
    times.append(time.perf_counter())
    resumed = resume(workdir, stopped.run, max_steps=DETERMINISTIC_STEPS, world=world)
    times.append(time.perf_counter())
    recorder.update(batch_size=base["batch_size"], steps=DETERMINISTIC_STEPS,
                    stopped_at=stopped.step, resumed_steps=resumed.step, uninterrupted_steps=whole.step,
                    **{f"{name}_s": round(b - a, 2) for name, a, b in zip(("uninterrupted", "stopped", "resume"),
                                                                         times, times[1:])})
    problems = [f"{name} run {summary.status} at step {summary.step}, not {steps}"
                for name, summary, steps in (("uninterrupted", whole, DETERMINISTIC_STEPS),
                                             ("stopped", stopped, STOPPED_AT),
                                             ("resumed", resumed, DETERMINISTIC_STEPS))
                if (summary.status, summary.step) != ("stopped", steps)]
    if world.is_main:
        problems += _compare_final(recorder, _last_checkpoint(workdir, whole.run),
                                   _last_checkpoint(workdir, stopped.run))
    world.barrier()
    return problems


def _compare_final(recorder: Recorder, whole: dict, resumed: dict) -> list[str]:
    """Record and judge the largest absolute difference of the weights, and of the epoch's summed loss."""
    if whole["model"].keys() != resumed["model"].keys():
        return ["the two runs' weights have different keys"]
    largest, differing = 0.0, 0
    for key, value in whole["model"].items():
        other = resumed["model"][key]
        if torch.equal(value, other):
            continue
        differing += 1
        largest = max(largest, float((value.double() - other.double()).abs().max()))
    loss_difference = abs(whole["position"]["epoch_sums"]["loss_sum"] - resumed["position"]["epoch_sums"]["loss_sum"])
    same_position = all(whole["position"][key] == resumed["position"][key] for key in ("epoch", "batch", "step"))
    recorder.update(tensors=len(whole["model"]), differing_tensors=differing, max_abs_weight_difference=largest,
                    loss_sum_difference=loss_difference, same_position=same_position)
    problems = [] if not differing else [f"{differing} of {len(whole['model'])} weight tensors differ (largest "
                                         f"absolute difference {largest:.3g})"]
    problems += [] if loss_difference == 0 else [f"the epoch's summed loss differs by {loss_difference:.3g}"]
    return problems + ([] if same_position else ["the runs stopped at different positions"])


CHECK_RUNS = {"sid3": check_sid3, "sid4": check_sid4, "resume-cpu": check_resume_cpu,
              "deterministic-resume": check_deterministic_resume}


def _peak_gpu_memory_gib(world) -> float | None:
    """The largest ``torch.cuda.max_memory_allocated`` of all processes since training started (None on a CPU)."""
    if world.device.type != "cuda":
        return None
    peak = torch.tensor([float(torch.cuda.max_memory_allocated(world.device))], device=world.device)
    if world.size > 1:
        import torch.distributed as dist

        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return round(float(peak.item()) / 2**30, 3)


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _graphs_compiled() -> int | None:
    """Graphs torch.compile has made in this process so far (a recompilation during the timed steps shows here)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return None
    return int(counters["stats"].get("unique_graphs", 0))


# ----------------------------------------------------------------------------------------------------- outputs


def summarise(measurements: list[dict], settings: Settings) -> list[dict]:
    """Per backbone: the eager run's numbers, the compiled run's steps/s over it, the N-process run's over it."""
    by_name = {item["name"]: item for item in measurements}
    rows = []
    for backbone in settings.backbones:
        eager = by_name.get(f"{backbone}/train", {})
        compiled = by_name.get(f"{backbone}/compiled", {})
        distributed = by_name.get(f"{backbone}/distributed/{settings.processes}", {})
        rows.append({"backbone": backbone, "status": eager.get("status"), "steps_per_s": eager.get("steps_per_s"),
                     "pairs_per_s": eager.get("pairs_per_s"), "peak_gpu_memory_gib": eager.get("peak_gpu_memory_gib"),
                     "data_wait_share": eager.get("data_wait_share"),
                     "embed_clips_per_s": eager.get("embed_clips_per_s"),
                     "compiled_status": compiled.get("status"), "compiled_steps_per_s": compiled.get("steps_per_s"),
                     "compile_speedup": _ratio(compiled.get("steps_per_s"), eager.get("steps_per_s")),
                     "compile_warmup_s": compiled.get("warmup_s"),
                     "processes": settings.processes if settings.distributed_backbones else 1,
                     "distributed_status": distributed.get("status"),
                     "distributed_steps_per_s": distributed.get("steps_per_s"),
                     "scaling": _ratio(distributed.get("steps_per_s"), eager.get("steps_per_s"))})
    return rows


def summarise_checks(measurements: list[dict]) -> list[dict]:
    """Per recipe or resume check: passed or not, its steps/s where it trained, what it showed (in words)."""
    return [{"check": item["kind"], "processes": item["processes"], "status": item.get("status"),
             "passed": item.get("status") == "ok", "steps_per_s": item.get("steps_per_s"),
             "detail": check_detail(item), "wall_s": item.get("wall_s"), "cap_s": item.get("cap_s")}
            for item in measurements if item["kind"] in CHECKS]


def check_detail(item: dict) -> str:
    """A check's key numbers in words (what it recorded before a failure, if anything)."""
    kind, get = item["kind"], item.get
    if kind in ("sid3", "sid4") and "loss_terms" in item:
        terms = ", ".join(f"{name} {values[-1]:.4g}" for name, values in item["loss_terms"].items() if values)
        finite = "finite" if get("losses_finite") else "NOT finite"
        text = f"{get('steps_done')} steps; last step's loss terms ({finite}): {terms}"
        if kind == "sid3":
            return (f"teacher {get('teacher_status')} after {get('teacher_steps')} step(s) ({get('teacher_s')} s); "
                    f"{text}; {get('mixed_pairs')} of {get('pairs_seen')} pairs mixed, {get('edited_captions')} "
                    f"captions edited")
        return f"{get('cluster_classes')} kmeans clusters; {text}"
    if kind == "resume-cpu" and "cpu_steps" in item:
        scale = (get("resumed_scaler_state") or {}).get("scale", "-")
        resumed = (f"resumed on {get('resumed_device')} to step {get('resumed_steps')} ({get('resumed_status')}, "
                   f"mean loss {get('mean_loss')}, scaler scale {scale})" if "resumed_steps" in item else "not resumed")
        return (f"fp16 run, batch {get('batch_size')}: {get('cpu_steps')} step on the CPU (fp32, scaler state "
                f"{get('cpu_scaler_state')}), {resumed}")
    if kind == "deterministic-resume" and "uninterrupted_steps" in item:
        compared = (f"max abs weight difference {get('max_abs_weight_difference'):.3g} ({get('differing_tensors')} of "
                    f"{get('tensors')} tensors differ), summed loss difference {get('loss_sum_difference'):.3g}"
                    if "max_abs_weight_difference" in item else "not compared")
        processes = (f"{get('processes')} processes under torchrun" if get("processes") != 1
                     else "1 process (fewer than 2 GPUs: no torchrun)")
        return (f"{processes}: {get('uninterrupted_steps')} steps vs {get('stopped_at')} + resume to "
                f"{get('resumed_steps')}; {compared}")
    return get("error") or "-"


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator and denominator else None


def markdown(report: dict) -> str:
    """The report as one markdown table, with where and how it was measured above it."""
    environment, settings = report["environment"], report["settings"]
    cards = ", ".join(card["name"] for card in environment["cards"]) or environment["device"]
    processes = max([row["processes"] for row in report["summary"]] + [1])
    several = (f"{processes} {'CPU processes' if settings['smoke'] else 'GPUs'}, torchrun" if processes > 1
               else "2+ GPUs, torchrun")
    lines = [f"GPU acceptance run (`benchmarks/gpu_check.py`{' --smoke' if settings['smoke'] else ''}), "
             f"{environment['date']}: {cards}; torch {environment['torch']}, CUDA {environment['cuda']}, "
             f"code {environment['code_version']}. Random weights, roberta-large's architecture"
             f"{'' if settings['text_layers'] == 24 else ' with ' + str(settings['text_layers']) + ' layers'}, "
             f"batch {settings['batch_size']}, fp16, PaSST patchout 15/2, clips of {settings['min_clip_s']:g}-"
             f"{settings['max_clip_s']:g} s; {settings['timed_steps']} timed steps after {settings['warmup_steps']} "
             f"({settings['compile_warmup_steps']} compiled); setup {report['setup_s']} s, all "
             f"{report['total_s']} s.", "",
             f"| backbone + roberta-large | steps/s | pairs/s | peak GPU memory | data-loader wait | embed clips/s "
             f"| compile on: steps/s (vs off; warm-up) | {several}: steps/s (vs 1) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report["summary"]:
        memory = row["peak_gpu_memory_gib"]
        wait = row["data_wait_share"]
        compiled = (f"{row['compiled_steps_per_s']:.3g} ({row['compile_speedup']:.2f}x; {row['compile_warmup_s']} s)"
                    if row["compiled_steps_per_s"] and row["compile_speedup"] else row["compiled_status"] or "-")
        distributed = (f"{row['distributed_steps_per_s']:.3g} ({row['scaling']:.2f}x)"
                       if row["distributed_steps_per_s"] and row["scaling"]
                       else row["distributed_status"] or ("-" if processes > 1 else "n/a: 1 GPU"))
        lines.append(f"| {row['backbone']} | {_number(row['steps_per_s'], row['status'])} | "
                     f"{_number(row['pairs_per_s'], row['status'])} | "
                     f"{'-' if memory is None else f'{memory:.1f} GiB'} | "
                     f"{'-' if wait is None else f'{100 * wait:.1f} %'} | "
                     f"{_number(row['embed_clips_per_s'], row['status'])} | {compiled} | {distributed} |")
    if report.get("checks"):
        lines += ["", f"Recipe and resume checks: PaSST + roberta-large's widths with {settings['check_text_layers']} "
                      f"layers, batch {settings['check_batch']}, crops of {settings['check_seconds']:g} s, fp16, each "
                      "in its own process under its own cap.", "",
                  "| check | processes | status | steps/s | what it showed | seconds (cap) |",
                  "|---|---|---|---|---|---|"]
        for row in report["checks"]:
            status = "pass" if row["passed"] else row["status"] or "-"
            lines.append(f"| {row['check']} | {row['processes']} | {status} | "
                         f"{_number(row['steps_per_s'], None)} | {row['detail'].replace('|', '/')} | "
                         f"{row['wall_s']} ({row['cap_s']}) |")
    return "\n".join(lines) + "\n"


def _number(value: float | None, status: str | None) -> str:
    return f"{value:.3g}" if value is not None else (status or "-")


def _brief(result: dict) -> str:
    if result["kind"] in CHECKS:
        return (f"{result.get('status', '?')}: {check_detail(result)} ({result.get('wall_s', 0)} s of cap "
                f"{result['cap_s']} s)")
    parts = [result.get("status", "?")]
    for key in ("steps_per_s", "pairs_per_s", "peak_gpu_memory_gib", "data_wait_share", "embed_clips_per_s",
                "warmup_s", "error"):
        if result.get(key) is not None:
            parts.append(f"{key} {result[key]}")
    return ", ".join(str(part) for part in parts) + f" ({result.get('wall_s', 0)} s of cap {result['cap_s']} s)"


def write_outputs(report: dict, json_path: Path, markdown_path: Path) -> None:
    from dcase_t6.common.atomic import atomic_open
    from dcase_t6.common.jsonfile import write_json

    for path in (json_path, markdown_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_json(report, json_path)
    with atomic_open(markdown_path, "w", encoding="utf-8") as handle:
        handle.write(markdown(report))


if __name__ == "__main__":
    main()
