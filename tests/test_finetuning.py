"""Fine-tuning depth and learning rates (config section ``finetune``): frozen blocks, layer-wise learning-rate decay,
separate rates for the encoders and the heads, the schedule over parameter groups and resuming them."""

import io
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.common.errors import UserError
from dcase_t6.models import DualEncoder
from dcase_t6.pipeline.run import config_digest
from dcase_t6.runs.config import TrainConfig, build_config
from dcase_t6.runs.registry import Registry
from dcase_t6.sharing.compare import differing_keys
from dcase_t6.training import losses
from dcase_t6.training import trainer as training
from dcase_t6.training.finetuning import (
    build_optimizer,
    freeze_layers,
    parameter_groups,
    scheduled_learning_rate,
    set_learning_rate,
)
from dcase_t6.training.loop import learning_rate
from helpers.cli import free_port

TINY = {"model.backbone": "tiny-cnn", "model.text_model": "tiny-random", "model.embed_dim": 8, "lr": 1e-3}


def built(overrides: dict, backbone_weights: str = "random") -> tuple[TrainConfig, DualEncoder, torch.optim.Optimizer]:
    config = build_config(None, {**TINY, **overrides})
    torch.manual_seed(0)
    model = DualEncoder(config.model, audio_weights=backbone_weights)
    freeze_layers(model, config.finetune)
    return config, model, build_optimizer(model, config)


def rates(optimizer: torch.optim.Optimizer) -> dict[int, tuple[float, float]]:
    """Each parameter's (learning rate, weight decay) as its group gives them."""
    return {id(p): (group["lr"], group["weight_decay"]) for group in optimizer.param_groups for p in group["params"]}


