"""Distillation: the soft-target loss by hand, the teacher-ensemble lookup, and a teacher -> student run."""

import math

import numpy as np
import pytest
import torch

from dcase_t6.common.errors import UserError
from dcase_t6.runs.config import build_config
from dcase_t6.runs.registry import Registry
from dcase_t6.training import trainer as training
from dcase_t6.training.data import load_pairs
from dcase_t6.training.distillation import TeacherSimilarity, ensure_embeddings, teacher_vectors
from dcase_t6.training.losses import distillation_loss


def test_distillation_loss_of_a_2x2_case_computed_by_hand():
    tau = 0.05
    teacher = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(3.0)]]) * tau  # targets 3/4, 1/4 both ways
    student = torch.tensor([[math.log(2.0), 0.0], [0.0, math.log(2.0)]])  # student probabilities 2/3, 1/3
    expected = 0.75 * math.log(3 / 2) + 0.25 * math.log(3)  # H([3/4, 1/4], [2/3, 1/3]) = 0.5787...
    assert distillation_loss(student, teacher, tau).item() == pytest.approx(expected, abs=1e-6)


def test_distillation_loss_takes_each_direction_over_its_own_axis():
    teacher = torch.tensor([[0.9, 0.1], [0.3, 0.6]])
    student = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    tau = 0.2

    def cross_entropy(targets, logits):
        p = np.exp(targets) / np.exp(targets).sum()
        return -(p * (logits - np.log(np.exp(logits).sum()))).sum()

    c, s = teacher.numpy() / tau, student.numpy()
    over_audios = np.mean([cross_entropy(c[:, j], s[:, j]) for j in range(2)])
    over_captions = np.mean([cross_entropy(c[i, :], s[i, :]) for i in range(2)])
    expected = 0.5 * (over_audios + over_captions)
    assert distillation_loss(student, teacher, tau).item() == pytest.approx(expected, rel=1e-6)


def test_loss_is_smallest_when_the_student_matches_the_teacher():
    teacher = torch.tensor([[0.8, 0.2, 0.1], [0.3, 0.7, 0.0], [0.1, 0.1, 0.9]])
    matching = distillation_loss(teacher / 0.05, teacher, 0.05)
    generator = torch.Generator().manual_seed(0)
    perturbed = [teacher / 0.05 + 0.3 * torch.randn(3, 3, generator=generator) for _ in range(5)]
    assert all(distillation_loss(student, teacher, 0.05) > matching for student in perturbed)


def test_teacher_similarity_is_the_mean_over_teachers_and_averages_mixed_pairs():
    first_audio = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    first_text = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    second_audio = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    second_text = torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.0, 1.0]])
    clip_ids = torch.tensor([0, 0, 1])  # pairs 0 and 1 describe clip 0, pair 2 clip 1
    teachers = TeacherSimilarity(torch.cat([first_audio, second_audio], 1), torch.cat([first_text, second_text], 1),
                                 clip_ids, teachers=2)
    pairs, no_partner = torch.tensor([0, 2]), torch.tensor([-1, -1])
    expected = 0.5 * (first_audio[[0, 1]] @ first_text[[0, 2]].T + second_audio[[0, 1]] @ second_text[[0, 2]].T)
    assert torch.allclose(teachers(pairs, no_partner), expected)
    mixed = teachers(pairs, torch.tensor([2, -1]))  # pair 0 mixed with clip 1 (pair 2)
    audio = torch.cat([first_audio, second_audio], 1)
    text = torch.cat([first_text, second_text], 1)
    mixed_audio, mixed_text = 0.5 * (audio[0] + audio[1]), 0.5 * (text[0] + text[2])
    assert mixed[0, 1].item() == pytest.approx((mixed_audio @ text[2]).item() / 2)
    assert mixed[0, 0].item() == pytest.approx((mixed_audio @ mixed_text).item() / 2)
    assert mixed[1, 1].item() == pytest.approx(expected[1, 1].item())


@pytest.fixture(scope="module")
def teacher_and_student(tmp_path_factory, tiny_training):
    overrides = tiny_training
    workdir = tmp_path_factory.mktemp("work")
    teacher = training.train_new(workdir, build_config(None, {**overrides, "name": "teacher"}))
    student_settings = {**overrides, "name": "student", "distill_weight": 0.5, "distill_from": teacher.run[:9]}
    student = training.train_new(workdir, build_config(None, student_settings))
    return workdir, teacher.run, student.run, build_config(None, overrides)


def test_student_run_records_teacher_ids_and_the_weighted_loss(teacher_and_student):
    workdir, teacher, student, _ = teacher_and_student
    run = Registry(workdir).run(student)
    assert run.status == "finished" and run.config["distill_from"] == [teacher]
    epoch = run.epochs[0]
    assert epoch["train_distillation"] > 0
    expected = epoch["train_contrastive"] + 0.5 * epoch["train_distillation"]
    assert epoch["train_loss"] == pytest.approx(expected, rel=1e-6)  # float32 sums


