"""Config key ``gradient_checkpointing``: the audio backbone's transformer blocks and the text transformer's layers
recompute their activations in the backward pass. The gradients equal those without it (dropout and patchout draw
the same numbers), fewer tensors are kept for the backward pass, it combines with torch.compile, and (slow) a
torchrun run of the real architectures trains with it, attention pooling and MLP heads."""

import json

import pytest
import torch
from torch import nn

from dcase_t6.common.reporting import Recorder
from dcase_t6.data.layout import Layout
from dcase_t6.data.synthetic import SyntheticConfig, prepare_synthetic
from dcase_t6.models.audio import passt, recompute
from dcase_t6.models.text import TextEncoder, TextSettings
from dcase_t6.runs.config import build_config
from dcase_t6.runs.model import load_model
from dcase_t6.runs.registry import Registry
from dcase_t6.training.builder import build_training
from dcase_t6.training.distributed import World
from dcase_t6.training.trainer import register_run
from helpers.cli import run_dcase_process

CAPTIONS = ["a dog barks in the distance", "rain falls on a metal roof", "a bell rings twice"]
TOLERANCE = 1e-5


class _Kept:
    """Counts the tensors autograd keeps for the backward pass while the block runs."""

    def __enter__(self):
        self.count = 0

        def pack(tensor):
            self.count += 1
            return tensor

        self.hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)


def _gradients(module: nn.Module, loss_of, seed: int = 7) -> tuple[dict[str, torch.Tensor], int]:
    """The gradients of ``loss_of(module)`` under ``seed`` and how many tensors the forward pass kept."""
    module.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with _Kept() as kept:
        loss = loss_of(module)
    loss.backward()
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}, kept.count


def _assert_same(checkpointed: dict, plain: dict) -> None:
    assert checkpointed.keys() == plain.keys() and len(plain) > 4
    for name, gradient in plain.items():
        assert torch.allclose(checkpointed[name], gradient, atol=TOLERANCE, rtol=0), name


def _dropout_blocks(count: int):
    """``count`` MLP blocks with dropout (seeded, training mode) and ``loss_of(checkpointed)``: the loss of running a
    fixed batch of tokens through them by ``recompute.run_blocks``, checkpointed or not."""
    torch.manual_seed(0)
    blocks = nn.ModuleList(nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Dropout(0.3), nn.Linear(64, 16))
                           for _ in range(count)).train()
    tokens = torch.randn(3, 5, 16)

    def loss_of(checkpointed: bool):
        return lambda module: recompute.run_blocks(module, tokens, checkpointed).square().mean()

    return blocks, loss_of


def test_checkpointed_blocks_with_dropout_give_the_same_gradients_and_keep_fewer_tensors():
    blocks, loss_of = _dropout_blocks(4)
    plain, kept_plain = _gradients(blocks, loss_of(False))
    checkpointed, kept = _gradients(blocks, loss_of(True))
    assert all(torch.equal(checkpointed[name], gradient) for name, gradient in plain.items())
    assert kept < kept_plain / 3  # only each block's input (and what the loss keeps)
    other, _ = _gradients(blocks, loss_of(True), seed=8)  # dropout is on: another seed, other gradients
    assert not torch.allclose(other["0.0.weight"], plain["0.0.weight"])


def test_hub_layout_roberta_gives_the_same_gradients_with_checkpointing(roberta_with_pooler):
    torch.manual_seed(0)
    encoder = TextEncoder(TextSettings(str(roberta_with_pooler), dropout=0.2)).train()

    def loss_of(module):
        return module(CAPTIONS).square().sum()

    plain, kept_plain = _gradients(encoder, loss_of)
    assert encoder.checkpoint_gradients() is True
    checkpointed, kept = _gradients(encoder, loss_of)
    _assert_same(checkpointed, plain)
    assert kept < kept_plain / 2
    other, _ = _gradients(encoder, loss_of, seed=8)  # dropout 0.2 is on: the same seed is what makes them equal
    assert not torch.allclose(other["model.encoder.layer.0.output.dense.weight"],
                              plain["model.encoder.layer.0.output.dense.weight"])
    frozen = TextEncoder(TextSettings(str(roberta_with_pooler), frozen=True))
    assert frozen.checkpoint_gradients() is False  # no gradients to save memory on


def _setups(tiny_training, tmp_path) -> tuple:
    """A plain tiny run and one with gradient checkpointing (and what the builder said), and the first batch."""
    recorder = Recorder()

    def setup(workdir, **overrides):
        config = build_config(None, {**tiny_training, "log": "none", **overrides})
        registry = Registry(workdir)
        return build_training(config, registry, register_run(registry, config), World(), recorder)

    plain = setup(tmp_path / "plain")
    checkpointed = setup(tmp_path / "checkpointed", gradient_checkpointing="true")
    return plain, checkpointed, recorder, next(iter(plain.data.loader(0, plain.data.batches(0), 0)))


def _same_step(plain, checkpointed, batch) -> None:
    """One training step's gradients are bit for bit those of the plain run, and fewer tensors are kept."""

    def loss_of(setup):
        return lambda network: setup.objective(network(batch.waveforms, batch.lengths, batch.captions), batch,
                                               setup.model.temperature).total

    expected, kept_plain = _gradients(plain.network.train(), loss_of(plain))
    found, kept = _gradients(checkpointed.network.train(), loss_of(checkpointed))
    assert all(torch.equal(found[name], gradient) for name, gradient in expected.items()) and found.keys() == \
        expected.keys()
    assert kept < kept_plain


