"""Config key ``compile``: torch.compile of the audio network and the text transformer (the DCASE 2025 baseline
compiles both on GPUs of compute capability >= 7). A compiled training step gives the eager step's loss and
gradients, and a compiled model's checkpoints have exactly the eager model's keys and load into an eager model.

Tolerances: with the ``aot_eager`` backend (the graph runs the eager kernels) the step is bit for bit the eager
one; with inductor (generated C++ kernels, other summation orders) the loss agrees to 1e-5 and every
parameter's gradient to 1e-4 of its norm (measured here in float32: the tiny model's loss to 4.8e-7 and
gradients to 3.8e-6 at worst; the real PaSST with a RoBERTa, once by hand, 2.4e-7 and 1.8e-5).
"""

import pytest
import torch
import yaml

from dcase_t6.common.errors import UserError
from dcase_t6.models import DualEncoder
from dcase_t6.runs.config import build_config
from dcase_t6.runs.model import load_model
from dcase_t6.runs.registry import Registry
from dcase_t6.training.builder import build_training, compiles
from dcase_t6.training.checkpointing import Position
from dcase_t6.training.distributed import World
from dcase_t6.training.loop import step_seed
from dcase_t6.training.trainer import register_run

LOSS_TOLERANCE = 1e-5  # absolute, on a loss of about 2.5
GRADIENT_TOLERANCE = 1e-4  # |compiled - eager| / (|eager| + 1e-5), per parameter (norms over its elements)


def test_compile_key_is_auto_by_default_and_takes_auto_on_off(tmp_path):
    assert build_config(None, {}).compile == "off"
    assert [build_config(None, {"compile": mode}).compile for mode in ("auto", "on", "off")] == ["auto", "on", "off"]
    path = tmp_path / "train.yaml"  # YAML 1.1 reads the bare words on and off as booleans
    path.write_text("compile: off\n", encoding="utf-8")
    assert yaml.safe_load(path.read_text()) == {"compile": False} and build_config(path, {}).compile == "off"
    assert build_config(None, {"compile": yaml.safe_load("on")}).compile == "on"  # --set compile=on


@pytest.mark.parametrize("value", ["maybe", "ON", "inductor"])
def test_a_bad_compile_value_is_one_line_naming_the_key(value):
    with pytest.raises(UserError) as caught:
        build_config(None, {"compile": value})
    assert str(caught.value) == f"command line: config key 'compile' = {value!r} must be one of auto, on, off"


