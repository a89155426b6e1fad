"""How `dcase-t6 prepare` shows its reports (the dataclasses of ``dcase_t6.data.reports``): a JSON object with
``--json``, else tables and warning lines."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from dcase_t6.cli import print_json
from dcase_t6.cli.console import console, reporter

if TYPE_CHECKING:
    from dcase_t6.data.audit import AuditReport
    from dcase_t6.data.reports import CacheReport, IndexReport, RelevanceReport, SyntheticReport


def prepare_done(report: IndexReport | RelevanceReport | CacheReport, as_json: bool, printer=None) -> None:
    """Print a prepare report (a dataclass of ``dcase_t6.data.reports``) as JSON or with ``printer`` (default:
    the split-index summary)."""
    if as_json:
        print_json(report.as_json())
    else:
        (printer or print_index_summary)(report)


def print_index_summary(report: IndexReport) -> None:
    table = Table(title=f"{report.dataset}: {report.index}" + (" (up to date)" if report.up_to_date else ""),
                  title_justify="left")
    for column in ("split", "clips", "captions", "hours"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, counts in report.splits.items():
        table.add_row(split, str(counts["clips"]), str(counts["captions"]), f"{counts['hours']:.2f}")
    console.print(table)
    for source, count in (report.excluded or {}).items():
        console.print(f"excluded {count} forbidden Freesound item(s) from {source}")
    if report.queries is not None:
        console.print(f"queries: {report.queries} -> {report.queries_file}")
    warn_skipped(report.all_skipped(), report.report)


def print_synthetic(report: SyntheticReport) -> None:
    print_index_summary(report)
    print_relevance(report.relevance)


def print_relevance(report: RelevanceReport) -> None:
    per_query = report.relevant_per_query
    console.print(f"relevance: {report.queries} queries, {per_query['min']}-{per_query['max']} relevant files "
                  f"each (mean {per_query['mean']}) -> {report.relevance}")


def print_audit(report: AuditReport, shown: int = 20) -> None:
    table = Table(title=f"Freesound-id audit of {escape(report.root)} ({report.forbidden_ids} forbidden ids: "
                  f"{escape(report.forbidden_file)})", title_justify="left")
    names = [item.name for item in report.protected]
    for column in ("training source", "clips", "with id", *(f"in {name}" for name in names), "forbidden"):
        table.add_column(escape(column), justify="left" if column == "training source" else "right")
    for source in report.sources:
        table.add_row(escape(source.name), str(source.clips), str(source.with_ids),
                      *(str(len(source.overlaps.get(name, []))) for name in names), str(len(source.forbidden)))
    console.print(table)
    for item in report.protected:
        if not item.with_ids:
            console.print(f"{escape(item.name)}: {item.clips} clips without Freesound ids; only the forbidden list "
                          "guards it")
    for source in report.sources:
        for what, ids in [*((f"shares with {name}", ids) for name, ids in source.overlaps.items()),
                          ("holds forbidden", source.forbidden)]:
            if ids:
                more = f" ... ({len(ids)} in all; --json lists every one)" if len(ids) > shown else ""
                console.print(f"[red]{escape(source.name)}[/] {what} {len(ids)} Freesound id(s): "
                              f"{', '.join(ids[:shown])}{more}", highlight=False, soft_wrap=True)
    if report.ok:
        console.print("[green]ok[/]: no training source shares a Freesound id with a protected set or holds a "
                      "forbidden id")
    else:
        console.print("[bold red]audit failed[/]: remove these clips from training (`prepare wavcaps --forbidden "
                      "FILE` leaves out the ids FILE lists; leave any other source out of the config's datasets)")


def print_cache(report: CacheReport) -> None:
    console.print(f"cache {report.cache}: {report.clips} clips ({report.hours} h, {report.size_gb} GB of samples); "
                  f"{report.decoded} cached now, {report.up_to_date} up to date, "
                  f"{report.unchanged_content} touched but unchanged")
    for name, entry in report.storage.items():
        cap = f", first {entry['max_seconds']:g} s of each clip" if entry["max_seconds"] else ""
        console.print(f"  {name}: {entry['mode']}{cap} ({entry['clips']} clips, {entry['hours']} h)")
    if report.stale_gb >= 1:
        console.print(f"  {report.stale_gb} GB of replaced samples remain in the shards; to reclaim them, delete "
                      f"{report.cache} and run this command again")
    warn_skipped(report.skipped, report.skipped_file)
    warn_skipped(report.truncated, report.truncated_file,
                  "{count} truncated file(s) (the header promises more audio than the file holds) cached at the "
                  "length that decodes")


def warn_skipped(skipped: list[dict], listing: str, what: str = "skipped {count} item(s)") -> None:
    if skipped:
        first = "; ".join(f"{item['path']}: {item['reason']}" for item in skipped[:3])
        reporter.warning(f"{what.format(count=len(skipped))}, all listed in {listing}; first: {first}")
