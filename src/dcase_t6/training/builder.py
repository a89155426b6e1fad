"""Assembling a training run: everything the loop needs, built in one explicit order from the run's config.

``build_training`` reads the registered config and never changes it; what the run learns while it is
assembled (the number of cluster classes) goes into a derived config (``dataclasses.replace``) from which
the model is built and which its checkpoints store. The order, and why:

1. the audio cache at the backbone's sample rate (the main process builds it, or on several nodes with
   node-local data roots each node's first process builds its own: ``runs.node_folders``; the others wait):
   what it holds decides which clips exist;
2. the training pairs and the validation split without the clips the cache skipped (unreadable files: one
   warning line says how many pairs and queries are left out; the data fingerprint covers the pairs
   kept), the same on every process (nodes with their own data roots: ``runs.node_folders.check_same_data``),
   and the caption/audio augmenter;
3. the distillation teachers (the main process embeds any teacher missing training-split embeddings);
4. the cluster labels (the main process clusters and registers them on a run's first start), giving the
   model's cluster class count, and the derived config;
5. ``torch.manual_seed(seed)``, then the model (random initialisation draws from the seeded generator),
   loaded from ``init_from`` when set, moved to the device, gradient checkpointing turned on in its encoders when
   config key ``gradient_checkpointing`` says so, its encoders compiled in place when config key ``compile``
   says so (``compiles``; before DDP wraps it, state-dict keys unchanged);
6. the encoder blocks config section ``finetune`` freezes (before DDP wraps the model: it reduces only the
   parameters that train), the DDP wrapper, the optimizer (its parameter groups and their learning rates:
   ``training.finetuning``), the autocast dtype and the gradient scaler;
7. the batches (with ``negatives.mining``: the hard-negative miner, ``training.miner``; mining a run finds its
   neighbours here), the objective (the loss terms), the validator, the checkpointer and the log sinks.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.data.audio_cache import AudioCache
from dcase_t6.data.audit import test_overlaps
from dcase_t6.data.cache_build import CacheRequest, build_cache
from dcase_t6.data.cached_splits import cached_split
from dcase_t6.data.layout import Layout
from dcase_t6.data.split_index import Split, load_split
from dcase_t6.models import CLUSTER_HEADS, DualEncoder
from dcase_t6.models import audio as audio_backbones
from dcase_t6.models.checkpoint import WeightSource, load_weights
from dcase_t6.runs.config import FineTune, TrainConfig
from dcase_t6.runs.lookup import writable
from dcase_t6.runs.node_folders import check_same_data, folder_writer
from dcase_t6.runs.record_reader import RunLookup
from dcase_t6.training.augmentation import PairAugmenter
from dcase_t6.training.checkpointing import Checkpointer
from dcase_t6.training.clustering import caption_labels
from dcase_t6.training.data import CaptionPairs, TrainingData, load_pairs, sha256_of_text, training_splits
from dcase_t6.training.distillation import load_teachers
from dcase_t6.training.distributed import World
from dcase_t6.training.finetuning import build_optimizer, describe, freeze_layers
from dcase_t6.training.miner import MiningInputs, ModelSource, build_miner
from dcase_t6.training.objective import Objective, build_objective
from dcase_t6.training.sinks import EpochSink, run_sinks
from dcase_t6.training.validation import Validator


@dataclass(frozen=True)
class TrainingSetup:
    """A run assembled for training.

    ``config`` is the run's config with the model's cluster class count (the config the model was built
    from and the checkpoints store); ``network`` is the model or its DDP wrapper (what the forward pass
    calls), ``model`` the model itself (weights, temperature, checkpoints).
    """

    config: TrainConfig
    world: World
    data: TrainingData
    model: DualEncoder
    network: torch.nn.Module
    objective: Objective
    validator: Validator | None  # None: no validation split (the best checkpoint is the last epoch's)
    checkpointer: Checkpointer
    sinks: list[EpochSink]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast_dtype: torch.dtype | None
    reporter: Reporter = SILENT  # this process's voice: the caller's on the main process, silent elsewhere


def build_training(config: TrainConfig, registry: RunLookup, run_id: str, world: World,
                   reporter: Reporter = SILENT) -> TrainingSetup:
    """Assemble a registered run for training, in the order the module docstring gives.

    Args:
        config: the run's registered config (with this invocation's ``max_steps``); it is not changed.
        registry: the run's registry on the main process, its records on the others (``runs.lookup``); only the
            main process writes (checkpoints, epochs, cluster labels).
        run_id: the run.
        world: the processes.
        reporter: progress and notes (only the main process speaks).

    Returns:
        The setup; its position is the start (``continue_run`` restores a ``last`` checkpoint into it).
    """
    autocast_dtype(config.precision, world.device)  # a card without bf16 fails here, before any work
    reporter = reporter.for_rank(world.is_main)
    if not config.allow_test_overlap:
        _refuse_test_overlap(config)
    # 1. audio cache
    rate = audio_backbones.sample_rate(config.model.backbone)
    if folder_writer(world, config.data_root, reporter):  # one process per node sharing it builds, the others wait
        request = CacheRequest(rate, list(dict.fromkeys([*config.datasets, *validated(config)])),
                               workers=cache_workers(config.workers))
        build_cache(Layout.at(config.data_root), request, reporter)
    world.wait("build the audio cache", "build it first with `dcase-t6 prepare cache`")
    store = AudioCache(config.data_root, rate, reporter)
    # 2. data (reads only), the clips the cache skipped left out
    pairs = load_pairs(config, store, reporter)
    validation = None if config.validation_split is None else cached_split(
        store, load_split(config.data_root, config.validation_source, config.validation_split), reporter)
    if world.size > 1:  # node-local copies must agree (hashing every caption is for several processes only)
        check_same_data(world, _fingerprints(pairs, validation), config.data_root)
    augmenter = PairAugmenter(config, pairs.captions, pairs.clip_ids, pairs.clip_names)
    # 3. teachers
    teachers = load_teachers(registry, config, pairs, world, reporter) if config.distill_from else None
    # 4. cluster labels, and the config the model is built from
    labels = _cluster_labels(registry, run_id, config, pairs, world)
    classes = int(labels.max()) + 1 if labels is not None else 0
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, cluster_classes=classes))
    # 5. model
    torch.manual_seed(config.seed)
    model = DualEncoder(config.model, audio_weights="random" if config.init_from else config.audio_weights)
    if config.init_from:
        initialise_from(model, registry, config.init_from)
    else:
        reporter.info(f"audio backbone {config.model.backbone}: {model.audio.weights_source}")
    model.to(world.device)
    if config.gradient_checkpointing:  # before compile: the compiled blocks are what is checkpointed
        parts = model.checkpoint_gradients()
        reporter.info(f"gradient checkpointing: {' and '.join(parts) or 'no part of this model'} recompute their "
                      "activations in the backward pass (less memory, slower steps, the same gradients)")
    if compiles(config.compile, world.device):
        model.compile_encoders()
        reporter.info(f"torch.compile (compile {config.compile}): the audio network and the text transformer, "
                      "layer by layer; the first steps compile them")
    max_samples = config.clip_samples(model.sample_rate)
    # 6. optimisation
    freeze_layers(model, config.finetune)
    network = _wrap(model, world)
    optimizer = build_optimizer(model, config)
    if config.finetune != FineTune():
        reporter.info(describe(model, optimizer))
    dtype = autocast_dtype(config.precision, world.device, reporter)
    scaler = torch.amp.GradScaler(world.device.type, enabled=dtype == torch.float16)
    # 7. batches, objective, validation, checkpoints, sinks
    directory = registry.layout.run(run_id)
    writer = writable(registry) if world.is_main else None  # the others write nothing
    miner = build_miner(MiningInputs(config, registry, directory, pairs, world, reporter),
                        ModelSource(model, store, max_samples, config.batch_size))
    data = TrainingData(pairs, store, augmenter, max_samples, config.batch_size, config.seed,
                        loader_workers(config.workers, world), world,
                        config.data_root, config.dataset_weights, negatives=miner)
    return TrainingSetup(
        config=config, world=world, data=data, model=model, network=network,
        objective=build_objective(config, world, teachers, labels),
        validator=None if validation is None else Validator(validation, store, max_samples, config.batch_size,
                                                            world),
        checkpointer=Checkpointer(writer, run_id, directory, config, world.is_main),
        sinks=run_sinks(writer, run_id, config.epochs, world.is_main, reporter),
        optimizer=optimizer, scaler=scaler, autocast_dtype=dtype, reporter=reporter)


def validated(config: TrainConfig) -> list[str]:
    """The validation dataset, or none when the run has no validation split."""
    return [] if config.validation_split is None else [config.validation_source]


def _fingerprints(pairs: CaptionPairs, validation: Split | None) -> dict[str, str]:
    """What a process read, to compare between nodes: the training pairs (clip names and captions, in order) and
    the validation split, without the data root's location (a node-local copy may lie elsewhere on each node)."""
    facts = {"training pairs": sha256_of_text("\n".join(f"{clip}\t{caption}" for clip, caption in
                                                         zip(pairs.pair_clips(), pairs.captions)))}
    if validation is not None:
        facts["validation split"] = sha256_of_text("\n".join([*validation.files, "", *validation.queries]))
    return facts


