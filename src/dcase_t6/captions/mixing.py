"""LLM mix: N pairs of training clips (seeded; optionally never two captions of the same cluster), one caption
of each, merged by a chat-completions endpoint into one caption of the mixture.

The output is the CSV ``file_name_1,file_name_2,caption,dataset`` that ``audio_mix.merged_captions_file`` reads
(one row per kept merged caption), with its journal and sidecar beside it (see ``engine``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from dcase_t6.captions.endpoint import ChatEndpoint, EndpointSettings
from dcase_t6.captions.engine import (
    MESSAGE_TOKENS,
    AugmentJob,
    AugmentReport,
    AugmentRun,
    Outcome,
    Request,
    RunStats,
    ask_all,
    estimate_tokens,
    finish,
    outcome_of,
)
from dcase_t6.captions.journal import Journal, request_key
from dcase_t6.captions.prompts import PromptTemplate
from dcase_t6.captions.quality import Verdict, check_caption
from dcase_t6.captions.source import CaptionSource, SourceCaption, read_captions
from dcase_t6.common.errors import UserError
from dcase_t6.runs.records import code_version

KIND = "llm-mix"
COLUMNS = ["file_name_1", "file_name_2", "caption", "dataset"]
MERGED_LENGTH = 0.75  # a merged caption has about 3/4 of the tokens of its two sources together (estimates only)
_DRAWS = 1000  # tries to draw one pair before the draw is declared impossible


@dataclass(frozen=True)
class MixSettings:
    """How many pairs, the seed of the draw, and the cluster label of each (clip, caption) to keep pairs of the
    same cluster out (None: any pair)."""

    pairs: int
    seed: int = 0
    clusters: dict[tuple[str, str], int] | None = None
    clusters_origin: str | None = None


@dataclass(frozen=True)
class MixPair:
    """The ``index``-th pair of the draw: one caption of each of two different clips."""

    index: int
    first: SourceCaption
    second: SourceCaption


def sample_pairs(captions: list[SourceCaption], settings: MixSettings) -> list[MixPair]:
    """``settings.pairs`` pairs of different clips, no clip pair twice, one random caption of each.

    Pair i is drawn from a generator seeded by (seed, i), so asking for more pairs later keeps the earlier ones.
    With cluster labels, a draw whose two captions share a cluster is drawn again.

    Args:
        captions: the captions of the split.
        settings: count, seed, cluster labels.

    Returns:
        The pairs; a UserError when the split cannot give that many.
    """
    clips: dict[str, list[SourceCaption]] = {}
    for caption in captions:
        clips.setdefault(caption.file_name, []).append(caption)
    names = list(clips)
    possible = len(names) * (len(names) - 1) // 2
    if settings.pairs > possible:
        raise UserError(f"--pairs {settings.pairs}: the split has {len(names)} clips, so at most {possible} different "
                        "pairs; ask for fewer")
    labels = settings.clusters
    if labels is not None and not any((caption.clip, caption.caption) in labels for caption in captions):
        raise UserError(f"--clusters {settings.clusters_origin}: no caption of {captions[0].dataset} has a label there "
                        "(labels of another dataset or split?); pass the cluster labels of this training split")
    seen: set[frozenset[str]] = set()
    pairs = []
    for index in range(settings.pairs):
        rng = np.random.default_rng([settings.seed, index])
        for _ in range(_DRAWS):
            one, two = (int(position) for position in rng.choice(len(names), size=2, replace=False))
            first = clips[names[one]][int(rng.integers(len(clips[names[one]])))]
            second = clips[names[two]][int(rng.integers(len(clips[names[two]])))]
            key = frozenset((names[one], names[two]))
            if key in seen or (labels is not None and _same_cluster(labels, first, second)):
                continue
            seen.add(key)
            pairs.append(MixPair(index, first, second))
            break
        else:
            raise UserError(f"--pairs {settings.pairs}: pair {index + 1} found no two clips of different clusters "
                            f"in {_DRAWS} draws; ask for fewer pairs or use coarser clusters")
    return pairs


def _same_cluster(labels: dict[tuple[str, str], int], first: SourceCaption, second: SourceCaption) -> bool:
    one, two = labels.get((first.clip, first.caption)), labels.get((second.clip, second.caption))
    return one is not None and one == two


class MixItem:
    """One pair: a single request that merges its two captions."""

    def __init__(self, pair: MixPair, seed: int, template: PromptTemplate):
        self.pair, self.template = pair, template
        first, second = pair.first, pair.second
        self.key = request_key(KIND, seed, pair.index, first.dataset, first.file_name, first.caption_index,
                               second.file_name, second.caption_index, first.caption, second.caption)
        self.info = {"pair": pair.index, "file_name_1": first.file_name, "file_name_2": second.file_name}

    def _prompt(self) -> str:
        return self.template.fill(caption_1=self.pair.first.caption, caption_2=self.pair.second.caption)

    def check(self, answer: str | None) -> Verdict:
        return check_caption(answer, [self.pair.first.caption, self.pair.second.caption])

    def next_request(self, journal: Journal) -> Request | None:
        if journal.answered(self.key) is not None:
            return None
        return Request(self.key, "mix", self._prompt(), self.check, self.info)

    def outcome(self, journal: Journal) -> Outcome:
        return outcome_of(journal, [self.key])

    def estimate(self, journal: Journal) -> list[tuple[int, int]]:
        if journal.answered(self.key) is not None:
            return []
        sources = estimate_tokens(self.pair.first.caption) + estimate_tokens(self.pair.second.caption)
        return [(estimate_tokens(self._prompt()) + MESSAGE_TOKENS, math.ceil(sources * MERGED_LENGTH))]

    def row(self, text: str) -> dict:
        return {"file_name_1": self.pair.first.file_name, "file_name_2": self.pair.second.file_name,
                "caption": text, "dataset": self.pair.first.dataset}


def llm_mix(source: CaptionSource, settings: MixSettings, endpoint: EndpointSettings, template: PromptTemplate,
            run: AugmentRun) -> AugmentReport:
    """Merge the captions of ``settings.pairs`` clip pairs of ``source`` (resuming the journal of ``run.files``),
    write the CSV and sidecar.

    Args:
        source: the prepared split whose clips are paired.
        settings: pair count, seed, cluster labels.
        endpoint: the chat-completions endpoint and model.
        template: the mix prompt template.
        run: the output CSV, its journal and sidecar; dry run, request cap, concurrency; the progress bar.

    Returns:
        The report. A UserError (after the outputs are written) when the endpoint stopped the run.
    """
    items = [MixItem(pair, settings.seed, template) for pair in sample_pairs(read_captions(source), settings)]
    client = None if run.limits.dry_run else ChatEndpoint(endpoint)
    stats = RunStats()
    generator = {**endpoint.generator(), "prompts": {"mix": template.text}}
    with Journal(run.files.journal, KIND, generator, write=not run.limits.dry_run) as journal:
        job = AugmentJob(KIND, run, journal, stats)
        if client is not None:
            ask_all(job, items, client, f"merging captions ({endpoint.model})")
        report = finish(job, items, COLUMNS, _metadata(source, settings, endpoint, template))
    if stats.error is not None:
        raise stats.error
    return report


def _metadata(source: CaptionSource, settings: MixSettings, endpoint: EndpointSettings,
              template: PromptTemplate) -> dict:

    clusters = f", never two captions of the same cluster ({settings.clusters_origin})" if settings.clusters else ""
    return {"kind": KIND, "source": asdict(source), "seed": settings.seed, "pairs": settings.pairs,
            "clusters": settings.clusters_origin,
            "generator": {**endpoint.generator(), "api_base": endpoint.api_base,
                          "prompts": {"mix": {"origin": template.origin, "text": template.text}}},
            "dcase_t6": code_version(),
            "text_augmentation": f"LLM mix: captions of random pairs of {source.dataset} training clips{clusters} "
                                 f"merged into one caption of the mixture by {endpoint.model} through a "
                                 "chat-completions API"}