def test_teacher_embeddings_of_the_training_split_are_made_once_without_a_matrix(teacher_and_student):
    workdir, teacher, _, config = teacher_and_student
    registry = Registry(workdir)
    files = {(f.kind, f.tag): f for f in registry.run(teacher).files}
    assert ("embeddings", "synthetic/development-training") in files
    assert ("similarity", "synthetic/development-training") not in files
    before = files["embeddings", "synthetic/development-training"].path.stat().st_mtime_ns
    ensure_embeddings(registry, teacher, config)
    assert files["embeddings", "synthetic/development-training"].path.stat().st_mtime_ns == before


def test_teacher_vectors_follow_clips_and_captions_of_the_pairs(teacher_and_student):
    workdir, teacher, _, config = teacher_and_student
    registry = Registry(workdir)
    pairs = load_pairs(config)
    audio, text = teacher_vectors(registry, teacher, config, pairs.captions, pairs.clip_names)
    with np.load(registry.file(teacher, "embeddings", "synthetic/development-training").path) as data:
        clip_row = {f"synthetic/{name}": row for row, name in enumerate(data["files"].tolist())}
        caption_row = {caption: row for row, caption in enumerate(data["queries"].tolist())}
        assert np.array_equal(audio, data["audio"][[clip_row[name] for name in pairs.clip_names]])
        assert np.array_equal(text, data["text"][[caption_row[caption] for caption in pairs.captions]])
    with pytest.raises(UserError, match="lack 'a caption the teacher never saw'"):
        teacher_vectors(registry, teacher, config, ["a caption the teacher never saw"], pairs.clip_names)


def test_config_lists_teachers_and_rejects_unknown_section_keys_by_name():
    config = build_config(None, {"distill_from": "a-1, b-2", "caption_augmentation.deletion_p": 0.8})
    assert config.distill_from == ["a-1", "b-2"] and config.caption_augmentation.deletion_p == 0.8
    with pytest.raises(UserError, match="unknown config key 'clusters.colour'"):
        build_config(None, {"clusters.colour": "red"})
    with pytest.raises(UserError, match="config key 'audio_mix' must be a mapping"):
        build_config(None, {"audio_mix": 0.5})


def test_contrastive_weight_0_trains_on_distillation_alone(teacher_and_student, tiny_training):
    """salsa's stage 2: loss = distill_weight * distillation; the contrastive term is still logged."""
    workdir, teacher, _, _ = teacher_and_student
    settings = {**tiny_training, "name": "alone", "contrastive_weight": 0, "distill_weight": 2.0,
                "distill_from": teacher}
    run = Registry(workdir).run(training.train_new(workdir, build_config(None, settings)).run)
    epoch = run.epochs[0]
    assert epoch["train_contrastive"] > 0 and epoch["train_distillation"] > 0
    assert epoch["train_loss"] == pytest.approx(2.0 * epoch["train_distillation"], rel=1e-6)


def test_a_teacher_is_embedded_with_its_own_input_settings(tmp_path, tiny_training):
    """The teacher saw 1.5 s of audio; the student takes 2 s: the teacher's targets use 1.5 s."""
    teacher = training.train_new(tmp_path, build_config(None, {**tiny_training, "name": "short",
                                                                  "audio_seconds": 1.5})).run
    training.train_new(tmp_path, build_config(None, {**tiny_training, "name": "student", "distill_from": teacher}))
    record = Registry(tmp_path).file(teacher, "embeddings", "synthetic/development-training")
    assert record.info["audio_seconds"] == 1.5


def test_teacher_lookups_stay_on_the_tables_device_and_read_no_value():
    """All on the meta device, which has no values: a lookup that copied to the CPU (the old ``pairs.cpu()``,
    a device error beside a CUDA batch) or read a value on the host (a device sync per step) fails here."""
    audio, text = torch.randn(3, 4), torch.randn(5, 4)
    teachers = TeacherSimilarity(audio, text, torch.tensor([0, 0, 1, 2, 2]), teachers=2).to(torch.device("meta"))
    assert {tensor.device.type for tensor in teachers.tensors().values()} == {"meta"}
    pairs, partners = torch.tensor([0, 3, 4], device="meta"), torch.tensor([2, -1, 0], device="meta")
    similarity = teachers(pairs, partners)
    assert similarity.device.type == "meta" and similarity.shape == (3, 3)


def test_the_objective_names_a_teacher_table_on_another_device():
    from dcase_t6.runs.config import TrainConfig
    from dcase_t6.training.distributed import World
    from dcase_t6.training.objective import build_objective

    teachers = TeacherSimilarity(torch.randn(2, 4), torch.randn(3, 4), torch.tensor([0, 0, 1]), 1)
    assert len(build_objective(TrainConfig(), World(), teachers).terms) == 2
    with pytest.raises(AssertionError, match=r"^objective: teachers' audio is on meta, the step runs on cpu$"):
        build_objective(TrainConfig(), World(), teachers.to(torch.device("meta")))