def _cluster_labels(registry: RunLookup, run_id: str, config: TrainConfig, pairs: CaptionPairs,
                    world: World) -> torch.Tensor | None:
    """Every pair's cluster label on the device, or None when clusters are off."""
    if not config.clusters.method:
        return None
    labels = caption_labels(registry, run_id, config, pairs, world)
    return torch.from_numpy(labels).to(world.device)


def _wrap(model: DualEncoder, world: World) -> torch.nn.Module:
    if world.size == 1:
        return model
    device_ids = [world.device.index] if world.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def initialise_from(model: DualEncoder, registry: RunLookup, run: str) -> None:
    """Load a run's best weights into ``model``; cluster heads (new, or of other clusters there) start fresh.

    Args:
        model: the model to initialise.
        registry: the registry holding ``run`` (or its records).
        run: a run reference (a full id on a process that reads records).

    Raises:
        UserError: the weights do not fit the model (see ``dcase_t6.models.checkpoint.load_weights``).
    """
    record = registry.file(run, "checkpoint", "best")
    state = torch.load(record.path, map_location="cpu", weights_only=True)["model"]
    load_weights(model, state, WeightSource(f"init_from {record.run_id}", record.path,
                                            fix="use the same model.* settings as that run"), fresh=CLUSTER_HEADS)


