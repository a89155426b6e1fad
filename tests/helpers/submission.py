"""Submission systems for the packaging tests: real similarity CSVs over awkward file names and queries, filled and
valid metadata YAML, a minimal PDF report, the ``evaluate --json`` results a user feeds in, and a PDF's text."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import yaml

from dcase_t6.retrieval.matrices import SimilarityMatrix, write_csv
from dcase_t6.submission import metadata
from dcase_t6.submission.package import SystemFiles

LABEL = "Mueller-Luedenscheidt_CP-JKU_task6_1"
EVALUATE_JSON = {"R@1": 0.2329, "R@5": 0.5217, "R@10": 0.6478, "mAP@10": 0.3523, "mAP@16": 0.40591234567,
                 "n_queries": 1037}

TEAM = "Mueller-Luedenscheidt_CP-JKU"
FILES = ["Pensol - le Moulin cours d&#39;eau.wav", 'bird, in "rain".wav', "Ünïcødé – café.wav",
         "  spaced  name .wav", "it's a dog.wav"]
QUERIES = ["A bird sings, loudly.", 'Water "flows" fast', "Schön & laut: ça va", "cours d&#39;eau, it's wet"]
PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


def filled_meta(label: str = LABEL, results: dict | None = None) -> dict:
    """The template rendered for ``label`` with the submission names a user fills in (non-ASCII authors)."""
    meta = yaml.safe_load(metadata.render_meta(label, results))
    submission = meta["submission"]
    submission.update(name="PaSST & RoBERTa ensemble", abbreviation="PaRoEns")
    submission["authors"] = [
        _author("Müller", "Zoë", "zoe.mueller@jku.at", corresponding=True),
        _author("Łukasiewicz", "Ørjan", "o.l@example.org"),
    ]
    return meta


def _author(lastname: str, firstname: str, email: str, corresponding: bool = False) -> dict:
    author = {"lastname": lastname, "firstname": firstname, "email": email,
              "affiliation": {"abbreviation": "CP-JKU", "institute": "Johannes Kepler Universität",
                              "department": "Institute of Computational Perception", "location": "Linz, Austria"}}
    if corresponding:
        author["corresponding"] = True
    return author


def label(index: int) -> str:
    return f"{TEAM}_task6_{index}"


def write_yaml(path: Path, meta: dict) -> Path:
    path.write_text(yaml.safe_dump(meta, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def make_system(folder: Path, index: int) -> SystemFiles:
    """A real similarity CSV and a filled, valid metadata YAML for system ``index``."""
    matrix = SimilarityMatrix(QUERIES, FILES, np.random.default_rng(index).standard_normal((len(QUERIES), len(FILES))))
    predictions = folder / f"system{index}.csv"
    write_csv(matrix, predictions)
    return SystemFiles(label(index), predictions, write_yaml(folder / f"system{index}.yaml", filled_meta(label(index))))


def pdf_text_and_images(data: bytes) -> tuple[str, int]:
    """A PDF's text (white space folded) and how many images its pages hold."""
    from pypdf import PdfReader  # a dev dependency only the report tests need

    reader = PdfReader(io.BytesIO(data))
    text = " ".join(" ".join(page.extract_text().split()) for page in reader.pages)
    return text, sum(len(page.images) for page in reader.pages)
