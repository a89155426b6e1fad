"""`embed` in shards and in resumable chunks (``embedding.sharded``, ``embedding.partial``): the shard and chunk
arithmetic, one process giving the vectors of unsharded batches, the resume bookkeeping (an interrupted embedding
embeds only its unfinished chunks; chunks of other weights, items, settings or numbers of processes are removed,
never mixed in), the options' refusals, and the gather of uneven shards across gloo processes."""

import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from dcase_t6.common.reporting import Recorder
from dcase_t6.embedding import partial, sharded
from dcase_t6.embedding.encode import Clips, EncodeSettings, embed_audio, embed_text
from dcase_t6.embedding.partial import Recipe, chunk_ranges
from dcase_t6.embedding.sharded import ShardedJob, embed_split, finish
from dcase_t6.models import DualEncoder, ModelConfig
from dcase_t6.runs.config import DEFAULT_TIMEOUT_MINUTES
from dcase_t6.runs.world import World
from helpers.cli import cli_error, free_port

CAPTIONS = [f"caption number {index} of a sound" for index in range(11)]
PATHS = [f"clips/{index}.wav" for index in range(7)]


class Interrupted(Exception):
    """Stands in for a kill between two batches (the real signal is tested in test_embed_torchrun.py)."""


def read_clip(path, max_samples: int) -> np.ndarray:
    """A clip of 0.3-0.5 s of noise, the same for the same path."""
    index = int(str(path).split("/")[-1].split(".")[0])
    generator = np.random.default_rng(index)
    return generator.standard_normal(min(max_samples, 4800 + 800 * (index % 3))).astype(np.float32)


@pytest.fixture(scope="module")
def model() -> DualEncoder:
    torch.manual_seed(0)
    return DualEncoder(ModelConfig(backbone="tiny-cnn", text_model="tiny-random", embed_dim=8), audio_weights=None)


def clips() -> Clips:
    return Clips(PATHS, read_clip, 8000)


def make_job(tmp_path, model, batch_size=2, chunk_batches=1, checkpoint="weights-1") -> ShardedJob:
    return ShardedJob(model, EncodeSettings(batch_size, torch.device("cpu")), World(),
                      tmp_path / "synthetic.development-testing.embeddings.partial", checkpoint, chunk_batches)


class Counting:
    """Counts the model's forward passes (batches) of each kind; raises ``Interrupted`` after ``stop_after`` text
    batches when given."""

    def __init__(self, model, monkeypatch, stop_after: int | None = None):
        self.audio = self.text = 0
        audio, text = model.encode_audio, model.encode_text

        def encode_audio(*args):
            self.audio += 1
            return audio(*args)

        def encode_text(captions):
            if stop_after is not None and self.text == stop_after:
                raise Interrupted
            self.text += 1
            return text(captions)

        monkeypatch.setattr(model, "encode_audio", encode_audio)
        monkeypatch.setattr(model, "encode_text", encode_text)


def uninterrupted(tmp_path, model, **settings):
    job = make_job(tmp_path / "reference", model, **settings)
    vectors = embed_split(job, clips(), CAPTIONS)
    finish(job)
    return vectors


@pytest.mark.parametrize("total", range(0, 13))
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_shards_are_contiguous_and_balanced_and_chunks_cut_them_in_whole_batches(total, size):
    shards = [World(rank, size).shard(range(total)) for rank in range(size)]
    assert [row for shard in shards for row in shard] == list(range(total))
    lengths = [len(shard) for shard in shards]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)
    for shard in shards:
        chunks = chunk_ranges(shard, 4)
        assert [row for chunk in chunks for row in chunk] == list(shard)
        assert all(len(chunk) == 4 for chunk in chunks[:-1]) and all(1 <= len(chunk) <= 4 for chunk in chunks)


def test_one_process_gives_the_vectors_of_unsharded_batches_and_removes_its_partial_folder(tmp_path, model):
    """Alone, chunks of whole batches start where unsharded batches start: the same vectors, bit for bit."""
    job = make_job(tmp_path, model, batch_size=2, chunk_batches=2)
    recorder = Recorder()
    vectors = embed_split(job, clips(), CAPTIONS, recorder, "development-testing")
    settings = job.settings
    assert np.array_equal(vectors.audio, embed_audio(model, clips(), settings))
    assert np.array_equal(vectors.text, embed_text(model, CAPTIONS, settings))
    assert (vectors.embedded, vectors.reused) == (2 + 3, 0)  # 7 clips and 11 captions in chunks of 4
    assert [(task["description"], task["total"], task["completed"]) for task in recorder.tasks] == [
        ("development-testing: audio", 7, 7), ("development-testing: captions", 11, 11)]  # as before: one bar each
    assert recorder.messages == []
    assert sorted(path.name for path in job.partial.iterdir()) == sorted(
        ["manifest.json"] + [f"audio-{a:09d}-{b:09d}.npz" for a, b in ((0, 4), (4, 7))]
        + [f"text-{a:09d}-{b:09d}.npz" for a, b in ((0, 4), (4, 8), (8, 11))])
    finish(job)
    assert not job.partial.exists()