def test_the_builder_turns_it_on_and_the_step_is_the_plain_one(tiny_training, tmp_path):
    """tiny-cnn has no transformer blocks: only the text transformer checkpoints."""
    plain, checkpointed, recorder, batch = _setups(tiny_training, tmp_path)
    assert ("info", "gradient checkpointing: the text transformer's layers recompute their activations in the "
                    "backward pass (less memory, slower steps, the same gradients)") in recorder.messages
    assert checkpointed.model.text.model.encoder.layer[0].gradient_checkpointing is True
    _same_step(plain, checkpointed, batch)


@pytest.mark.slow  # torch.compile's tracing: about 20 s on two loaded cores
def test_checkpointing_works_with_compiled_blocks(tiny_training, tmp_path):
    """Compiled with aot_eager (the eager kernels), the checkpointed step is bit for bit the plain eager one: the
    text layers (transformers checkpoints inside the compiled layer) and blocks run by ``run_blocks`` (the compiled
    block is checkpointed)."""
    plain, checkpointed, _, batch = _setups(tiny_training, tmp_path)
    checkpointed.model.compile_encoders(backend="aot_eager")
    _same_step(plain, checkpointed, batch)
    blocks, loss_of = _dropout_blocks(3)
    expected, _ = _gradients(blocks, loss_of(False))
    for block in blocks:
        block.compile(backend="aot_eager")
    compiled, _ = _gradients(blocks, loss_of(True))
    assert compiled.keys() == expected.keys()
    assert all(torch.equal(compiled[name], gradient) for name, gradient in expected.items())


@pytest.mark.slow  # two PaSST training steps (random weights) on two loaded cores: about a minute
def test_passt_gives_the_same_gradients_with_checkpointing_in_training_mode():
    """Structured patchout draws its columns and rows before the blocks, once; the blocks are recomputed."""
    torch.manual_seed(0)
    backbone = passt.PaSST(weights="random", pooling="attention").train()
    waveforms, lengths = 0.1 * torch.randn(1, 3 * passt.SAMPLE_RATE), torch.tensor([3 * passt.SAMPLE_RATE])

    def loss_of(module):
        return module(waveforms, lengths).square().sum()

    plain, kept_plain = _gradients(backbone, loss_of)
    assert recompute.enable(backbone) == 1
    checkpointed, kept = _gradients(backbone, loss_of)
    _assert_same(checkpointed, plain)
    assert "pool.query" in plain and kept < kept_plain / 3
    other, _ = _gradients(backbone, loss_of, seed=8)  # another patchout: other gradients
    assert not torch.allclose(other["net.blocks.0.mlp.fc1.weight"], plain["net.blocks.0.mlp.fc1.weight"])


@pytest.mark.slow  # torchrun, two processes training PaSST with a RoBERTa, then embedding: a few minutes
def test_torchrun_trains_real_architectures_with_attention_pooling_mlp_heads_checkpointing_in_chunks(
        roberta_with_pooler, tmp_path):
    """Every new path of the training choices at once under torchrun on PaSST + a hub-layout RoBERTa: attention
    pooling, MLP heads, gradient checkpointing, and the gradient cache (chunks of 1 pair: rank 0 runs 2 chunks,
    rank 1 one and a stand-in) with HN-NCE weighting over the global batch."""
    root, workdir = tmp_path / "data", tmp_path / "work"
    prepare_synthetic(Layout.at(root), SyntheticConfig(development=1, validation=1, evaluation=1, min_duration=3.0,
                                                       max_duration=4.0))
    trained = run_dcase_process(workdir, "train", "--data-root", str(root), "--datasets", "synthetic", "--backbone",
                                "passt", "--audio-weights", "random", "--text-model", str(roberta_with_pooler),
                                "--epochs", "1", "--batch-size", "3", "--set", "model.pooling=attention", "--set",
                                "model.projection=mlp", "--set", "gradient_checkpointing=true", "--set",
                                "grad_cache_chunk=1", "--set", "negatives.hardness=0.5", "--json", processes=2)
    assert trained.returncode == 0, trained.stderr[-3000:]
    summary = json.loads(trained.stdout)
    assert summary["status"] == "finished" and summary["step"] == 2  # 5 pairs: global batches of 3 and 2
    registry = Registry(workdir)
    run = registry.run(summary["run"])
    loss = run.epochs[0]["train_loss"]
    assert loss == loss and 0 < loss < 100  # finite
    assert run.config["gradient_checkpointing"] is True and run.config["model"]["pooling"] == "attention"
    assert run.config["grad_cache_chunk"] == 1 and run.config["negatives"]["hardness"] == 0.5
    loaded = load_model(registry, summary["run"])
    assert loaded.model.audio.pool.query.abs().max() > 0 and isinstance(loaded.model.text_projection, nn.Sequential)
    embedded = run_dcase_process(workdir, "embed", summary["run"], "--data-root", str(root), "--dataset", "synthetic",
                                 "--json")
    assert embedded.returncode == 0, embedded.stderr[-3000:]