def compiles(mode: str, device: torch.device) -> bool:
    """Whether config key ``compile`` turns ``torch.compile`` on for training on ``device``.

    Args:
        mode: ``on`` (always, also on a CPU), ``off`` (never) or ``auto``: on CUDA GPUs of compute capability
            >= 7 (the DCASE 2025 baseline's rule), never on a CPU.
        device: the training device.

    Returns:
        True to compile the encoders.
    """
    if mode == "auto":
        return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 7
    return mode == "on"


def autocast_dtype(precision: str, device: torch.device, reporter: Reporter = SILENT) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``.

    fp16 mixed precision on a GPU (the baseline), bf16 on a GPU or CPU, None (fp32) for fp32 or for fp16
    on a CPU (which has no fp16 training kernels).

    Args:
        precision: ``fp16``, ``bf16`` or ``fp32``.
        device: the training device.
        reporter: told when fp16 falls back to fp32.

    Returns:
        The dtype, or None for fp32.

    Raises:
        UserError: bf16 on a GPU without native bf16 (before Ampere), in one line.
    """
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise UserError(f"precision bf16: the GPU {device} has no native bf16 support (it needs compute capability "
                        ">= 8, Ampere or later); use --precision fp16 (mixed precision with a gradient scaler) or fp32")
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16" and device.type == "cuda":
        return torch.float16
    if precision == "fp16":
        reporter.info("precision fp16 needs a GPU: training in fp32 on the CPU (bf16 works on CPUs too)")
    return None


def _refuse_test_overlap(config: TrainConfig) -> None:
    """A UserError when a split the run trains on shares Freesound ids with dev-test or the evaluation set."""
    found = test_overlaps(Layout.at(config.data_root), training_splits(config))
    if found:
        pair, ids = next(iter(found.items()))
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        raise UserError(f"{config.data_root}: training would see test clips: {pair} share {len(ids)} Freesound "
                        f"id(s) ({shown}){f'; {len(found) - 1} more pair(s)' if len(found) > 1 else ''}; remove "
                        "them from the training source (`dcase-t6 prepare audit` lists every one), or train anyway "
                        "with --set allow_test_overlap=true")


def loader_workers(configured: int | None, world: World) -> int:
    """DataLoader processes per training process: the configured number; else (None) 0 on a CPU, where loader
    processes would take the cores the model computes on, and on a GPU the CPU cores available per process less one
    for the process itself, at least 1 and at most 8.

    Args:
        configured: config key ``workers``.
        world: the processes.

    Returns:
        The number of loader processes.
    """
    if configured is not None:
        return configured
    if world.device.type != "cuda":
        return 0
    return max(1, min(8, _cores() // _processes_per_node(world) - 1))


def cache_workers(configured: int | None) -> int:
    """Decoding processes of the audio cache build at training start: the configured ``workers`` (at least 1);
    else every core of the node less one, at most 32, since the node's other training processes only wait for it."""
    return max(1, configured) if configured is not None else max(1, min(32, _cores() - 1))


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)


def _processes_per_node(world: World) -> int:
    """Training processes on this machine: torchrun's LOCAL_WORLD_SIZE (several nodes), else all of them."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world.size)))