def test_work_of_one_chunk_per_kind_keeps_no_partial_folder(tmp_path, model):
    """Redoing it costs no more than reloading it: a small split embeds as before, writing nothing but its output."""
    job = make_job(tmp_path, model, batch_size=4, chunk_batches=3)  # chunks of 12: 7 clips, 11 captions
    recorder = Recorder()
    vectors = embed_split(job, clips(), CAPTIONS, recorder, "split")
    assert not tmp_path.joinpath(job.partial.name).exists() and list(tmp_path.iterdir()) == []
    assert (vectors.embedded, vectors.reused) == (2, 0) and recorder.messages == []
    assert np.array_equal(vectors.text, embed_text(model, CAPTIONS, job.settings))
    job.partial.mkdir()  # one an earlier embedding in smaller chunks left
    partial.prepare(job.partial, {"text": "an old key"})
    finish(job)
    assert not job.partial.exists()


def test_an_interrupted_embedding_embeds_only_its_unfinished_chunks_and_equals_an_uninterrupted_one(
        tmp_path, model, monkeypatch):
    reference = uninterrupted(tmp_path, model)
    job = make_job(tmp_path, model)  # batches of 2, one per chunk: 4 chunks of audio, 6 of text
    with monkeypatch.context() as patch:
        Counting(model, patch, stop_after=3)
        with pytest.raises(Interrupted):
            embed_split(job, clips(), CAPTIONS)
    assert len(list(job.partial.glob("audio-*.npz"))) == 4 and len(list(job.partial.glob("text-*.npz"))) == 3
    recorder = Recorder()
    with monkeypatch.context() as patch:
        counted = Counting(model, patch)
        resumed = embed_split(job, clips(), CAPTIONS, recorder, "split")
    assert (counted.audio, counted.text) == (0, 3)  # the 3 unfinished text chunks, one batch each
    assert (resumed.embedded, resumed.reused) == (3, 7)
    assert recorder.messages == [("info", f"{job.partial}: resuming an interrupted embedding, 7 of 10 chunks "
                                          "already embedded")]
    assert [(task["total"], task["completed"]) for task in recorder.tasks] == [(7, 7), (11, 11)]
    assert np.array_equal(resumed.audio, reference.audio) and np.array_equal(resumed.text, reference.text)


@pytest.mark.parametrize(("change", "dropped", "embedded", "reused"), [
    ({"checkpoint": "weights-2"}, "audio and text", 4 + 6, 0),  # other weights
    ({"batch_size": 3}, "audio and text", 3 + 4, 0),  # other batch boundaries
    ({"chunk_batches": 2}, "audio and text", 2 + 3, 0),
    ({"captions": [*CAPTIONS[:-1], "another caption"]}, "text", 6, 4),  # other items: the audio chunks stay valid
])
def test_a_restart_with_other_weights_items_or_settings_starts_over_cleanly(tmp_path, model, monkeypatch, change,
                                                                              dropped, embedded, reused):
    job = make_job(tmp_path, model)
    with monkeypatch.context() as patch:
        Counting(model, patch, stop_after=3)
        with pytest.raises(Interrupted):
            embed_split(job, clips(), CAPTIONS)
    captions = change.pop("captions", CAPTIONS)
    settings = {"batch_size": 2, "chunk_batches": 1, "checkpoint": "weights-1", **change}
    recorder = Recorder()
    restarted = make_job(tmp_path, model, **settings)
    vectors = embed_split(restarted, clips(), captions, recorder)
    assert (vectors.embedded, vectors.reused) == (embedded, reused)
    assert recorder.messages[0] == ("info", f"{job.partial}: removed the finished chunks of {dropped} made with "
                                            "other weights, items, batch size, chunk size, number of processes or "
                                            "device; embedding them anew")
    reference = embed_split(make_job(tmp_path / "reference", model, **settings), clips(), captions)
    assert np.array_equal(vectors.audio, reference.audio) and np.array_equal(vectors.text, reference.text)


def test_chunks_of_another_number_of_processes_are_removed_not_mixed(tmp_path, model):
    """What two processes left (their shards place other chunk boundaries) is not reused by one process."""
    job = make_job(tmp_path, model)
    two = Recipe("weights-1", 2, 1, 2, "cpu")
    keys = {"audio": two.key("audio", ["max_samples=8000", *PATHS]), "text": two.key("text", CAPTIONS)}
    partial.prepare(job.partial, keys)
    for rows in chunk_ranges(World(0, 2).shard(range(7)), 2):
        partial.save_chunk(job.partial, "audio", rows, keys["audio"], np.zeros((len(rows), 8), np.float32))
    assert job.recipe != two and job.recipe.key("audio", ["max_samples=8000", *PATHS]) != keys["audio"]
    recorder = Recorder()
    vectors = embed_split(job, clips(), CAPTIONS, recorder)
    assert (vectors.embedded, vectors.reused) == (10, 0) and "removed the finished chunks of audio" in \
        recorder.messages[0][1]
    assert np.array_equal(vectors.audio, embed_audio(model, clips(), job.settings))


