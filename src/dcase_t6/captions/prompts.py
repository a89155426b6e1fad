"""Prompt templates: the defaults, and the user's own text files that replace them.

A template is plain UTF-8 text sent as the user message, with ``str.format`` fields (write ``{{`` and ``}}``
for literal braces):

* ``forward`` (back-translation, English -> pivot): ``{caption}``, ``{language}`` (e.g. German), ``{code}`` (de);
* ``back`` (back-translation, pivot -> English): ``{text}`` (the pivot-language answer), ``{language}``, ``{code}``;
* ``mix`` (LLM mix): ``{caption_1}``, ``{caption_2}``.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

from dcase_t6.common.errors import UserError
from dcase_t6.common.inputs import require_file

DEFAULT_TEXTS = {
    "forward": "Translate this description of a sound recording into {language}. Answer with the translation "
               "only.\n\n{caption}",
    "back": "Translate this {language} description of a sound recording into English. Answer with the English "
            "translation only, as one sentence.\n\n{text}",
    "mix": "Two sound recordings are played at the same time. Write one English caption that describes the "
           "mixture, using the content of both captions below: keep every sound source and invent none. Answer "
           "with the caption only: one sentence of 5 to 30 words, without quotes.\n\n"
           "Caption 1: {caption_1}\nCaption 2: {caption_2}",
}
FIELDS = {"forward": ("caption", "language", "code"), "back": ("text", "language", "code"),
          "mix": ("caption_1", "caption_2")}
REQUIRED = {"forward": ("caption",), "back": ("text",), "mix": ("caption_1", "caption_2")}
LANGUAGE_NAMES = {
    "ar": "Arabic", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek", "es": "Spanish", "fi": "Finnish",
    "fr": "French", "hi": "Hindi", "hu": "Hungarian", "id": "Indonesian", "it": "Italian", "ja": "Japanese",
    "ko": "Korean", "nl": "Dutch", "pl": "Polish", "pt": "Portuguese", "ru": "Russian", "sv": "Swedish",
    "tr": "Turkish", "uk": "Ukrainian", "vi": "Vietnamese", "zh": "Chinese",
}
DEFAULT_LANGUAGES = ("de", "fr", "es", "it", "nl", "ru", "zh")
_CODE = re.compile(r"^[A-Za-z][A-Za-z_-]{1,11}$")


@dataclass(frozen=True)
class PromptTemplate:
    """One template: its kind (forward, back or mix), its text, and where it came from (``default`` or a path)."""

    kind: str
    text: str
    origin: str = "default"

    def fill(self, **values: str) -> str:
        """The prompt with the fields replaced by ``values``."""
        return self.text.format(**values)


def load_template(kind: str, path: str | Path | None = None) -> PromptTemplate:
    """The default template of ``kind``, or the one in the text file ``path``, checked.

    Args:
        kind: ``forward``, ``back`` or ``mix``.
        path: a UTF-8 text file replacing the default, or None.

    Returns:
        The template; a UserError names the file and the field when it uses an unknown field or lacks a
        required one.
    """
    if path is None:
        return PromptTemplate(kind, DEFAULT_TEXTS[kind])
    path = require_file(path, "prompt template not found")
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise UserError(f"{path}: prompt template not found") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: prompt template is not UTF-8 text; save it as UTF-8") from None
    allowed = ", ".join("{" + name + "}" for name in FIELDS[kind])
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as err:
        raise UserError(f"{path}: not a valid template ({err}); fields are {allowed}, write {{{{ and }}}} for "
                        "literal braces") from None
    unknown = sorted(used - set(FIELDS[kind]))
    if unknown:
        raise UserError(f"{path}: unknown field {{{unknown[0]}}} in the {kind} template; its fields are {allowed} "
                        "(write {{ and }} for literal braces)")
    missing = [name for name in REQUIRED[kind] if name not in used]
    if missing:
        raise UserError(f"{path}: the {kind} template never uses {{{missing[0]}}}; add it where the text goes "
                        f"(fields: {allowed})")
    return PromptTemplate(kind, text, str(path))


def language_name(code: str) -> str:
    """The English name of a language code (the code itself when unknown)."""
    return LANGUAGE_NAMES.get(code, code)


def parse_languages(languages: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Pivot-language codes from a comma-separated string or a list, checked (at least one, no repeats)."""
    codes = [code.strip() for code in (languages.split(",") if isinstance(languages, str) else languages)]
    codes = [code for code in codes if code]
    bad = [code for code in codes if not _CODE.match(code) or code == "en"]
    if bad or not codes:
        raise UserError(f"--languages {','.join(codes) or '(empty)'}: {bad[0] if bad else 'no language'} is not a "
                        "pivot language code; e.g. --languages de,fr,es (English is the source)")
    if len(set(codes)) != len(codes):
        raise UserError(f"--languages {','.join(codes)}: a language is repeated; name each once")
    return tuple(codes)
