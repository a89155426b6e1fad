"""Distillation: the soft-target loss by hand, the teacher-ensemble lookup, and a teacher -> student run."""

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dcase_t6.common.errors import UserError
from dcase_t6.runs.config import build_config
from dcase_t6.runs.registry import Registry
from dcase_t6.training import trainer as training
from dcase_t6.training.data import load_pairs
from dcase_t6.training.distillation import TeacherSimilarity, ensure_embeddings, load_teachers, teacher_vectors
from dcase_t6.training.distributed import World
from dcase_t6.training.losses import distillation_loss
from dcase_t6.training.teacher_tables import shared_tables, tables_folder, write_tables


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


def test_training_tables_are_the_teachers_vectors_in_float16_shared_in_the_workdir(teacher_and_student):
    """The student's run wrote them; loading again maps the same folder. On the real (tiny) teacher's
    embeddings float16 moves the soft targets by less than the bound measured on random unit vectors."""
    workdir, teacher, _, config = teacher_and_student
    registry, pairs = Registry(workdir), load_pairs(config)
    student_config = dataclasses.replace(config, distill_from=[teacher])
    teachers = load_teachers(registry, student_config, pairs, World())
    assert teachers.audio.filename is not None and Path(teachers.audio.filename).parent.parent.name == "teacher-tables"
    assert len(list((workdir / "cache" / "teacher-tables").iterdir())) == 1  # the student's run wrote the same
    audio, text = teacher_vectors(registry, teacher, config, pairs.captions, pairs.clip_names)
    assert np.array_equal(teachers.audio, audio.astype(np.float16)) and np.array_equal(teachers.text,
                                                                                      text.astype(np.float16))
    rows = torch.arange(min(64, len(pairs.captions)))
    for dim in (0, 1):
        exact = torch.softmax(TeacherSimilarity(audio, text, pairs.clip_ids, 1)(rows, -torch.ones_like(rows)) / 0.05,
                              dim)
        half = torch.softmax(teachers(rows, -torch.ones_like(rows)) / 0.05, dim)
        assert (exact - half).abs().max().item() <= FLOAT16_TARGET_BOUND


def test_training_with_distillation_resumes_bit_for_bit(teacher_and_student, tiny_training):
    workdir, teacher, _, _ = teacher_and_student
    """A stop after 3 of the epoch's 8 steps and a resume equal the epoch straight."""
    settings = {**tiny_training, "validation_split": None, "log": "none", "distill_weight": 0.5,
                "distill_from": teacher}
    full = training.train_new(workdir, build_config(None, {**settings, "name": "straight"}))
    stopped = training.train_new(workdir, build_config(None, {**settings, "name": "stopped", "max_steps": 3}))
    resumed = training.resume(workdir, stopped.run)
    assert full.status == resumed.status == "finished" and resumed.step == full.step
    registry = Registry(workdir)
    weights = [torch.load(registry.file(run, "checkpoint", "last").path, weights_only=True)["model"]
               for run in (full.run, stopped.run)]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    losses_of = [[epoch["train_distillation"] for epoch in registry.run(run).epochs] for run in (full.run, stopped.run)]
    assert losses_of[0] == losses_of[1]


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


def test_teacher_lookups_read_the_batch_rows_from_the_host_tables_into_the_step_device():
    """The tables stay on the host (read-only memory maps in training); a lookup copies only the batch's rows
    and its partners' to the teachers' device and returns the similarity there."""
    audio, text = np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float16)
    teachers = TeacherSimilarity(audio[:3], text, np.array([0, 0, 1, 2, 2]), teachers=2)
    assert teachers.to(torch.device("meta")).audio is teachers.audio  # moving never copies the tables
    pairs, partners = torch.tensor([0, 3, 4]), torch.tensor([2, -1, 0])
    similarity = teachers(pairs, partners)
    assert similarity.dtype == torch.float32 and similarity.shape == (3, 3)
    assert {tensor.device.type for tensor in teachers.tensors().values()} == {"cpu"}


def _unit_tables(seed: int, rows: int = 64, dims: int = 1024, teachers: int = 3) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, teachers, dims)).astype(np.float32)
    return (vectors / np.linalg.norm(vectors, axis=2, keepdims=True)).reshape(rows, teachers * dims)


def _soft_targets(audio: np.ndarray, text: np.ndarray, tau: float = 0.05) -> list[torch.Tensor]:
    rows = torch.arange(len(audio))
    similarity = TeacherSimilarity(audio, text, np.arange(len(audio)), 3)(rows, torch.full_like(rows, -1))
    return [torch.softmax(similarity / tau, dim) for dim in (0, 1)]


