"""Synthetic demo dataset in the exact Clotho layout, generated deterministically from a seed.

Each clip mixes 1-3 procedurally synthesised sound events (beeps, chirps, hiss, rumble, clicks,
sirens, hum, bells, knocks), each with a variant (pitch, direction or rate) and a loudness, placed
one after the other over a faint noise floor. The five captions describe what was placed, in order
("A loud high beep, then a static hiss."). Clips are drawn in groups that share one scene
(the same events, variants and loudness, with different timing and fine parameters), so caption_1
of every clip of a group is the same text and the dev-test multi-relevance file lists the whole
group as relevant to it, as in the organisers' ``metadata_eval.csv``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from dcase_t6.common.errors import UserError
from dcase_t6.common.fsops import replace_owned_dir, staging_dir
from dcase_t6.common.jsonfile import read_json, write_json
from dcase_t6.common.outputs import FolderKind, OutputRequest, check_output_dir
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.common.tables import LATIN1, write_table
from dcase_t6.data.clotho_layout import CAPTION_FIELDS, METADATA_FIELDS, index_clotho_layout
from dcase_t6.data.layout import CLOTHO_PARTS, CLOTHO_SAMPLE_RATE, Layout
from dcase_t6.data.relevance import attach_relevance, write_relevance_csv
from dcase_t6.data.reports import SyntheticReport

DATASET = "synthetic"
RELEVANCE_NAME = "synthetic-devtest-relevance-metadata_eval.csv"
FORMAT_VERSION = 1
STAMP_NAME = "synthetic.json"  # the generation settings; also marked the folder as generated before MARKER
SR = CLOTHO_SAMPLE_RATE
NAME_STYLES = ("clip_{i:04d}.wav", "synth take {i}.wav", "street corner, take {i}.wav",
               "Jo&#39;s recorder {i}.wav", "Café demo {i}.wav")
LOUDNESS = {"loud": (0.7, ("loud", "strong", "powerful")), "quiet": (0.18, ("quiet", "faint", "soft"))}
GROUP_SIZES, GROUP_WEIGHTS = np.array([1, 2, 3, 4]), np.array([0.25, 0.35, 0.25, 0.15])
EVENT_COUNTS, EVENT_WEIGHTS = np.array([1, 2, 3]), np.array([0.35, 0.45, 0.2])


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and seed of the synthetic dataset: clips per Clotho part and clip duration range."""

    seed: int = 0
    development: int = 120
    validation: int = 40
    evaluation: int = 40
    min_duration: float = 5.0
    max_duration: float = 10.0

    def check(self) -> None:
        """Fail on sizes or durations that cannot make a dataset."""
        if min(self.development, self.validation, self.evaluation) < 1:
            raise UserError("synthetic: every split needs at least 1 clip (--train/--val/--test)")
        if not 2.0 <= self.min_duration <= self.max_duration <= 60.0:
            raise UserError(f"synthetic: durations {self.min_duration}-{self.max_duration} s; "
                            "need 2 <= --min-duration <= --max-duration <= 60")


@dataclass(frozen=True)
class Event:
    """One placed sound event."""

    kind: str
    variant: str
    loudness: str


@dataclass(frozen=True)
class Placed:
    """An event with its position in the clip."""

    event: Event
    onset_s: float
    duration_s: float


# --- event synthesis: each returns n samples with peak about 1 ----------------------------------

def _time(n: int) -> np.ndarray:
    return np.arange(n) / SR