def saved_and_loaded(state: dict) -> dict:
    """``state`` through ``torch.save`` and ``torch.load``, as a checkpoint holds it (fresh tensors)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)


def test_defaults_give_todays_single_group_at_lr_with_every_trained_parameter_in_model_order():
    config, model, optimizer = built({"weight_decay": 0.01})
    assert len(optimizer.param_groups) == 1
    (group,) = optimizer.param_groups
    assert group["lr"] == config.lr == 1e-3 and group["weight_decay"] == 0.01 and group["lr_scale"] == 1.0
    assert group["params"] == [p for p in model.parameters() if p.requires_grad]  # identity, in order
    assert not model.log_temperature.requires_grad and all(p.requires_grad for p in model.audio.parameters())
    set_learning_rate(optimizer, 3.7e-4)
    assert group["lr"] == 3.7e-4 and scheduled_learning_rate(optimizer) == 3.7e-4  # exactly the schedule's rate


def test_layer_decay_and_separate_rates_for_audio_text_and_heads():
    """tiny-cnn's 4 blocks and the 2-layer random RoBERTa: block k below the top at its encoder's rate * 0.5**k,
    the text embeddings lowest (0.5**2); projections at lr_heads; 1-d parameters without weight decay."""
    overrides = {"finetune.layer_decay": 0.5, "finetune.lr_audio": 4e-4, "finetune.lr_text": 2e-4,
                 "finetune.lr_heads": 5e-3, "weight_decay": 0.05, "finetune.no_decay_bias_norm": True,
                 "model.trainable_temperature": True}
    config, model, optimizer = built(overrides)
    found = rates(optimizer)
    assert len(found) == sum(1 for _ in model.parameters())  # everything trains (temperature included)
    for encoder, lr in ((model.audio, 4e-4), (model.text, 2e-4)):
        layers = encoder.encoder_layers()
        depths = layers.depths()  # checked on its own by the literal rates below
        assert len(layers.blocks) == (4 if encoder is model.audio else 2)
        for p in encoder.parameters():
            assert found[id(p)][0] == lr * 0.5 ** depths.get(id(p), 0)
    text = model.text.encoder_layers()
    assert {found[id(p)][0] for p in text.embeddings} == {2e-4 * 0.5 ** 2}  # the lowest text rate
    assert found[id(model.text.model.encoder.layer[1].output.dense.weight)][0] == 2e-4  # the top layer
    assert found[id(model.text.model.encoder.layer[0].output.dense.weight)][0] == 2e-4 * 0.5
    assert found[id(model.audio.blocks[0][0].weight)][0] == 4e-4 * 0.5 ** 3
    for p in [*model.audio_projection.parameters(), *model.text_projection.parameters(), model.log_temperature]:
        assert found[id(p)][0] == 5e-3
    for name, p in model.named_parameters():
        assert found[id(p)][1] == (0.0 if p.ndim <= 1 else 0.05), name
    for group in optimizer.param_groups:
        assert group["lr_scale"] == group["lr"] / config.lr
    set_learning_rate(optimizer, 1e-5)  # the schedule scales every group alike
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(1e-5 * group["lr_scale"], rel=1e-15)
    assert scheduled_learning_rate(optimizer) == pytest.approx(1e-5, rel=1e-15)


def test_frozen_blocks_leave_the_optimizer_and_minus_one_freezes_the_whole_encoder():
    _, model, optimizer = built({"finetune.audio_frozen_blocks": -1, "finetune.text_frozen_blocks": 1})
    trained = set(rates(optimizer))
    assert not any(p.requires_grad or id(p) in trained for p in model.audio.parameters())
    text = model.text.encoder_layers()
    frozen = {id(p) for p in text.frozen(1)}
    assert frozen == {id(p) for p in [*text.embeddings, *text.blocks[0].parameters()]}
    for p in model.text.parameters():
        assert p.requires_grad == (id(p) not in frozen) == (id(p) in trained)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"finetune.audio_frozen_blocks": 5}, "config key 'finetune.audio_frozen_blocks' = 5: the audio encoder (backbone "
                                          "tiny-cnn) has 4 blocks; use 0 to 4, or -1 to freeze all of it"),
    ({"finetune.text_frozen_blocks": 3}, "config key 'finetune.text_frozen_blocks' = 3: the text encoder (text model "
                                         "tiny-random) has 2 blocks; use 0 to 2, or -1 to freeze all of it"),
])
def test_more_frozen_blocks_than_the_encoder_has_is_one_line(overrides, message):
    with pytest.raises(UserError) as raised:
        built(overrides)
    assert str(raised.value) == message


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("finetune.audio_frozen_blocks", "-2", "-1 (the whole encoder) or 0 to 1000 blocks"),
    ("finetune.text_frozen_blocks", "1001", "-1 (the whole encoder) or 0 to 1000 blocks"),
    ("finetune.layer_decay", "0", "in (0, 1] (1: no layer-wise decay)"),
    ("finetune.layer_decay", "1.5", "in (0, 1] (1: no layer-wise decay)"),
    ("finetune.lr_audio", "0", "> 0"), ("finetune.lr_heads", "-1e-4", "> 0"),
])
def test_out_of_range_finetune_keys_are_refused_by_name(key, value, expected):
    with pytest.raises(UserError, match=r"config key '" + key.replace(".", r"\.") + "'") as raised:
        build_config(None, {key: value})
    assert str(raised.value).endswith(f"must be {expected}")


def test_finetune_keys_are_digested_only_off_their_defaults_and_compared_by_name():
    default, changed = TrainConfig(), build_config(None, {"finetune.layer_decay": "0.75"})
    assert config_digest(default) == config_digest(build_config(None, {"finetune.lr_text": "null"}))
    assert config_digest(changed) != config_digest(default)
    assert differing_keys([default.to_dict(), changed.to_dict()]) == {"finetune.layer_decay": [1.0, 0.75]}
    # a run stored before the section existed: every key missing there, shown as None
    old = {key: value for key, value in default.to_dict().items() if key != "finetune"}
    assert differing_keys([old, changed.to_dict()])["finetune.layer_decay"] == [None, 0.75]


def test_an_optimizer_state_saved_before_groups_had_scales_resumes_as_before():
    """A ``last`` checkpoint of an earlier version holds one group without ``lr_scale``: it loads into today's
    default optimizer, which then steps exactly as the earlier single-group AdamW did."""
    config, model, _ = built({"weight_decay": 0.01})
    earlier = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=0.01)
    model(torch.randn(2, 16000), torch.tensor([16000, 12000]), ["a dog", "rain"])[0].sum().backward()
    earlier.step()
    saved = saved_and_loaded(earlier.state_dict())
    assert "lr_scale" not in saved["param_groups"][0]
    twin = DualEncoder(config.model, audio_weights="random")
    twin.load_state_dict(model.state_dict())
    optimizer = build_optimizer(twin, config)
    optimizer.load_state_dict(saved)
    for source, target in zip(model.parameters(), twin.parameters()):
        target.grad = None if source.grad is None else source.grad.clone()
    for group in earlier.param_groups:
        group["lr"] = 4e-4  # what the loop did before groups had scales
    set_learning_rate(optimizer, 4e-4)
    earlier.step()
    optimizer.step()
    assert optimizer.param_groups[0]["lr"] == 4e-4 and scheduled_learning_rate(optimizer) == 4e-4
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


FROZEN = {"finetune.audio_frozen_blocks": 2, "finetune.text_frozen_blocks": 1, "finetune.layer_decay": 0.5,
          "finetune.lr_heads": 2e-3, "log": "none"}


def contrastive_step(model: DualEncoder, optimizer: torch.optim.Optimizer, lr: float) -> None:
    """One optimizer step on the baseline's loss over four pairs (tiny-cnn needs at least 0.5 s of audio)."""
    generator = torch.Generator().manual_seed(3)
    audio, text = model(torch.randn(4, 16000, generator=generator), torch.tensor([16000, 12000, 16000, 9000]),
                        ["a dog barks", "rain falls", "a bell rings", "wind blows"])
    ids = torch.arange(4)
    losses.multi_positive_infonce(audio, text, ids, ids, model.temperature).backward()
    set_learning_rate(optimizer, lr)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_two_steps_leave_frozen_tensors_bit_identical_and_a_saved_optimizer_continues_bit_for_bit():
    config, model, optimizer = built({key: value for key, value in FROZEN.items() if key != "log"})
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    for step in range(2):
        contrastive_step(model, optimizer, learning_rate(step, 8, config))
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    frozen = set(start) - trained - {"log_temperature"}
    assert len(frozen) == 2 * 3 + 5 + 16  # tiny-cnn's first two blocks, the text embeddings and its first layer
    now = dict(model.named_parameters())
    assert all(torch.equal(now[name], start[name]) for name in frozen)
    assert all(not torch.equal(now[name], start[name]) for name in trained)
    # a `last` checkpoint's optimizer state loads into the optimizer a resumed run builds: same groups, same steps
    saved = saved_and_loaded(optimizer.state_dict())
    torch.manual_seed(1)
    twin = DualEncoder(config.model, audio_weights="random")
    twin.load_state_dict(model.state_dict())
    freeze_layers(twin, config.finetune)
    resumed = build_optimizer(twin, config)
    resumed.load_state_dict(saved)
    assert [{k: v for k, v in group.items() if k != "params"} for group in resumed.param_groups] == \
        [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    assert [group["lr_scale"] for group in resumed.param_groups] == [0.5, 1.0, 2.0]
    # (audio block 2; audio block 3 with text layer 1; the projections at lr_heads 2e-3)
    for network, steps in ((model, optimizer), (twin, resumed)):
        torch.manual_seed(2)  # the same dropout masks
        contrastive_step(network, steps, learning_rate(2, 8, config))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


@pytest.mark.slow  # three short training runs: a few seconds
def test_frozen_tensors_stay_bit_identical_the_others_train_and_the_groups_resume_bit_for_bit(tiny_training,
                                                                                               tmp_path):
    """Two optimizer steps of the real loop leave the frozen blocks exactly as initialised and change every
    parameter that trains; a run stopped there and resumed ends bit for bit as an uninterrupted one, with the
    groups' scales restored from ``last``; ``runs show`` prints the section."""
    overrides = {**tiny_training, **FROZEN}
    straight = training.train_new(tmp_path / "a", build_config(None, {**overrides, "max_steps": 3}))
    stopped = training.train_new(tmp_path / "b", build_config(None, {**overrides, "max_steps": 2}))
    assert straight.step == 3 and stopped.status == "stopped" and stopped.step == 2
    at_two = torch.load(Registry(tmp_path / "b").file(stopped.run, "checkpoint", "last").path, weights_only=True)
    config = build_config(None, overrides)
    torch.manual_seed(config.seed)  # the builder's initialisation
    initial = DualEncoder(config.model, audio_weights=config.audio_weights)
    freeze_layers(initial, config.finetune)
    trained = {name for name, p in initial.named_parameters() if p.requires_grad}
    frozen = {name for name, _ in initial.named_parameters()} - trained - {"log_temperature"}
    assert len(frozen) == 2 * 3 + 5 + 16  # tiny-cnn's first two blocks, the text embeddings and its first layer
    start = initial.state_dict()
    assert all(torch.equal(at_two["model"][name], start[name]) for name in frozen)
    assert all(not torch.equal(at_two["model"][name], start[name]) for name in trained)
    scales = [group["lr_scale"] for group in at_two["optimizer"]["param_groups"]]
    assert scales == [group["lr_scale"] for group in parameter_groups(initial, config)] == [0.5, 1.0, 2.0]
    # (audio block 2; audio block 3 with text layer 1; the projections at lr_heads 2e-3)

    resumed = training.resume(tmp_path / "b", stopped.run, max_steps=3)
    assert resumed.step == 3
    expected = torch.load(Registry(tmp_path / "a").file(straight.run, "checkpoint", "last").path, weights_only=True)
    actual = torch.load(Registry(tmp_path / "b").file(stopped.run, "checkpoint", "last").path, weights_only=True)
    assert all(torch.equal(expected["model"][key], actual["model"][key]) for key in expected["model"])
    assert expected["optimizer"]["param_groups"] == actual["optimizer"]["param_groups"]
    lr = learning_rate(2, 8, config)  # the last step's: the schedule's rate of step 2 (of 8 an epoch) times the scale
    assert [group["lr"] for group in actual["optimizer"]["param_groups"]] == pytest.approx(
        [lr * scale for scale in scales], rel=1e-15)

    shown = CliRunner().invoke(main, ["--workdir", str(tmp_path / "b"), "runs", "show", stopped.run, "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["config"]["finetune"] == {
        "audio_frozen_blocks": 2, "text_frozen_blocks": 1, "layer_decay": 0.5, "lr_audio": None, "lr_text": None,
        "lr_heads": 2e-3, "no_decay_bias_norm": False}


@pytest.mark.slow  # builds PaSST, BEATs and EAT at their real sizes (random weights): about 10 s
@pytest.mark.parametrize("backbone", ["passt", "beats", "eat"])
def test_every_block_of_the_real_backbones_gets_lr_times_decay_to_its_depth(backbone):
    """12 blocks, block i at lr_audio * 0.8**(11 - i), the embeddings lowest (0.8**12), parameters above the blocks
    (PaSST's final norm) at lr_audio; then the first 3 blocks and the embeddings frozen leave the optimizer."""
    config, model, optimizer = built({"model.backbone": backbone, "finetune.layer_decay": 0.8,
                                      "finetune.lr_audio": 3e-5})
    found = rates(optimizer)
    layers = model.audio.encoder_layers()
    assert len(layers.blocks) == 12
    names = {id(p): name for name, p in model.audio.named_parameters()}
    assert {names[id(p)] for p in layers.embeddings} == {
        "passt": {"net.cls_token", "net.dist_token", "net.new_pos_embed", "net.freq_new_pos_embed",
                  "net.time_new_pos_embed", "net.patch_embed.proj.weight", "net.patch_embed.proj.bias"},
        "beats": {"net.patch_embedding.weight", "net.layer_norm.weight", "net.layer_norm.bias",
                  "net.post_extract_proj.weight", "net.post_extract_proj.bias", "net.encoder.pos_conv.0.weight_g",
                  "net.encoder.pos_conv.0.weight_v", "net.encoder.pos_conv.0.bias", "net.encoder.layer_norm.weight",
                  "net.encoder.layer_norm.bias"},
        "eat": {"cls_token", "patch_embed.weight", "patch_embed.bias", "input_norm.weight", "input_norm.bias"},
    }[backbone]
    assert {found[id(p)][0] for p in layers.embeddings} == {3e-5 * 0.8 ** 12}
    first = {id(p) for p in layers.blocks[0].parameters()}  # BEATs' relative-position table: every layer's, the first's
    for index, block in enumerate(layers.blocks):
        assert {found[id(p)][0] for p in block.parameters() if index == 0 or id(p) not in first} == \
            {3e-5 * 0.8 ** (11 - index)}, index
    above = [names[id(p)] for p in model.audio.parameters() if found[id(p)][0] == 3e-5
             and not any(p is q for q in layers.blocks[-1].parameters())]
    assert above == {"passt": ["net.norm.weight", "net.norm.bias"], "beats": [], "eat": []}[backbone]
    assert len(found) == sum(1 for _ in model.parameters()) - 1  # all but the fixed temperature

    freeze_layers(model, build_config(None, {**TINY, "model.backbone": backbone,
                                             "finetune.audio_frozen_blocks": 3}).finetune)
    trained = set(rates(build_optimizer(model, config)))
    frozen = {id(p) for p in [*layers.embeddings, *(p for block in layers.blocks[:3] for p in block.parameters())]}
    for p in model.audio.parameters():
        assert p.requires_grad == (id(p) not in frozen) == (id(p) in trained), names[id(p)]


@pytest.mark.slow  # torchrun, two processes, the real PaSST architecture and a hub-layout RoBERTa: about a minute
def test_torchrun_trains_passt_with_frozen_blocks_and_layer_decay(roberta_with_pooler, tmp_path):
    """Both processes: the loss is finite, the frozen blocks are bit for bit as initialised, the rest trained."""
    import subprocess

    from dcase_t6.data.layout import Layout
    from dcase_t6.data.synthetic import SyntheticConfig, prepare_synthetic

    root = tmp_path / "data"
    prepare_synthetic(Layout.at(root), SyntheticConfig(development=2, validation=1, evaluation=1, min_duration=8.0,
                                                       max_duration=12.0))
    overrides = {"data_root": str(root), "datasets": "synthetic", "model.backbone": "passt", "audio_weights": "random",
                 "model.text_model": str(roberta_with_pooler), "batch_size": 4, "epochs": 1, "max_steps": 2,
                 "precision": "fp32", "log": "none", "finetune.audio_frozen_blocks": 9,
                 "finetune.text_frozen_blocks": 1, "finetune.layer_decay": 0.75, "finetune.lr_text": 1e-5,
                 "finetune.lr_heads": 1e-3}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(Path(__file__).parent / "helpers" / "finetune_ranks.py"), str(tmp_path / "work"),
               str(tmp_path / "out"), json.dumps(overrides)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr[-3000:]
    reports = [json.loads((tmp_path / "out" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for rank, report in enumerate(reports):
        assert report["step"] == 2 and report["losses"] and all(math.isfinite(x) for x in report["losses"]), rank
        assert report["frozen"] > 0 and report["frozen_changed"] == [], rank
        assert report["trained"] > 0 and report["trained_unchanged"] == [], rank
        assert report["groups"] == 3 + 1 + 1, rank  # audio blocks 11 (with the final norm), 10, 9; text layer 1; heads
    assert reports[0]["digest"] == reports[1]["digest"]  # DDP kept the processes' weights equal