def test_a_damaged_or_foreign_chunk_is_embedded_again(tmp_path, model):
    job = make_job(tmp_path, model)
    reference = embed_split(job, clips(), CAPTIONS)
    damaged = partial.chunk_path(job.partial, "text", range(2, 4))
    damaged.write_bytes(damaged.read_bytes()[:50])  # cut short (a disk fault: writes are atomic)
    other = partial.chunk_path(job.partial, "audio", range(0, 2))  # a valid file of another key under this name
    partial.save_chunk(job.partial, "audio", range(0, 2), "another key", np.ones((2, 8), np.float32))
    assert other.is_file()
    again = embed_split(job, clips(), CAPTIONS)
    assert (again.embedded, again.reused) == (2, 8)
    assert np.array_equal(again.audio, reference.audio) and np.array_equal(again.text, reference.text)


def test_the_partial_folder_goes_but_what_someone_else_put_in_it_stays(tmp_path, model):
    job = make_job(tmp_path, model)
    embed_split(job, clips(), CAPTIONS)
    (job.partial / "notes.txt").write_text("mine")
    (job.partial / ".text-000000000-000000002.npz.1@host.abc.tmp").write_bytes(b"left by a killed writer")
    finish(job)
    assert [path.name for path in job.partial.iterdir()] == ["notes.txt"]


def test_the_recipe_key_changes_with_every_input_of_the_vectors():
    recipe = Recipe("weights", 32, 32, 1, "cpu")
    base = recipe.key("text", ["a", "b"])
    assert recipe.key("text", ["a", "b"]) == base and recipe.chunk_size == 1024
    others = [recipe.key("audio", ["a", "b"]), recipe.key("text", ["b", "a"]), recipe.key("text", ["ab"]),
              recipe.key("text", ["a", "b", ""])]
    for field, value in (("checkpoint", "other"), ("batch_size", 16), ("chunk_batches", 8), ("processes", 2),
                         ("device", "cuda")):
        others.append(Recipe(**{**vars(recipe), field: value}).key("text", ["a", "b"]))
    assert len({base, *others}) == len(others) + 1


@pytest.mark.parametrize(("option", "value", "fragment"), [
    ("--chunk-batches", "0", "--chunk-batches 0: the chunk size must be a whole number of batches between 1 and"),
    ("--chunk-batches", "70000", "--chunk-batches 70000: the chunk size"),
    ("--dist-timeout-minutes", "0", "--dist-timeout-minutes 0.0: the timeout must be in (0, 10080] (minutes: at"),
    ("--dist-timeout-minutes", "nan", "--dist-timeout-minutes nan: the timeout must be in (0, 10080]"),
    ("--dist-timeout-minutes", "20000", "--dist-timeout-minutes 20000.0: the timeout must be in (0, 10080]"),
])
def test_embed_refuses_a_bad_chunk_size_or_timeout_in_one_line(tmp_path, option, value, fragment):
    assert fragment in cli_error(tmp_path, "embed", "some-run", "--data-root", tmp_path, option, value)


def test_embed_waits_as_long_as_training_by_default():
    from dcase_t6.cli.embed import embed

    options = {parameter.name: parameter for parameter in embed.params}
    assert options["dist_timeout_minutes"].default == DEFAULT_TIMEOUT_MINUTES
    assert options["chunk_batches"].default == sharded.DEFAULT_CHUNK_BATCHES


def _gather_worker(rank: int, port: int, rows: list[int], results):
    from dcase_t6.runs.world import init_world

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(len(rows)), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    world = init_world(timeout_minutes=2)
    sharded.GATHER_ROWS = 2  # several blocks per process
    local = (np.arange(rows[rank] * 3, dtype=np.float32).reshape(-1, 3) + 100 * rank if rows[rank]
             else np.zeros((0, 0), np.float32))
    results[rank] = sharded.gather_rows(local, world)
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # three gloo processes on two cores: about 15 s
def test_uneven_shards_are_gathered_in_rank_order_on_the_main_process_only():
    rows = [3, 5, 0]  # uneven, one empty: the values travel unchanged and in order
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_gather_worker, args=(free_port(), rows, results), nprocs=3, join=True)
        results = dict(results)
    expected = np.concatenate([np.arange(n * 3, dtype=np.float32).reshape(-1, 3) + 100 * rank
                               for rank, n in enumerate(rows) if n])
    assert np.array_equal(results[0], expected) and results[0].dtype == np.float32
    assert results[1] is None and results[2] is None
