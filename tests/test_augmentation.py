"""Caption and audio augmentation: hand-checked edits, seeded determinism, file joins and a training run."""

import numpy as np
import pytest

from dcase_t6.common.errors import UserError
from dcase_t6.runs.config import build_config
from dcase_t6.runs.registry import Registry
from dcase_t6.training import trainer as training
from dcase_t6.training.augmentation import NO_PAIR, PairAugmenter, WordEdits, load_synonyms, mix_clips, wordnet_synonyms
from dcase_t6.training.data import BatchSource, CaptionPairs, TrainingData, load_pairs
from dcase_t6.training.distributed import World

CAPTIONS = ["A loud dog barks.", "The dog barks loudly.", "Rain falls on a car roof.", "Rain on the car."]
CLIP_IDS = np.array([0, 0, 1, 1])
CLIP_NAMES = np.array(["synthetic/dog.wav", "synthetic/rain.wav"])


def augmenter(**settings) -> PairAugmenter:
    return PairAugmenter(build_config(None, {"datasets": "synthetic", **settings}), CAPTIONS, CLIP_IDS, CLIP_NAMES)


def test_deletion_removes_the_drawn_word():
    edits = WordEdits(deletion_p=0.5, synonym_p=0.0, synonyms={})
    assert edits.apply("A loud dog barks.", np.array([0.49, 0.3, 0.0, 0.0, 0.0])) == "A dog barks."
    assert edits.apply("A loud dog barks.", np.array([0.51, 0.3, 0.0, 0.0, 0.0])) == "A loud dog barks."
    assert edits.apply("Silence.", np.array([0.0, 0.0, 0.0, 0.0, 0.0])) == "Silence."


def test_synonym_replacement_picks_the_drawn_word_and_synonym_and_keeps_punctuation():
    edits = WordEdits(deletion_p=0.0, synonym_p=0.8, synonyms={"dog": ("hound", "canine"), "barks": ("yelps",)})
    # replaceable words: dog (index 2), barks. (index 3); 0.1 -> dog, 0.6 -> the second synonym
    assert edits.apply("A loud dog barks.", np.array([1.0, 0.0, 0.7, 0.1, 0.6])) == "A loud canine barks."
    assert edits.apply("A loud dog barks.", np.array([1.0, 0.0, 0.7, 0.9, 0.0])) == "A loud dog yelps."
    assert edits.apply("A loud dog barks.", np.array([1.0, 0.0, 0.9, 0.1, 0.6])) == "A loud dog barks."
    assert edits.apply("Nothing to replace", np.array([1.0, 0.0, 0.0, 0.5, 0.5])) == "Nothing to replace"