# measured (docs/training.md, distillation): <= 1.7e-5 on random unit vectors (3 teachers x 1024 dims, batch 64,
# distill_temperature 0.05, 100 batches), <= 3.1e-5 when captions lie near their clips
FLOAT16_TARGET_BOUND = 5e-5


def test_float16_tables_move_the_soft_targets_by_at_most_the_measured_bound():
    for seed in range(4):
        audio, text = _unit_tables(2 * seed), _unit_tables(2 * seed + 1)
        exact = _soft_targets(audio, text)
        rounded = _soft_targets(audio.astype(np.float16), text.astype(np.float16))
        assert max((a - b).abs().max().item() for a, b in zip(exact, rounded)) <= FLOAT16_TARGET_BOUND


def test_the_loss_from_float16_tables_is_the_loss_from_the_float32_tables_rounded_to_float16():
    """Bit for bit, mixed pairs included; against float32 tables the loss moves by at most 1e-5 (measured:
    <= 4.8e-6 over 100 batches of 64, 3 teachers x 1024 dims, a unit-vector student at temperature 0.05)."""
    audio, text = _unit_tables(0, rows=40), _unit_tables(1)
    clip_ids = np.arange(64) * 40 // 64
    pairs = torch.arange(64)
    partners = torch.where(pairs % 5 == 0, (pairs * 7) % 64, -1)
    student_audio, student_text = (torch.from_numpy(_unit_tables(seed, dims=256, teachers=1)) for seed in (2, 3))
    student = student_audio @ student_text.T / 0.05

    def loss(a, t):
        return distillation_loss(student, TeacherSimilarity(a, t, clip_ids, 3)(pairs, partners), 0.05)

    half = loss(audio.astype(np.float16), text.astype(np.float16))
    widened = [table.astype(np.float16).astype(np.float32) for table in (audio, text)]
    assert torch.equal(half, loss(*widened))
    assert abs(half.item() - loss(audio, text).item()) <= 1e-5


def test_tables_are_written_once_atomically_and_mapped_read_only(tmp_path):
    audio, text = np.ones((2, 6), np.float32) / 3, np.full((3, 6), 0.1, np.float32)
    folder = tables_folder(tmp_path, ["sha-a", "sha-b"], ["x", "y", "z"], ["c1", "c2"])
    assert folder != tables_folder(tmp_path, ["sha-a", "sha-b"], ["y", "x", "z"], ["c1", "c2"])  # pair order
    built = []

    def build():
        built.append(1)
        return audio, text

    tables = shared_tables(folder, build, World())
    assert shared_tables(folder, build, World()).folder == folder and built == [1]  # the second call reuses it
    assert not write_tables(folder, audio * 2, text)  # a writer finding the folder leaves it as it is
    assert tables.audio.dtype == np.float16 and np.array_equal(tables.audio, audio.astype(np.float16))
    assert isinstance(tables.text, np.memmap) and not tables.text.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        tables.text[0, 0] = 1
    assert [path.name for path in folder.parent.iterdir()] == [folder.name]  # no partial folder left


@pytest.mark.slow  # a second Python process (imports torch)
def test_a_second_process_reuses_the_tables_another_wrote(tmp_path):
    folder = tmp_path / "tables"
    assert write_tables(folder, np.zeros((2, 4), np.float32), np.zeros((3, 4), np.float32))
    written = (folder / "audio.npy").stat().st_mtime_ns
    script = ("import sys, numpy as np; from pathlib import Path; "
              "from dcase_t6.training.teacher_tables import open_tables, write_tables; "
              "folder = Path(sys.argv[1]); print(write_tables(folder, np.ones((2, 4)), np.ones((3, 4))), "
              "open_tables(folder).audio.sum())")
    result = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "0.0"] and (folder / "audio.npy").stat().st_mtime_ns == written


def test_the_objective_names_a_teacher_table_on_another_device():
    from dcase_t6.runs.config import TrainConfig
    from dcase_t6.training.distributed import World
    from dcase_t6.training.objective import build_objective

    teachers = TeacherSimilarity(torch.randn(2, 4), torch.randn(3, 4), torch.tensor([0, 0, 1]), 1)
    assert len(build_objective(TrainConfig(), World(), teachers).terms) == 2
    with pytest.raises(AssertionError, match=r"^objective: teachers' audio is on meta, the step runs on cpu$"):
        build_objective(TrainConfig(), World(), teachers.to(torch.device("meta")))