def test_auto_compiles_only_on_cuda_of_compute_capability_7_or_more(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert (compiles("auto", cpu), compiles("on", cpu), compiles("off", cpu)) == (False, True, False)
    for capability, expected in (((6, 1), False), ((7, 0), True), ((9, 0), True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, found=capability: found)
        assert (compiles("auto", gpu), compiles("on", gpu), compiles("off", gpu)) == (expected, True, False)


def _setup(overrides: dict, workdir, compile_mode: str = "off"):
    config = build_config(None, {**overrides, "compile": compile_mode, "log": "none"})
    registry = Registry(workdir)
    run_id = register_run(registry, config)
    return registry, run_id, build_training(config, registry, run_id, World())


def _step(setup) -> tuple[float, dict[str, torch.Tensor]]:
    """One training step's loss and gradients on the run's first batch (as the loop computes them)."""
    batch = next(iter(setup.data.loader(0, setup.data.batches(0), 0)))
    torch.manual_seed(step_seed(setup.config.seed, 0, 0))
    setup.network.train()
    # Inductor draws dropout masks from its own generator; fallback_random makes it draw them as eager does.
    with torch._inductor.config.patch(fallback_random=True):
        outputs = setup.network(batch.waveforms, batch.lengths, batch.captions)
        losses = setup.objective(outputs, batch, setup.model.temperature)
        losses.total.backward()
    gradients = {name: parameter.grad.clone() for name, parameter in setup.model.named_parameters()
                 if parameter.grad is not None}
    return float(losses.total.detach()), gradients


def _differences(compiled: tuple, eager: tuple) -> tuple[float, float]:
    (compiled_loss, compiled_gradients), (eager_loss, eager_gradients) = compiled, eager
    assert compiled_gradients.keys() == eager_gradients.keys() and len(eager_gradients) > 10
    worst = max(float((compiled_gradients[name] - gradient).norm() / (gradient.norm() + 1e-5))
                for name, gradient in eager_gradients.items())
    return abs(compiled_loss - eager_loss), worst


def _checkpoint_keys_are_the_eager_ones(registry, run_id, setup) -> None:
    """``last.pt`` written from the compiled model has the eager model's keys and loads into an eager model."""
    setup.checkpointer.save_last(setup.model, setup.optimizer, setup.scaler, Position(step=1))
    eager = DualEncoder(setup.config.model, audio_weights="random")
    state = torch.load(registry.file(run_id, "checkpoint", "last").path, weights_only=True)["model"]
    assert list(state) == list(eager.state_dict()) and not [key for key in state if "_orig_mod" in key]
    eager.load_state_dict(state, strict=True)
    loaded = load_model(registry, run_id, tag="last").model  # as `embed` loads it
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in state.items())


def test_aot_eager_compiled_step_is_the_eager_step_and_checkpoints_keep_their_keys(tiny_training, tmp_path):
    _, _, eager = _setup(tiny_training, tmp_path / "eager")
    registry, run_id, compiled = _setup(tiny_training, tmp_path / "compiled")
    compiled.model.compile_encoders(backend="aot_eager")
    assert list(compiled.model.state_dict()) == list(eager.model.state_dict())
    assert _differences(_step(compiled), _step(eager)) == (0.0, 0.0)
    _checkpoint_keys_are_the_eager_ones(registry, run_id, compiled)


@pytest.mark.slow
def test_compile_on_trains_the_tiny_model_with_inductor_as_eager_does(tiny_training, tmp_path):
    """Through the builder (config key compile: on), with torch.compile's default backend, inductor."""
    _, _, eager = _setup(tiny_training, tmp_path / "eager")
    registry, run_id, compiled = _setup(tiny_training, tmp_path / "compiled", compile_mode="on")
    assert compiled.model.text.model.encoder.layer[0]._compiled_call_impl is not None
    assert compiled.model.audio.blocks._compiled_call_impl is not None
    loss, gradients = _differences(_step(compiled), _step(eager))
    assert loss <= LOSS_TOLERANCE and gradients <= GRADIENT_TOLERANCE
    _checkpoint_keys_are_the_eager_ones(registry, run_id, compiled)


@pytest.mark.slow
def test_compiled_real_passt_architecture_trains_as_eager(roberta_with_pooler, tiny_data_root, tmp_path):
    """The real PaSST (random weights, structured patchout; short clips: one 10 s segment each) with a RoBERTa
    that has the hub model's pooler. Backend aot_eager: with inductor the compiled step took 147 s on this 2-core
    CPU (cold cache; C++ code generation) against 38 s with aot_eager; inductor is tested on the tiny model."""
    overrides = {"data_root": str(tiny_data_root), "datasets": "synthetic", "model.backbone": "passt",
                 "audio_weights": "random", "model.text_model": str(roberta_with_pooler), "model.embed_dim": 16,
                 "batch_size": 2, "audio_seconds": 3.0}
    _, _, eager = _setup(overrides, tmp_path / "eager")
    registry, run_id, compiled = _setup(overrides, tmp_path / "compiled")
    compiled.model.compile_encoders(backend="aot_eager")
    assert all(block._compiled_call_impl is not None for block in compiled.model.audio.net.blocks)
    assert _differences(_step(compiled), _step(eager)) == (0.0, 0.0)
    _checkpoint_keys_are_the_eager_ones(registry, run_id, compiled)