def test_synonym_table_from_a_tsv_file_keeps_only_caption_words(tmp_path):
    table = tmp_path / "synonyms.tsv"
    table.write_text("Dog\thound, canine\nengine\tmotor\n\n", encoding="utf-8")
    assert load_synonyms(str(table), {"dog", "rain"}) == {"dog": ("hound", "canine")}
    table.write_text("dog hound\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"synonyms.tsv:1: expected word<TAB>synonym1,synonym2"):
        load_synonyms(str(table), {"dog"})


def test_wordnet_gives_synonyms_of_content_words_only():
    synonyms = wordnet_synonyms({"car", "rain", "the", "on", "loudly", "xyzzy"})
    assert "automobile" in synonyms["car"] and "rainfall" in synonyms["rain"] and "softly" not in synonyms["loudly"]
    assert not {"the", "on", "xyzzy"} & set(synonyms)


def test_plans_are_seeded_per_batch_and_follow_the_probabilities(tmp_path):
    table = tmp_path / "synonyms.tsv"
    table.write_text("dog\thound\nrain\tdrizzle\n", encoding="utf-8")
    pairs = augmenter(**{"caption_augmentation.deletion_p": 0.5, "caption_augmentation.synonym_p": 0.5,
                                   "caption_augmentation.synonyms_file": str(table)})
    batch = np.arange(4)
    first = pairs.plan(batch, np.random.default_rng([0, 0, 3, 1]))
    assert first.captions == pairs.plan(batch, np.random.default_rng([0, 0, 3, 1])).captions
    many = np.tile(batch, 500)
    plan = pairs.plan(many, np.random.default_rng([0, 1, 0, 1]))
    shorter = np.mean([len(c.split()) < len(CAPTIONS[p].split()) for c, p in zip(plan.captions, many)])
    assert shorter == pytest.approx(0.5, abs=0.05)
    assert any("hound" in c for c in plan.captions) and any("drizzle" in c for c in plan.captions)
    assert not plan.mixed.any()


def test_extra_captions_replace_captions_of_their_clip(tmp_path):
    extra = tmp_path / "backtranslated.csv"
    extra.write_text("file_name,caption\ndog.wav,A dog is barking loudly.\nunknown.wav,ignored\n", encoding="utf-8")
    pairs = augmenter(**{"caption_augmentation.extra_captions_file": str(extra),
                                   "caption_augmentation.extra_captions_p": 1.0})
    plan = pairs.plan(np.arange(4), np.random.default_rng(0))
    assert plan.captions == ["A dog is barking loudly.", "A dog is barking loudly.", CAPTIONS[2], CAPTIONS[3]]
    extra.write_text("file_name,caption\nunknown.wav,x\n", encoding="utf-8")
    with pytest.raises(UserError, match="no row names a clip of synthetic/development-training"):
        augmenter(**{"caption_augmentation.extra_captions_file": str(extra)})


def test_audio_mix_pairs_clips_with_their_merged_caption(tmp_path):
    merged = tmp_path / "mixes.csv"
    merged.write_text("file_name_1,file_name_2,caption,dataset\ndog.wav,rain.wav,A dog barks in the rain.,synthetic\n",
                      encoding="utf-8")
    pairs = augmenter(**{"audio_mix.p": 1.0, "audio_mix.merged_captions_file": str(merged)})
    plan = pairs.plan(np.array([1, 3]), np.random.default_rng(0))
    assert plan.captions == ["A dog barks in the rain."] * 2
    assert plan.partners.tolist() == [2, 0]  # the first pair of the other clip
    with pytest.raises(UserError, match="'audio_mix.merged_captions_file' is empty but its probability is > 0"):
        augmenter(**{"audio_mix.p": 0.5})
    merged.write_text("file_name,caption\n", encoding="utf-8")
    with pytest.raises(UserError, match="mixes.csv: missing column 'file_name_1'"):
        augmenter(**{"audio_mix.p": 0.5, "audio_mix.merged_captions_file": str(merged)})


class _ConstantClips:
    """A clip store whose clip at path 'k' is k+1 everywhere."""

    def clip(self, path, max_samples=None, offset=0.0):
        return np.full(10, float(str(path)) + 1.0, dtype=np.float32)[:max_samples]


def _constant_batch_source(pairs: CaptionPairs, pair_augmenter: PairAugmenter) -> BatchSource:
    """Epoch 0 of seed 0 with one batch, pairs 1 and 3, of 10-sample clips of ``_ConstantClips``."""
    data = TrainingData(pairs, _ConstantClips(), pair_augmenter, max_samples=10, batch_size=2, seed=0, workers=0,
                        world=World(), data_root="unused")
    return BatchSource(data, 0, [np.array([1, 3])])


def test_batch_source_mixes_waveforms_and_gives_mixed_pairs_new_ids(tmp_path):
    merged = tmp_path / "mixes.csv"
    merged.write_text("file_name_1,file_name_2,caption\ndog.wav,rain.wav,A dog barks in the rain.\n", encoding="utf-8")
    pairs = CaptionPairs(["0", "1", "2", "3"], CAPTIONS, CLIP_IDS, CLIP_NAMES, "x")
    mixer = augmenter(**{"audio_mix.p": 1.0, "audio_mix.merged_captions_file": str(merged)})
    source = _constant_batch_source(pairs, mixer)
    batch = source[0]
    assert batch.clip_ids.tolist() == [-1, -2] and batch.partners.tolist() == [2, 0]
    assert np.allclose(batch.waveforms[0].numpy(), 0.5 * (2 + 3)) and np.allclose(batch.waveforms[1].numpy(), 2.5)
    assert mix_clips(np.ones(2, np.float32), np.ones(4, np.float32)).tolist() == [1.0, 1.0, 0.5, 0.5]
    plain = _constant_batch_source(pairs, augmenter())
    assert plain[0].clip_ids.tolist() == [0, 1] and (plain[0].partners == NO_PAIR).all()


def test_training_with_every_augmentation_is_reproducible(tiny_training, tmp_path):
    files = [name.split("/", 1)[1] for name in load_pairs(build_config(None, tiny_training)).clip_names]
    extra, merged = tmp_path / "extra.csv", tmp_path / "merged.csv"
    extra.write_text("file_name,caption\n" + "".join(f'"{f}",another view of it\n' for f in files), encoding="utf-8")
    merged.write_text("file_name_1,file_name_2,caption\n" +
                      "".join(f'"{a}","{b}",both at once\n' for a, b in zip(files, files[1:])), encoding="utf-8")
    settings = {**tiny_training, "caption_augmentation.deletion_p": 0.5, "caption_augmentation.synonym_p": 0.5,
                "caption_augmentation.extra_captions_file": str(extra), "caption_augmentation.extra_captions_p": 0.3,
                "audio_mix.p": 0.3, "audio_mix.merged_captions_file": str(merged)}
    runs = [training.train_new(tmp_path / name, build_config(None, settings)).run for name in ("one", "two")]
    epochs = [Registry(tmp_path / name).run(run).epochs[0] for name, run in zip(("one", "two"), runs)]
    assert epochs[0]["train_loss"] == epochs[1]["train_loss"] > 0
    plain = training.train_new(tmp_path / "plain", build_config(None, tiny_training)).run
    assert Registry(tmp_path / "plain").run(plain).epochs[0]["train_loss"] != epochs[0]["train_loss"]
