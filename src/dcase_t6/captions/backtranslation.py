"""Back-translation: every training caption goes through one pivot language (drawn per caption from a list,
seeded) and back into English, either with local translation models (MarianMT ``Helsinki-NLP/opus-mt-en-XX``
and ``opus-mt-XX-en`` through transformers, batched, on the GPU when there is one) or through an
OpenAI-compatible chat-completions endpoint (two requests per caption: forward, then back).

The output is the CSV ``file_name,caption,dataset,pivot`` that ``caption_augmentation.extra_captions_file``
reads (one row per kept back-translation), with its journal and sidecar beside it (see ``engine``).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

from dcase_t6.captions.endpoint import ChatEndpoint, EndpointSettings
from dcase_t6.captions.engine import (
    MESSAGE_TOKENS,
    PENDING,
    AugmentJob,
    AugmentReport,
    AugmentRun,
    Budget,
    Outcome,
    ProgressSink,
    Request,
    RunStats,
    ask_all,
    estimate_tokens,
    finish,
    outcome_of,
)
from dcase_t6.captions.journal import FAILED, KEPT, REJECTED, Entry, Journal, request_key
from dcase_t6.captions.prompts import DEFAULT_LANGUAGES, PromptTemplate, language_name
from dcase_t6.captions.quality import Verdict, check_caption, check_translation
from dcase_t6.captions.source import CaptionSource, SourceCaption, read_captions
from dcase_t6.common.errors import UserError
from dcase_t6.runs.records import code_version

KIND = "back-translation"
COLUMNS = ["file_name", "caption", "dataset", "pivot"]
DEFAULT_LOCAL_MODELS = "Helsinki-NLP/opus-mt-{src}-{tgt}"
PIVOT_LENGTH = 1.3  # a pivot-language text has about 1.3 times the tokens of its English source (estimates only)


@dataclass(frozen=True)
class BackTranslationSettings:
    """The pivot languages (one drawn per caption) and the seed of the draw."""

    languages: tuple[str, ...] = DEFAULT_LANGUAGES
    seed: int = 0


@dataclass(frozen=True)
class ApiTranslation:
    """Back-translation through a chat-completions endpoint with the forward and back prompt templates."""

    endpoint: EndpointSettings
    forward: PromptTemplate
    back: PromptTemplate

    def generator(self) -> dict:
        return {**self.endpoint.generator(), "prompts": {"forward": self.forward.text, "back": self.back.text}}


@dataclass(frozen=True)
class LocalTranslation:
    """Back-translation with local seq2seq models.

    Args:
        models: model name or folder pattern with ``{src}`` and ``{tgt}`` language codes.
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: captions translated at once.
        beams: beam search width.
        max_new_tokens: longest translation in tokens.
    """

    models: str = DEFAULT_LOCAL_MODELS
    device: str = "auto"
    batch_size: int = 32
    beams: int = 4
    max_new_tokens: int = 64

    def model_name(self, src: str, tgt: str) -> str:
        return self.models.format(src=src, tgt=tgt)

    def generator(self) -> dict:
        return {"backend": "local", "models": self.models, "beams": self.beams, "max_new_tokens": self.max_new_tokens}


def pivot_language(caption: SourceCaption, settings: BackTranslationSettings) -> str:
    """The pivot language of ``caption``: drawn from its identity and the seed alone (not from other captions)."""
    digest = request_key("pivot", settings.seed, caption.dataset, caption.file_name, caption.caption_index)
    return settings.languages[int(digest, 16) % len(settings.languages)]


class BackTranslationItem:
    """One caption: a forward request (English -> pivot), then a back request (pivot -> English)."""

    def __init__(self, caption: SourceCaption, language: str, seed: int, forward: PromptTemplate | None = None,
                 back: PromptTemplate | None = None):
        self.caption, self.language, self.forward, self.back = caption, language, forward, back
        identity = (seed, caption.dataset, caption.file_name, caption.caption_index, language, caption.caption)
        self.forward_key = request_key(KIND, "forward", *identity)
        self.back_key = request_key(KIND, "back", *identity)
        self.info = {"file_name": caption.file_name, "caption_index": caption.caption_index, "pivot": language}

    def _fields(self) -> dict:
        return {"language": language_name(self.language), "code": self.language}

    def next_request(self, journal: Journal) -> Request | None:
        forward = journal.answered(self.forward_key)
        if forward is None:
            prompt = self.forward.fill(caption=self.caption.caption, **self._fields())
            return Request(self.forward_key, "forward", prompt, self.check_forward, self.info)
        if forward.verdict == REJECTED or journal.answered(self.back_key) is not None:
            return None
        return Request(self.back_key, "back", self.back.fill(text=forward.text, **self._fields()), self.check_back,
                       self.info)

    def check_forward(self, answer: str | None) -> Verdict:
        return check_translation(answer, self.caption.caption)

    def check_back(self, answer: str | None) -> Verdict:
        return check_caption(answer, [self.caption.caption])

    def outcome(self, journal: Journal) -> Outcome:
        return outcome_of(journal, [self.forward_key, self.back_key])

    def estimate(self, journal: Journal) -> list[tuple[int, int]]:
        forward = journal.answered(self.forward_key)
        if forward is not None and (forward.verdict == REJECTED or journal.answered(self.back_key) is not None):
            return []
        if self.forward is None:  # local models: a translation costs no tokens
            return [(0, 0)] * (1 if forward is not None else 2)
        english = estimate_tokens(self.caption.caption)
        pivot = forward.text if forward is not None else "x" * math.ceil(len(self.caption.caption) * PIVOT_LENGTH)
        back = (estimate_tokens(self.back.fill(text=pivot, **self._fields())) + MESSAGE_TOKENS, english)
        if forward is not None:
            return [back]
        prompt = estimate_tokens(self.forward.fill(caption=self.caption.caption, **self._fields())) + MESSAGE_TOKENS
        return [(prompt, math.ceil(english * PIVOT_LENGTH)), back]

    def row(self, text: str) -> dict:
        return {"file_name": self.caption.file_name, "caption": text, "dataset": self.caption.dataset,
                "pivot": self.language}


def plan(captions: list[SourceCaption], settings: BackTranslationSettings,
         backend: ApiTranslation | LocalTranslation) -> list[BackTranslationItem]:
    """One item per caption, with its pivot language."""
    templates = (backend.forward, backend.back) if isinstance(backend, ApiTranslation) else (None, None)
    return [BackTranslationItem(caption, pivot_language(caption, settings), settings.seed, *templates)
            for caption in captions]


def back_translate(source: CaptionSource, settings: BackTranslationSettings, backend: ApiTranslation | LocalTranslation,
                   run: AugmentRun) -> AugmentReport:
    """Back-translate the captions of ``source`` (resuming the journal of ``run.files``), write the CSV and sidecar.

    Args:
        source: the prepared split whose captions are translated.
        settings: pivot languages and seed.
        backend: local models or a chat-completions endpoint with prompt templates.
        run: the output CSV, its journal and sidecar; dry run, request cap, concurrency; the progress bar.

    Returns:
        The report. A UserError (after the outputs are written) when the endpoint stopped the run.
    """
    items = plan(read_captions(source), settings, backend)
    api, dry_run = isinstance(backend, ApiTranslation), run.limits.dry_run
    endpoint = ChatEndpoint(backend.endpoint) if api and not dry_run else None
    device = None
    if not api and not dry_run:
        device = _device(backend.device)
        _check_models(backend, [code for code in settings.languages if any(i.language == code for i in items)])
    stats = RunStats()
    with Journal(run.files.journal, KIND, backend.generator(), write=not dry_run) as journal:
        job = AugmentJob(KIND, run, journal, stats)
        if endpoint is not None:
            ask_all(job, items, endpoint, f"back-translating ({backend.endpoint.model})")
        elif device is not None:
            translate_locally(job, items, backend, device)
        report = finish(job, items, COLUMNS, _metadata(source, settings, backend, device))
    if stats.error is not None:
        raise stats.error
    return report


def _metadata(source: CaptionSource, settings: BackTranslationSettings, backend: ApiTranslation | LocalTranslation,
              device) -> dict:

    languages = ", ".join(f"{language_name(code)} ({code})" for code in settings.languages)
    if isinstance(backend, ApiTranslation):
        generator = {**backend.generator(), "api_base": backend.endpoint.api_base,
                     "prompts": {name: {"origin": template.origin, "text": template.text}
                                 for name, template in (("forward", backend.forward), ("back", backend.back))}}
        how = f"{backend.endpoint.model} through a chat-completions API"
    else:
        pairs = {code: [backend.model_name("en", code), backend.model_name(code, "en")] for code in settings.languages}
        generator = {**backend.generator(), "models_used": pairs, "device": str(device)}
        how = f"MarianMT translation models ({backend.model_name('en', 'XX')}, {backend.model_name('XX', 'en')})"
    return {"kind": KIND, "source": asdict(source), "seed": settings.seed, "languages": list(settings.languages),
            "generator": generator, "dcase_t6": code_version(),
            "text_augmentation": f"back-translation of each {source.dataset} training caption through one random "
                                 f"pivot language ({languages}) with {how}"}


# --- local models ------------------------------------------------------------------------------------------------

def translate_locally(job: AugmentJob, items: list[BackTranslationItem], backend: LocalTranslation, device) -> None:
    """Back-translate the unfinished items with local models on ``device``, one pivot language at a time (its two
    models loaded together), ``backend.batch_size`` captions at once; every batch is journaled before the next."""
    import torch

    journal, stats = job.journal, job.stats
    todo = [item for item in items if item.outcome(journal).state in (PENDING, FAILED)]
    budget = Budget(job.limits.max_requests)
    with job.run.reporter.task(f"back-translating ({device})", len(todo)) as task:
        sink = ProgressSink(task, f"back-translating ({device})", stats)
        try:
            for language in dict.fromkeys(item.language for item in todo):
                group = [item for item in todo if item.language == language]
                forward = _load(backend, "en", language, device)
                back = _load(backend, language, "en", device)
                for start in range(0, len(group), backend.batch_size):
                    batch = group[start:start + backend.batch_size]
                    with torch.inference_mode():
                        _local_step(job, batch, "forward", forward, budget)
                        _local_step(job, batch, "back", back, budget)
                    for item in batch:
                        sink.done(item.outcome(journal))
                    if budget.spent:
                        break
                if budget.spent:
                    break
        except KeyboardInterrupt:
            stats.stopped = "interrupted"
    if stats.stopped is None and budget.spent and any(item.outcome(journal).state == PENDING for item in todo):
        stats.stopped = "max-requests"


def _local_step(job: AugmentJob, batch: list[BackTranslationItem], step: str, model: Callable[[list[str]], list[str]],
                budget: Budget) -> None:
    """Translate the items of ``batch`` whose next request is ``step`` (within the budget) and journal them."""
    journal = job.journal
    chosen = [(item, request) for item in batch
              if (request := _local_request(item, step, journal)) is not None and budget.take()]
    if not chosen:
        return
    answers = model([request.prompt for _, request in chosen])
    entries = []
    for (item, request), answer in zip(chosen, answers):
        verdict = request.check(answer)
        entries.append(Entry(request.key, step, KEPT if verdict.kept else REJECTED, verdict.text, verdict.reason,
                             verdict.detail, info=item.info))
    journal.extend(entries)
    for entry in entries:
        job.stats.count(entry)


def _local_request(item: BackTranslationItem, step: str, journal: Journal) -> Request | None:
    """The item's next request if it is ``step``; its prompt is the text to translate (no template)."""
    forward = journal.answered(item.forward_key)
    if step == "forward":
        return None if forward is not None else Request(item.forward_key, step, item.caption.caption,
                                                        item.check_forward)
    if forward is None or forward.verdict == REJECTED or journal.answered(item.back_key) is not None:
        return None
    return Request(item.back_key, step, forward.text, item.check_back)


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    check_device(name, device, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    return device


def check_device(name: str, device, gpus: int) -> None:
    """Refuse a device that this machine does not have: a type other than cpu/cuda, CUDA without a GPU, or
    ``cuda:N`` with N at or beyond the ``gpus`` visible ones (torch would only fail at the first model)."""
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: not a device for translation models; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and gpus == 0:
        raise UserError(f"--device {name}: no CUDA GPU is available here; use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= gpus:
        raise UserError(f"--device {name}: this machine has {gpus} GPU(s), cuda:0 to cuda:{gpus - 1}; "
                        "pick one of them (or check CUDA_VISIBLE_DEVICES)")


def _check_models(backend: LocalTranslation, languages: list[str]) -> None:
    """Fail before translating anything when a model of a pivot language in use cannot be found."""

    from transformers import AutoConfig

    if importlib.util.find_spec("sentencepiece") is None:
        raise UserError("MarianMT tokenizers need the package sentencepiece: pip install 'sentencepiece>=0.1.99' "
                        "(or translate through --api-base)")
    for language in languages:
        for src, tgt in (("en", language), (language, "en")):
            try:
                AutoConfig.from_pretrained(backend.model_name(src, tgt))
            except (OSError, ValueError) as err:
                raise _unloadable(backend.model_name(src, tgt), err) from None


def _unloadable(name: str, err: Exception) -> UserError:
    reason = " ".join(str(err).split())[:200]
    return UserError(f"cannot load translation model '{name}' ({reason}); with internet it comes from the Hugging Face "
                     "hub (MarianMT exists for many but not all pivots: choose other --languages), offline pass "
                     "--local-models /folder/opus-mt-{src}-{tgt} with folders saved by save_pretrained, or translate "
                     "through --api-base")


def _load(backend: LocalTranslation, src: str, tgt: str, device) -> Callable[[list[str]], list[str]]:
    """A batch translator for ``src`` -> ``tgt`` from the model ``backend.models`` names."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    name = backend.model_name(src, tgt)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForSeq2SeqLM.from_pretrained(name).to(device).eval()
    except (OSError, ValueError, ImportError) as err:
        raise _unloadable(name, err) from None

    def translate(texts: list[str]) -> list[str]:
        tokens = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=256).to(device)
        output = model.generate(**tokens, num_beams=backend.beams, max_new_tokens=backend.max_new_tokens)
        return tokenizer.batch_decode(output, skip_special_tokens=True)

    return translate
