"""What makes a generated caption usable: one English line of 5-30 plain ASCII words that is not a refusal and
not the source caption again, and no answer longer than MAX_CHARACTERS (a 30-word caption is about 200; a
pivot-language translation of a caption a few hundred). Every rejection has a short reason that is counted and
journaled."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

MIN_WORDS, MAX_WORDS = 5, 30
WORD_COUNT = f"outside {MIN_WORDS}-{MAX_WORDS} words"
MAX_CHARACTERS = 1000
TOO_LONG = f"longer than {MAX_CHARACTERS:,} characters"
# Typographic characters models like to use, and their plain ASCII spelling (kept, not rejected).
_TYPOGRAPHIC = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                              "\u2014": "-", "\u2026": "...", "\u00a0": " ", "\u2009": " ", "\u202f": " "})
_WRAPPERS = "\"'`*"
_LABEL = re.compile(r"^(?:merged |new |combined |final |english )?(?:caption|translation|answer|output)\s*:\s*",
                    re.IGNORECASE)
_REFUSAL = re.compile(r"^(?:i'?m sorry|sorry\b|i apologi[sz]e|i cannot|i can'?t|i can not|i am unable|i'?m unable|"
                      r"i am not able|i'?m not able|i won'?t|as an ai\b|unfortunately\b)|as an ai language model",
                      re.IGNORECASE)
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


@dataclass(frozen=True)
class Verdict:
    """A cleaned answer and, when it is unusable, why: ``reason`` is one of a few fixed categories (counted),
    ``detail`` says more (journaled); ``reason`` None: keep it."""

    text: str
    reason: str | None = None
    detail: str | None = None

    @property
    def kept(self) -> bool:
        return self.reason is None


def clean(answer: str | None) -> str:
    """``answer`` without surrounding white space, quotes or a leading ``Caption:`` label; typographic quotes,
    dashes and spaces in ASCII; runs of spaces collapsed (line breaks kept, they are checked)."""
    text = (answer or "").translate(_TYPOGRAPHIC).strip()
    text = _LABEL.sub("", text).strip()
    while len(text) >= 2 and text[0] == text[-1] and text[0] in _WRAPPERS:
        text = text[1:-1].strip()
    return "\n".join(" ".join(line.split()) for line in text.splitlines() if line.strip())


def same_text(first: str, second: str) -> bool:
    """Equal up to case, punctuation and white space."""
    return first.lower().translate(_NO_PUNCTUATION).split() == second.lower().translate(_NO_PUNCTUATION).split()


def check_caption(answer: str | None, sources: list[str]) -> Verdict:
    """Whether ``answer`` is a usable English caption made from ``sources`` (the captions it must not repeat).

    Args:
        answer: the raw text the model returned (None: no text).
        sources: the caption(s) the answer was made from.

    Returns:
        The cleaned text with the reason it is unusable (empty, too long, refusal, identical to the source, several
        lines, non-ASCII characters, outside 5-30 words), or with no reason.
    """
    text = clean(answer)
    reason = _common_problem(text, sources)
    if reason is not None:
        return Verdict(text, reason, _length(text, reason))
    if "\n" in text:
        return Verdict(text, "several lines", f"{text.count(chr(10)) + 1} lines")
    junk = sorted({char for char in text if not (char.isascii() and char.isprintable())})
    if junk:
        return Verdict(text, "non-ASCII characters", ascii("".join(junk[:5])))
    words = len(text.split())
    if not MIN_WORDS <= words <= MAX_WORDS:
        return Verdict(text, WORD_COUNT, f"{words} words")
    return Verdict(text)


def check_translation(answer: str | None, source: str) -> Verdict:
    """Whether ``answer`` can be the pivot-language step of a back-translation of ``source`` (any script: only
    empty or over-long answers, refusals and an untranslated copy of the source are refused)."""
    text = clean(answer)
    reason = _common_problem(text, [source])
    return Verdict(text, reason, _length(text, reason))


def _length(text: str, reason: str | None) -> str | None:
    return f"{len(text):,} characters" if reason == TOO_LONG else None


def _common_problem(text: str, sources: list[str]) -> str | None:
    if not text:
        return "empty"
    if len(text) > MAX_CHARACTERS:
        return TOO_LONG
    if _REFUSAL.search(text):
        return "refusal"
    if any(same_text(text, source) for source in sources):
        return "identical to the source"
    return None