def _fade(x: np.ndarray, seconds: float = 0.01) -> np.ndarray:
    ramp = max(1, min(len(x) // 2, int(SR * seconds)))
    envelope = np.ones(len(x))
    envelope[:ramp] = np.linspace(0.0, 1.0, ramp)
    envelope[-ramp:] = np.linspace(1.0, 0.0, ramp)
    return x * envelope


def _lowpass(x: np.ndarray, cutoff: float) -> np.ndarray:
    """Two passes of a moving average about SR / cutoff samples long (O(n) with cumulative sums)."""
    width = max(1, int(SR / cutoff))
    for _ in range(2):
        total = np.concatenate([[0.0], np.cumsum(x)])
        x = (total[width:] - total[:-width]) / width
        x = np.pad(x, (width // 2, width - 1 - width // 2), mode="edge")
    return x


def _beep(rng: np.random.Generator, variant: str, n: int) -> np.ndarray:
    f = rng.uniform(1800, 2600) if variant == "high" else rng.uniform(250, 400)
    t = _time(n)
    return _fade(np.sin(2 * np.pi * f * t) + 0.2 * np.sin(4 * np.pi * f * t))


def _chirp(rng: np.random.Generator, variant: str, n: int) -> np.ndarray:
    low, high = rng.uniform(300, 500), rng.uniform(2500, 3500)
    f0, f1 = (low, high) if variant == "rising" else (high, low)
    duration = n / SR
    phase = 2 * np.pi * f0 * duration / np.log(f1 / f0) * ((f1 / f0) ** (_time(n) / duration) - 1)
    return _fade(np.sin(phase), 0.02)


def _hiss(rng: np.random.Generator, variant: str, n: int) -> np.ndarray:
    return _fade(rng.standard_normal(n) / 3, 0.05)


def _rumble(rng: np.random.Generator, variant: str, n: int) -> np.ndarray:
    return _fade(_lowpass(rng.standard_normal(n), rng.uniform(80, 150)), 0.1)


def _clicks(rng: np.random.Generator, variant: str, n: int) -> np.ndarray:
    rate = rng.uniform(12, 16) if variant == "fast" else rng.uniform(3, 5)
    impulses = np.zeros(n)
    positions = (np.arange(0, n / SR, 1 / rate) * SR).astype(int)
    impulses[positions[positions < n]] = rng.uniform(0.7, 1.0, (positions < n).sum())
    kernel = np.exp(-_time(int(0.004 * SR)) / 0.0008) * rng.standard_normal(int(0.004 * SR))
    return np.convolve(impulses, kernel)[:n]


def _siren(rng: np.random.Generator, variant: str, n: int) -> np.ndarray:
    t = _time(n)
    frequency = rng.uniform(800, 1000) + rng.uniform(250, 350) * np.sin(2 * np.pi * rng.uniform(0.8, 1.5) * t)
    return _fade(np.sin(2 * np.pi * np.cumsum(frequency) / SR), 0.05)


def _hum(rng: np.random.Generator, variant: str, n: int) -> np.ndarray:
    f0 = rng.choice([50.0, 60.0])
    harmonics = np.arange(1, 6)[:, None]
    return _fade((np.sin(2 * np.pi * f0 * harmonics * _time(n)) / harmonics).sum(axis=0), 0.05)


def _bell(rng: np.random.Generator, variant: str, n: int) -> np.ndarray:
    f0 = rng.uniform(1200, 1600) if variant == "high" else rng.uniform(300, 450)
    ratios = np.array([1.0, 2.76, 5.4, 8.93])[:, None]
    t = _time(n)
    partials = np.sin(2 * np.pi * f0 * ratios * t) * np.exp(-t * ratios * rng.uniform(2.0, 3.5)) / ratios
    return _fade(partials.sum(axis=0), 0.002)


def _knock(rng: np.random.Generator, variant: str, n: int) -> np.ndarray:
    count = int(rng.integers(3, 6))
    onsets = (np.linspace(0, 0.8, count) * n).astype(int)
    t = _time(n // count)
    thump = np.sin(2 * np.pi * rng.uniform(90, 140) * t) * np.exp(-t / 0.03)
    thump += 0.3 * rng.standard_normal(len(t)) * np.exp(-t / 0.004)
    out = np.zeros(n)
    for onset in onsets:
        out[onset: onset + len(thump)] += thump[: n - onset]
    return out


@dataclass(frozen=True)
class Kind:
    """A kind of sound event: its variants with their noun phrases, duration range and synthesiser."""

    phrases: dict[str, tuple[str, ...]]
    seconds: tuple[float, float]
    synth: Callable


KINDS: dict[str, Kind] = {
    "beep": Kind({"high": ("high beep", "high-pitched beep", "shrill beep"),
                  "low": ("low beep", "low-pitched beep", "deep beep")}, (0.3, 0.8), _beep),
    "chirp": Kind({"rising": ("rising chirp", "upward sweep", "rising whistle"),
                   "falling": ("falling chirp", "downward sweep", "falling whistle")}, (0.5, 1.2), _chirp),
    "hiss": Kind({"": ("static hiss", "burst of white noise", "hissing static noise")}, (0.6, 1.5), _hiss),
    "rumble": Kind({"": ("low rumble", "deep rumbling noise", "rumbling sound")}, (1.0, 2.0), _rumble),
    "clicks": Kind({"fast": ("rapid clicking sound", "burst of fast clicks", "quick ticking sound"),
                    "slow": ("slow ticking sound", "series of slow clicks", "steady ticking sound")},
                   (0.8, 1.6), _clicks),
    "siren": Kind({"": ("wailing siren", "siren", "siren wailing up and down")}, (1.5, 2.5), _siren),
    "hum": Kind({"": ("electrical hum", "low hum", "buzzing mains hum")}, (1.0, 2.0), _hum),
    "bell": Kind({"high": ("high bell ring", "small bell ringing", "tinkling bell"),
                  "low": ("low bell toll", "deep bell", "tolling bell")}, (1.0, 2.0), _bell),
    "knock": Kind({"": ("knocking sound", "series of knocks", "knock sequence")}, (0.6, 1.2), _knock),
}


# --- captions -------------------------------------------------------------------------------------

def _noun_phrase(rng: np.random.Generator | None, event: Event) -> str:
    """'a loud high beep'; ``rng`` None gives the canonical wording."""
    nouns = KINDS[event.kind].phrases[event.variant]
    adjectives = LOUDNESS[event.loudness][1]
    if rng is None:
        words = f"{adjectives[0]} {nouns[0]}"
    else:
        adjective = adjectives[rng.integers(len(adjectives))] if rng.random() < 0.7 else ""
        words = f"{adjective} {nouns[rng.integers(len(nouns))]}".strip()
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


SINGLE_TEMPLATES = ("{0} is heard", "{0} sounds", "there is {0}", "you can hear {0}", "{0} can be heard")
SEQUENCE_TEMPLATES = (
    lambda p: ", then ".join(p),
    lambda p: "first " + ", then ".join(p),
    lambda p: f"{p[0]} followed by " + " and then ".join(p[1:]),
    lambda p: f"{p[0]} is followed by " + ", and then ".join(p[1:]),
    lambda p: ", and then ".join(p),
)


def caption(events: list[Event], rng: np.random.Generator | None = None) -> str:
    """A caption naming the events in temporal order; ``rng`` None gives the canonical one."""
    phrases = [_noun_phrase(rng, event) for event in events]
    if len(phrases) == 1:
        text = SINGLE_TEMPLATES[_pick(rng, len(SINGLE_TEMPLATES))].format(phrases[0])
    else:
        text = SEQUENCE_TEMPLATES[_pick(rng, len(SEQUENCE_TEMPLATES))](phrases)
    return text[0].upper() + text[1:] + "."


def _pick(rng: np.random.Generator | None, count: int) -> int:
    return 0 if rng is None else int(rng.integers(count))


def clip_captions(events: list[Event], rng: np.random.Generator) -> list[str]:
    """Five captions: the canonical one, then four random paraphrases (distinct within 50 draws)."""
    captions, draws = [caption(events)], 0
    while len(captions) < len(CAPTION_FIELDS):
        text, draws = caption(events, rng), draws + 1
        if text not in captions or draws > 50:
            captions.append(text)
    return captions


# --- clips ----------------------------------------------------------------------------------------

def _draw_scene(rng: np.random.Generator) -> tuple[Event, ...]:
    count = int(rng.choice(EVENT_COUNTS, p=EVENT_WEIGHTS))
    kinds = rng.choice(list(KINDS), count, replace=False)
    return tuple(Event(str(kind), str(rng.choice(list(KINDS[kind].phrases))), str(rng.choice(list(LOUDNESS))))
                 for kind in kinds)


def draw_groups(rng: np.random.Generator, n_clips: int) -> list[tuple[Event, ...]]:
    """Scene of each clip: distinct scenes, each repeated for a group of 1-4 consecutive clips."""
    scenes: list[tuple[Event, ...]] = []
    seen: set[tuple[Event, ...]] = set()
    while len(scenes) < n_clips:
        scene = _draw_scene(rng)
        if scene in seen:
            continue
        seen.add(scene)
        scenes.extend([scene] * int(rng.choice(GROUP_SIZES, p=GROUP_WEIGHTS)))
    return scenes[:n_clips]


def render_clip(rng: np.random.Generator, scene: tuple[Event, ...], duration: float) -> tuple[np.ndarray, list[Placed]]:
    """Synthesize the events of ``scene`` one after the other over a faint noise floor."""
    n = int(round(duration * SR))
    lengths = np.array([rng.uniform(*KINDS[event.kind].seconds) for event in scene])
    lengths *= min(1.0, 0.75 * duration / lengths.sum())
    gaps = rng.dirichlet(np.ones(len(scene) + 1)) * (duration - lengths.sum())
    onsets = gaps[:-1].cumsum() + np.concatenate([[0.0], lengths[:-1].cumsum()])
    mix = _lowpass(rng.standard_normal(n), 2000.0) * 0.004
    placed = []
    for event, onset, length in zip(scene, onsets, lengths):
        start = int(onset * SR)
        size = min(int(length * SR), n - start)
        sound = KINDS[event.kind].synth(rng, event.variant, size)
        gain = LOUDNESS[event.loudness][0] * rng.uniform(0.85, 1.15) / max(np.abs(sound).max(), 1e-9)
        mix[start: start + size] += gain * sound
        placed.append(Placed(event, round(float(onset), 4), round(float(length), 4)))
    return (mix / max(1.0, np.abs(mix).max() / 0.98)).astype(np.float32), placed


def generate(config: SyntheticConfig, folder: Path, reporter: Reporter = SILENT) -> None:
    """Write the Clotho-layout files of ``config`` into ``folder`` (CSVs, audio/<part>/, events, relevance)."""
    counts = [config.development, config.validation, config.evaluation]
    events: list[tuple] = []
    with reporter.task("synthesising clips", sum(counts)) as task:
        for part_number, count in enumerate(counts):
            first = sum(counts[:part_number])
            events += _generate_part(config, folder, part_number, range(first, first + count),
                                     task.advance)
    write_table(pd.DataFrame(events, columns=["part", "file_name", "order", "kind", "variant", "loudness",
                                              "onset_s", "duration_s"]), folder / "events.csv")


def _generate_part(config: SyntheticConfig, folder: Path, part_number: int, numbers: range, advance) -> list[tuple]:
    """Clips, captions and metadata CSVs of one part (and its relevance file for evaluation); its events."""
    part = list(CLOTHO_PARTS)[part_number]
    scenes = draw_groups(np.random.default_rng([config.seed, part_number]), len(numbers))
    names = [NAME_STYLES[number % len(NAME_STYLES)].format(i=number) for number in numbers]
    (folder / "audio" / part).mkdir(parents=True)
    captions, metadata, events = [], [], []
    for clip, (name, scene, number) in enumerate(zip(names, scenes, numbers)):
        clip_rng = np.random.default_rng([config.seed, part_number, clip])
        duration = round(float(clip_rng.uniform(config.min_duration, config.max_duration)), 2)
        samples, placed = render_clip(clip_rng, scene, duration)
        sf.write(folder / "audio" / part / name, samples, SR, subtype="PCM_16")
        captions.append([name, *clip_captions(list(scene), clip_rng)])
        metadata.append(_metadata_row(name, scene, len(samples), number))
        events += [(part, name, order, p.event.kind, p.event.variant, p.event.loudness, p.onset_s, p.duration_s)
                   for order, p in enumerate(placed, start=1)]
        advance()
    write_table(pd.DataFrame(captions, columns=["file_name", *CAPTION_FIELDS]), folder / f"clotho_captions_{part}.csv")
    write_table(pd.DataFrame(metadata, columns=METADATA_FIELDS), folder / f"clotho_metadata_{part}.csv", LATIN1)
    if part == "evaluation":
        _write_relevance(folder / RELEVANCE_NAME, names, scenes, captions)
    return events


def _metadata_row(name: str, scene: tuple[Event, ...], n_samples: int, number: int) -> list:
    keywords = ";".join(event.kind for event in scene)
    return [name, keywords, str(900_000_000 + number), f"synthetic://{number}", f"[0, {n_samples}]",
            "dcase-t6 synthetic", "CC0 1.0"]


def _write_relevance(path: Path, names: list[str], scenes: list[tuple[Event, ...]], captions: list[list[str]]) -> None:
    """Query = caption_1 of the first clip of each scene; relevant = every clip with that scene."""
    members: dict[tuple[Event, ...], list[str]] = {}
    first_caption: dict[tuple[Event, ...], str] = {}
    for name, scene, row in zip(names, scenes, captions):
        members.setdefault(scene, []).append(name)
        first_caption.setdefault(scene, row[1])
    write_relevance_csv(path, [first_caption[s] for s in members], list(members.values()))


def prepare_synthetic(layout: Layout, config: SyntheticConfig, workers: int = 1,
                      force: bool = False, reporter: Reporter = SILENT) -> SyntheticReport:
    """Generate (unless already there with the same config), index, and attach the dev-test relevance."""
    config.check()
    folder = layout.dataset_dir(DATASET)
    stamp = {"format": FORMAT_VERSION, **asdict(config)}
    generated = force or not _generated_with(folder / STAMP_NAME, stamp)
    if generated:
        check_output_dir(OutputRequest(folder, "prepare synthetic"),
                         FolderKind("a synthetic dataset", legacy_marker=STAMP_NAME,
                                    remedy="move your files out of it, or choose another --root"))
        _generate_atomically(config, folder, stamp, reporter)
    report = index_clotho_layout(layout, DATASET, workers, reporter)
    relevance = attach_relevance(layout, DATASET, folder / RELEVANCE_NAME)
    return report.extended(SyntheticReport, generated=generated, folder=str(folder), relevance=relevance)


def _generated_with(path: Path, stamp: dict) -> bool:
    """Whether the stamp file says the dataset there was generated with ``stamp``."""
    return path.is_file() and read_json(path, "delete it, or re-run with --force to generate the data again") == stamp


def _generate_atomically(config: SyntheticConfig, folder: Path, stamp: dict, reporter: Reporter) -> None:
    with staging_dir(folder) as tmp:
        generate(config, tmp, reporter)
        write_json(stamp, tmp / STAMP_NAME)
        replace_owned_dir(tmp, folder, "prepare synthetic", legacy_marker=STAMP_NAME)
