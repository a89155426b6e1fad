"""Draft technical report: metadata, results, ensemble weights, a plot and the runs' training curves, rendered to
PDF with fpdf2.

The HTML template ``submission/templates/report_template.html.j2`` is filled with jinja2 and laid out by fpdf2's
``write_html``; text uses matplotlib's bundled DejaVu Sans so non-ASCII author names render.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import jinja2
import matplotlib
import numpy as np
import pandas as pd
from fpdf import FPDF
from fpdf.fonts import TextStyle
from matplotlib.figure import Figure

from dcase_t6.common.atomic import atomic_path
from dcase_t6.common.errors import UserError
from dcase_t6.common.inputs import require_file
from dcase_t6.ensemble.weights import EnsembleWeights, read_weights
from dcase_t6.retrieval.metrics import METRIC_KEYS
from dcase_t6.retrieval.normalisation import TRANSDUCTIVE_NOTE, Normalisation
from dcase_t6.sharing.history import RunHistory, plot_curves
from dcase_t6.submission.metadata import team_of
from dcase_t6.submission.report_intervals import ReportIntervals, per_query_intervals

TEMPLATE_NAME = "report_template.html.j2"
FONT_FAMILY = "DejaVu"
FONT_FILES = {"": "DejaVuSans.ttf", "B": "DejaVuSans-Bold.ttf", "I": "DejaVuSans-Oblique.ttf",
              "BI": "DejaVuSans-BoldOblique.ttf"}
MAX_K = 50
FIGURE_WIDTH = 480
PDF_MAGIC = b"%PDF"


@dataclass(frozen=True)
class DraftOptions:
    """Optional inputs of the draft report: ensemble weights JSON, per-query evaluation CSV, and the training
    histories of the runs behind the systems (``RunHistory.of(registry.run(RUN))``), drawn as a figure of their
    per-epoch train loss and validation mAP@10/mAP@16 with a table of each run's best epoch; ``normalisations``
    are the (label, normalisation) of the systems whose scores the package normalised (inverted / dual softmax)."""

    weights: Path | None = None
    per_query: Path | None = None
    runs: tuple[RunHistory, ...] = ()
    resources: tuple = ()  # submission.systems.Resource: the external resources the report must list
    normalisations: tuple[tuple[str, Normalisation], ...] = ()


@dataclass(frozen=True)
class TechnicalReport:
    """The technical report a package holds: ``path``, an existing PDF, or with ``draft`` (the draft's optional
    inputs) where the draft report is written first."""

    path: str | Path
    draft: DraftOptions | None = None


@dataclass(frozen=True)
class ReportContent:
    """What the draft report's HTML shows.

    Args:
        metas: validated metadata of each system.
        weights: ensemble weights to list, or None.
        figure: the PNG to show.
        caption: the figure's caption.
        curves: the PNG of the runs' training curves (``sharing.history.plot_curves``), or None.
        runs: the runs those curves show (their best epochs are tabulated).
        resources: the external resources to list (``submission.systems.Resource``: datasets, pretrained models,
            LLMs with the purpose of their prompts).
        normalisations: (label, normalisation) of each system whose scores were normalised before packaging.
    """

    metas: list[dict]
    weights: EnsembleWeights | None
    figure: Path
    caption: str
    curves: Path | None = None
    runs: tuple[RunHistory, ...] = ()
    resources: tuple = ()
    normalisations: tuple[tuple[str, Normalisation], ...] = ()
    intervals: ReportIntervals | None = None  # the 95% intervals of the per-query file, as `evaluate --ci`


def check_pdf(path: str | Path) -> None:
    """Fail unless ``path`` is an existing file that starts with ``%PDF``."""
    path = Path(path)
    require_file(path, "report not found; pass the technical report PDF or use --draft-report PATH")
    with open(path, "rb") as handle:
        if handle.read(len(PDF_MAGIC)) != PDF_MAGIC:
            raise UserError(f"{path}: not a PDF (it does not start with %PDF); export the technical report as PDF")


def write_draft(out: str | Path, metas: list[dict], options: DraftOptions = DraftOptions()) -> None:
    """Write a draft report PDF for the systems described by ``metas`` to ``out``, atomically.

    Args:
        out: the PDF to write.
        metas: validated metadata of each system.
        options: optional ensemble weights file (read by ``ensemble.weights.read_weights``, so a hand-written
            ``{"weights": {...}}`` works), per-query CSV and run histories (their training curves).

    Raises:
        UserError: for an unreadable weights or per-query file, naming it and the fix.
    """
    weights = read_weights(options.weights) if options.weights else None
    curve = recall_curve(options.per_query) if options.per_query else None
    with tempfile.TemporaryDirectory(prefix="dcase-t6-report-") as scratch:
        figure = Path(scratch) / "figure.png"
        caption = _plot_recall(curve, figure) if curve is not None else _plot_results(metas, figure)
        curves = plot_curves(list(options.runs), Path(scratch) / "curves.png") if options.runs else None
        html = render_html(ReportContent(metas, weights, figure, caption, curves, options.runs, options.resources,
                                         options.normalisations,
                                         per_query_intervals(options.per_query) if curve is not None else None))
        pdf = _pdf(metas, html)
        with atomic_path(out) as tmp:
            pdf.output(str(tmp))


def recall_curve(path: str | Path, max_k: int = MAX_K) -> np.ndarray:
    """Mean R@K for K = 1..max_k from a ``dcase-t6 evaluate --per-query`` CSV (columns n_relevant, ranks)."""
    path = Path(path)
    require_file(path, f"file not found; write it with `dcase-t6 evaluate ... --per-query {path}`")
    try:
        table = pd.read_csv(path, dtype={"ranks": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a per-query CSV ({err}); write it with `dcase-t6 evaluate --per-query`") from None
    missing = {"n_relevant", "ranks"} - set(table.columns)
    if missing or table.empty:
        raise UserError(f"{path}: expected per-query rows with columns n_relevant and ranks "
                        f"(missing {sorted(missing)}); write it with `dcase-t6 evaluate --per-query`")
    ks = np.arange(1, max_k + 1)
    recalls = [_recall_row(path, row, text, n, ks)
               for row, (text, n) in enumerate(zip(table["ranks"], table["n_relevant"]), start=2)]
    return np.mean(recalls, axis=0)


def render_html(content: ReportContent) -> str:
    """Fill the HTML report template with ``content``.

    Returns:
        The HTML.
    """
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    source = files("dcase_t6.submission.templates").joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")
    template = environment.from_string(source)
    metas, weights = content.metas, content.weights
    authors = _authors(metas)
    members = weights.weights if weights else {}
    return template.render(
        title=_title(metas),
        authors=authors,
        affiliations=list(dict.fromkeys(author["affiliation_line"] for author in authors)),
        contact=", ".join(f"{a['name']} <{a['email']}>" for a in authors if a["corresponding"]),
        systems=[_system(meta) for meta in metas],
        metrics=METRIC_KEYS,
        weights=[(name, f"{value:.4f}") for name, value in sorted(members.items(), key=lambda item: -item[1])],
        weights_note=weights_note(weights) if weights else "",
        figure=str(content.figure),
        figure_width=FIGURE_WIDTH,
        caption=content.caption,
        curves=str(content.curves) if content.curves else None,
        curve_runs=[_run_row(history) for history in content.runs],
        resources=[{"name": item.name, "kind": item.kind, "use": item.use, "source": item.source or "n/a"}
                   for item in content.resources],
        normalisations=[{"label": label, "method": normalisation.describe(), "note": normalisation.note}
                        for label, normalisation in content.normalisations],
        intervals=content.intervals,
    )


def _run_row(history: RunHistory) -> dict:
    best = history.best or {}
    return {"id": history.run_id, "epochs": f"{len(history.epochs)}/{history.configured_epochs}",
            "best_epoch": str(history.best_epoch or "n/a"), "monitor": history.monitor,
            "values": [f"{best[key]:.4f}" if key in best else "n/a" for key in ("mAP@10", "mAP@16")]}


def weights_note(weights: EnsembleWeights) -> str:
    """One line on how the weights were chosen, from the search record of their file ("" when none).

    The normalisation is named when the file records a search (a validation score) or a non-default one.
    """
    parts = []
    validation = weights.validation
    if validation is not None and weights.metric in validation.scores:
        parts.append(f"chosen on validation {weights.metric} = {validation.scores[weights.metric]:.4f}")
    if weights.temperature is not None:
        normalisation = weights.normalisation
        note = normalisation.note if normalisation is not None else TRANSDUCTIVE_NOTE
        parts.append(f"normalize: {weights.normalize} at temperature {weights.temperature:g} ({note})")
    elif validation is not None or weights.normalize != "none":
        parts.append(f"normalize: {weights.normalize}")
    if weights.strategy is not None:
        parts.append(f"strategy: {weights.strategy}")
    return "; ".join(parts)


def _recall_row(path: Path, row: int, text: str, n_relevant, ks: np.ndarray) -> np.ndarray:
    try:
        ranks = np.sort(np.array(str(text).split(), dtype=np.int64))
        n = int(n_relevant)
    except ValueError:
        raise UserError(f"{path}: row {row}: ranks {text!r} / n_relevant {n_relevant!r} are not integers; "
                        "write the file with `dcase-t6 evaluate --per-query`") from None
    if n < 1:
        raise UserError(f"{path}: row {row}: n_relevant is {n}; every query needs at least one relevant file")
    return np.searchsorted(ranks, ks, side="right") / n


def _plot_recall(curve: np.ndarray, png: Path) -> str:
    figure = Figure(figsize=(6.4, 3.4))
    axes = figure.add_subplot()
    ks = np.arange(1, len(curve) + 1)
    axes.plot(ks, curve, marker=".", color="tab:blue")
    for k in (1, 5, 10):
        axes.axvline(k, color="0.8", linewidth=0.8, zorder=0)
    axes.set(xlabel="K", ylabel="mean R@K", xlim=(1, len(curve)), ylim=(0, 1), title="Recall at K")
    axes.grid(alpha=0.3)
    _save(figure, png)
    return f"mean recall R@K of the relevant files for K = 1 to {len(curve)} on the evaluated queries."


def _plot_results(metas: list[dict], png: Path) -> str:
    figure = Figure(figsize=(6.4, 3.4))
    axes = figure.add_subplot()
    positions = np.arange(len(METRIC_KEYS))
    width = 0.8 / len(metas)
    for index, meta in enumerate(metas):
        results = _results(meta)
        values = [results.get(key, np.nan) for key in METRIC_KEYS]
        axes.bar(positions + (index - (len(metas) - 1) / 2) * width, values, width,
                 label=meta["submission"]["label"])
    axes.set_xticks(positions, METRIC_KEYS)
    axes.set(ylabel="score", ylim=(0, 1), title="Development-testing results")
    axes.legend(fontsize="small")
    _save(figure, png)
    return "development-testing results reported in the metadata of each system."


def _save(figure: Figure, png: Path) -> None:
    figure.tight_layout()
    figure.savefig(png, dpi=150)


def _pdf(metas: list[dict], html: str) -> FPDF:
    pdf = FPDF(format="A4")
    fonts = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    for style, name in FONT_FILES.items():
        pdf.add_font(FONT_FAMILY, style, str(fonts / name))
    pdf.set_title(_title(metas))
    pdf.set_author(", ".join(author["name"] for author in _authors(metas)))
    pdf.set_creator("dcase-t6")
    pdf.add_page()
    pdf.set_font(FONT_FAMILY, size=10)
    heading = {f"h{level}": TextStyle(font_family=FONT_FAMILY, font_style="B", font_size_pt=size, color=(0, 0, 0),
                                      t_margin=4, b_margin=2)
               for level, size in ((1, 16), (2, 12), (3, 11))}
    pdf.write_html(html, font_family=FONT_FAMILY, tag_styles=heading)
    return pdf


def _title(metas: list[dict]) -> str:
    if len(metas) == 1:
        return metas[0]["submission"]["name"]
    return f"{team_of(metas[0]['submission']['label'])}: systems for DCASE 2025 Task 6"


def _authors(metas: list[dict]) -> list[dict]:
    authors: dict[tuple, dict] = {}
    for meta in metas:
        for author in meta["submission"]["authors"]:
            key = (author["firstname"], author["lastname"], author["email"])
            affiliation = author["affiliation"]
            entry = authors.setdefault(key, {
                "name": f"{author['firstname']} {author['lastname']}",
                "email": author["email"],
                "corresponding": False,
                "affiliation": affiliation["abbreviation"],
                "affiliation_line": f"{affiliation['abbreviation']}: {affiliation['department']}, "
                                    f"{affiliation['institute']}, {affiliation['location']}",
            })
            entry["corresponding"] |= author.get("corresponding") is True
    return list(authors.values())


def _system(meta: dict) -> dict:
    submission, system = meta["submission"], meta["system"]
    description = [(_field(key), _text(value)) for key, value in system["description"].items()]
    description.append(("Total parameters", f"{system['complexity']['total_parameters']:,}"))
    for key in ("training_datasets", "validation_datasets"):
        description.append((_field(key), ", ".join(str(dataset["name"]) for dataset in system[key]) or "n/a"))
    results = _results(meta)
    return {
        "label": submission["label"],
        "name": submission["name"],
        "abbreviation": submission["abbreviation"],
        "description": description,
        "results": [f"{results[key]:.4f}" if key in results else "n/a" for key in METRIC_KEYS],
    }


def _results(meta: dict) -> dict[str, float]:
    return dict(meta["results"]["development_testing"])


def _field(key: str) -> str:
    return key.replace("_", " ").capitalize()


def _text(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)

