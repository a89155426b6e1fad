"""The explorer's figures as SVG, drawn with matplotlib's object-oriented API (no pyplot, no global backend)."""

from __future__ import annotations

import io

import numpy as np

from dcase_t6.explore.analysis import Exploration

CHARTS = ("ap-histogram", "recall-curve", "scatter")
_SIZE = (6.4, 3.4)


def render_chart(exploration: Exploration, name: str) -> bytes | None:
    """The SVG of chart ``name`` (one of :data:`CHARTS`); None for an unknown name or a scatter of one system.

    Args:
        exploration: the explored systems.
        name: ``ap-histogram`` (AP@16 per query), ``recall-curve`` (mean R@K, K = 1..100) or ``scatter``
            (AP@16 of the first system against the second, one point per query).

    Returns:
        SVG bytes, or None.
    """
    if name == "ap-histogram":
        return _ap_histogram(exploration)
    if name == "recall-curve":
        return _recall_curve(exploration)
    if name == "scatter" and len(exploration.systems) == 2:
        return _scatter(exploration)
    return None


def _figure(size=_SIZE):
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout="constrained")
    return figure, figure.add_subplot()


def _svg(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def _ap_histogram(exploration: Exploration) -> bytes:
    figure, axes = _figure()
    edges = np.linspace(0.0, 1.0, 21)
    values = [system.per_query["AP@16"] for system in exploration.systems]
    axes.hist(values, bins=edges, label=[system.name for system in exploration.systems])
    axes.set_xlabel("AP@16 of a query")
    axes.set_ylabel("queries")
    axes.set_xlim(0, 1)
    axes.legend(loc="upper center")
    return _svg(figure)


def _recall_curve(exploration: Exploration) -> bytes:
    figure, axes = _figure()
    for index, system in enumerate(exploration.systems):
        ks, recall = exploration.recall_curve(index)
        axes.plot(ks, recall, label=system.name)
        marks = ks[np.isin(ks, (1, 5, 10))]
        axes.plot(marks, recall[marks - 1], "o", color=axes.lines[-1].get_color())
    axes.set_xscale("log")
    axes.set_xlabel("K (log scale)")
    axes.set_ylabel("mean R@K")
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return _svg(figure)


def _scatter(exploration: Exploration) -> bytes:
    figure, axes = _figure((4.6, 4.4))
    first, second = (system.per_query["AP@16"] for system in exploration.systems)
    better = second > first
    worse = second < first
    axes.plot([0, 1], [0, 1], color="0.6", linewidth=1)
    for chosen, colour, label in ((better, "tab:green", f"{exploration.systems[1].name} better"),
                                  (worse, "tab:red", f"{exploration.systems[0].name} better"),
                                  (~(better | worse), "tab:gray", "equal")):
        axes.scatter(first[chosen], second[chosen], s=9, alpha=0.5, color=colour, rasterized=True,
                     label=f"{label}: {int(chosen.sum())}")
    axes.set_xlabel(f"AP@16, {exploration.systems[0].name}")
    axes.set_ylabel(f"AP@16, {exploration.systems[1].name}")
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(-0.02, 1.02)
    axes.set_aspect("equal")
    axes.legend(loc="lower right", fontsize="small")
    return _svg(figure)
