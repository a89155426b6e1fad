"""`dcase-t6 augment ...`: generate extra training captions (back-translation, LLM mix)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.table import Table

from dcase_t6.cli import Group, console, json_option, main, print_json
from dcase_t6.cli.console import reporter
from dcase_t6.common.errors import UserError

if TYPE_CHECKING:
    from dcase_t6.captions.engine import AugmentReport


@main.group(cls=Group)
def augment():
    """Generate extra training captions: back-translations and LLM-merged captions of clip pairs.

    Both commands spend like a paid API may: --dry-run counts the requests and estimates their
    tokens, --max-requests caps one run, and every answer is appended to a journal as it arrives
    (OUT.journal.jsonl), so a killed or failed run continues where it stopped when run again,
    without asking anything twice. Answers that are empty, refusals, the source again, outside
    5-30 words, not plain ASCII or on several lines are counted, journaled and skipped. OUT.csv
    (written atomically) is what training reads; OUT.meta.json records the model, the prompts and
    the counts (its text_augmentation line fits the metadata YAML).

    \b
    Outputs and the training config keys that read them:
      back-translate  OUT.csv: file_name,caption,dataset,pivot
                      -> caption_augmentation.extra_captions_file (with extra_captions_p)
      llm-mix         OUT.csv: file_name_1,file_name_2,caption,dataset
                      -> audio_mix.merged_captions_file (with audio_mix.p)

    \b
    Example:
      dcase-t6 augment back-translate --data-root data --dataset clotho --out bt-marian.csv
      dcase-t6 augment llm-mix --data-root data --dataset clotho --pairs 50000 --out mix.csv \\
          --api-base https://api.openai.com/v1 --model gpt-4o --dry-run
    """


def _source_options(function):
    options = [
        click.option("--data-root", default="data", show_default=True, type=click.Path(file_okay=False),
                     help="Prepared data root (see `dcase-t6 prepare`)."),
        click.option("--dataset", default="clotho", show_default=True, help="Indexed dataset whose captions are used."),
        click.option("--split", default="development-training", show_default=True, help="Its training split."),
        click.option("--out", required=True, type=click.Path(dir_okay=False),
                     help="Output CSV (NAME.csv; NAME.journal.jsonl and NAME.meta.json go beside it)."),
        click.option("--journal", type=click.Path(dir_okay=False), help="Journal file (default: beside --out)."),
        click.option("--seed", default=0, show_default=True, type=click.IntRange(0),
                     help="Seed of the draws (pivot languages, pairs)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _api_options(function):
    options = [
        click.option("--api-base", metavar="URL", help="OpenAI-compatible endpoint, usually ending in /v1: "
                     "https://api.openai.com/v1, or a local server (vLLM, llama.cpp: http://localhost:8000/v1)."),
        click.option("--model", help="Model the endpoint serves, e.g. gpt-4o."),
        click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True, metavar="NAME",
                     help="Environment variable holding the key (a keyless local server accepts any value)."),
        click.option("--temperature", type=click.FloatRange(0, 2), help="Sampling temperature (default: the "
                     "server's; not sent)."),
        click.option("--max-tokens", default=100, show_default=True, type=click.IntRange(1),
                     help="Most tokens of one answer (an answer cut off there is skipped)."),
        click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(0, 86400, min_open=True),
                     help="Deadline of each attempt in seconds (connect, send, wait and read the whole answer): "
                          "then it is abandoned and retried, however slowly the server is still sending."),
        click.option("--retries", default=5, show_default=True, type=click.IntRange(0),
                     help="Retries with exponential backoff on 408/409/429/5xx, timeouts and lost connections."),
        click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 256),
                     help="Requests in flight at once."),
        click.option("--dry-run", is_flag=True, help="Only count the requests still needed and estimate their tokens "
                     "and cost (--price-in/--price-out); warns above the task's suggested LLM budget (the DCASE 2025 "
                     "rules: about 15-25 USD over the challenge)."),
        click.option("--price-in", default=2.50, show_default=True, type=click.FloatRange(0), metavar="USD",
                     help="Dry run: USD per million prompt tokens (default: GPT-4o's list price)."),
        click.option("--price-out", default=10.00, show_default=True, type=click.FloatRange(0), metavar="USD",
                     help="Dry run: USD per million completion tokens (default: GPT-4o's list price)."),
        click.option("--max-requests", type=click.IntRange(1), help="Send at most N requests (local models: "
                     "translations) in this run; run again to continue."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@augment.command("back-translate")
@_source_options
@click.option("--languages", default="de,fr,es,it,nl,ru,zh", show_default=True,
              help="Pivot languages; each caption goes through one, drawn from the seed.")
@click.option("--local-models", default="Helsinki-NLP/opus-mt-{src}-{tgt}", show_default=True, metavar="PATTERN",
              help="Local models: hub name or folder with {src} and {tgt} language codes (without --api-base).")
@click.option("--device", default="auto", show_default=True, help="Local models: auto (GPU when present), cpu, cuda.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1), help="Local models: captions "
              "translated at once.")
@click.option("--beams", default=4, show_default=True, type=click.IntRange(1), help="Local models: beam width.")
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(1),
              help="Local models: longest translation in tokens.")
@_api_options
@click.option("--prompt-forward", type=click.Path(dir_okay=False), metavar="FILE",
              help="Template of the English -> pivot request; fields {caption}, {language}, {code}.")
@click.option("--prompt-back", type=click.Path(dir_okay=False), metavar="FILE",
              help="Template of the pivot -> English request; fields {text}, {language}, {code}.")
@json_option
def back_translate(data_root, dataset, split, out, journal, seed, languages, local_models, device, batch_size, beams,
                   max_new_tokens, api_base, model, api_key_env, temperature, max_tokens, timeout, retries,
                   concurrency, dry_run, price_in, price_out, max_requests, prompt_forward, prompt_back, as_json):
    """Back-translate every caption of a training split through a random pivot language.

    Without --api-base, local MarianMT models translate (Helsinki-NLP/opus-mt-en-XX then
    opus-mt-XX-en, batched, on the GPU when there is one; the PyPI package sentencepiece is
    needed). With --api-base and --model, an OpenAI-compatible chat-completions endpoint does,
    in two requests per caption (forward, back), with templates you can replace.

    \b
    Example:
      dcase-t6 augment back-translate --data-root data --dataset clotho --out bt-marian.csv
      dcase-t6 augment back-translate --data-root data --dataset clotho --out bt-marian.csv \\
          --local-models /models/opus-mt-{src}-{tgt} --languages de,fr,es --device cuda
      export OPENAI_API_KEY=sk-...
      dcase-t6 augment back-translate --data-root data --dataset clotho --out bt-gpt4o.csv \\
          --api-base https://api.openai.com/v1 --model gpt-4o --dry-run
      dcase-t6 augment back-translate --data-root data --dataset clotho --out bt-qwen.csv \\
          --api-base http://localhost:8000/v1 --model Qwen/Qwen2.5-7B-Instruct --max-requests 2000
    """
    from dcase_t6.captions.backtranslation import (
        ApiTranslation,
        BackTranslationSettings,
        LocalTranslation,
    )
    from dcase_t6.captions.backtranslation import back_translate as run
    from dcase_t6.captions.prompts import load_template, parse_languages
    from dcase_t6.captions.source import CaptionSource

    files = _output_files(out, journal, data_root, dataset, [("--prompt-forward", prompt_forward),
                                                           ("--prompt-back", prompt_back)])
    if api_base:
        backend = ApiTranslation(_endpoint(api_base, model, api_key_env, temperature, max_tokens, timeout, retries),
                                 load_template("forward", prompt_forward), load_template("back", prompt_back))
    else:
        given = [flag for flag, value in (("--model", model), ("--prompt-forward", prompt_forward),
                                          ("--prompt-back", prompt_back)) if value]
        if given:
            raise UserError(f"{given[0]} needs --api-base (the endpoint that serves the model); without it local "
                            "MarianMT models translate (--local-models)")
        backend = LocalTranslation(local_models, device, batch_size, beams, max_new_tokens)
    settings = BackTranslationSettings(parse_languages(languages), seed)
    report = run(CaptionSource(data_root, dataset, split), settings, backend,
                 _augment_run(files, dry_run, max_requests, concurrency))
    _render(report, as_json, (price_in, price_out))


@augment.command("llm-mix")
@_source_options
@click.option("--pairs", required=True, type=click.IntRange(1), help="Pairs of clips to merge (the AISTAT 2025 "
              "system made 50,000 for Clotho).")
@click.option("--clusters", metavar="RUN|FILE", help="Never pair two captions of the same cluster: a run with "
              "cluster labels, or its clusters.csv (clip, caption, label).")
@_api_options
@click.option("--prompt", type=click.Path(dir_okay=False), metavar="FILE",
              help="Template of the merge request; fields {caption_1}, {caption_2}.")
@json_option
@click.pass_obj
def llm_mix(obj, data_root, dataset, split, out, journal, seed, pairs, clusters, api_base, model, api_key_env,
            temperature, max_tokens, timeout, retries, concurrency, dry_run, price_in, price_out, max_requests, prompt,
            as_json):
    """Merge the captions of random pairs of training clips into one caption of their mixture.

    Pairs are drawn from the seed (pair i from (seed, i), so more pairs later keep the earlier
    ones); with --clusters, two captions of the same cluster are never paired. An
    OpenAI-compatible chat-completions endpoint writes each merged caption.

    \b
    Example:
      export OPENAI_API_KEY=sk-...
      dcase-t6 augment llm-mix --data-root data --dataset clotho --pairs 50000 --out mix.csv \\
          --api-base https://api.openai.com/v1 --model gpt-4o --dry-run
      dcase-t6 augment llm-mix --data-root data --dataset clotho --pairs 50000 --out mix.csv \\
          --api-base https://api.openai.com/v1 --model gpt-4o --clusters refinetune-3fa2c1 \\
          --prompt my-mix-prompt.txt --max-requests 5000
    """
    from dcase_t6.captions.mixing import MixSettings
    from dcase_t6.captions.mixing import llm_mix as run
    from dcase_t6.captions.prompts import load_template
    from dcase_t6.captions.source import CaptionSource, read_cluster_labels

    if not api_base:
        raise UserError("llm-mix needs --api-base (an OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or "
                        "a local vLLM server http://localhost:8000/v1) and --model")
    files = _output_files(out, journal, data_root, dataset, [("--prompt", prompt), ("--clusters", clusters)])
    endpoint = _endpoint(api_base, model, api_key_env, temperature, max_tokens, timeout, retries)
    labels = read_cluster_labels(clusters, obj["workdir"], dataset) if clusters else None
    report = run(CaptionSource(data_root, dataset, split), MixSettings(pairs, seed, labels, clusters), endpoint,
                 load_template("mix", prompt), _augment_run(files, dry_run, max_requests, concurrency))
    _render(report, as_json, (price_in, price_out))


def _endpoint(api_base, model, api_key_env, temperature, max_tokens, timeout, retries):
    from dcase_t6.captions.endpoint import EndpointSettings

    if not model:
        raise UserError(f"--api-base {api_base} needs --model: the model name the endpoint serves, e.g. gpt-4o")
    return EndpointSettings(api_base, model, api_key_env, temperature, max_tokens, timeout, retries)


def _output_files(out, journal, data_root, dataset, inputs):
    """The output CSV, journal and sidecar, each a writable file that is no input nor another of them."""
    from dcase_t6.captions.engine import OutputFiles
    from dcase_t6.common.outputs import check_output_file
    from dcase_t6.data.layout import Layout

    files = OutputFiles.beside(out, journal)
    inputs = [*inputs, ("--data-root index", Layout.at(data_root).index_file(dataset))]
    check_output_file(files.csv, "--out", inputs)
    check_output_file(files.journal, "--journal", [*inputs, ("--out", files.csv)])
    check_output_file(files.metadata, "--out sidecar", [*inputs, ("--out", files.csv), ("--journal", files.journal)])
    return files


def _augment_run(files, dry_run, max_requests, concurrency):
    from dcase_t6.captions.engine import AugmentRun, SpendLimits

    return AugmentRun(files, SpendLimits(dry_run=dry_run, max_requests=max_requests, concurrency=concurrency),
                      reporter)


def _render(report: AugmentReport, as_json: bool, prices: tuple[float, float]) -> None:
    """Print the report (a table, or JSON; a dry run adds its cost at ``prices``, USD per million prompt and
    completion tokens); exit 130 when the run was interrupted."""
    from dcase_t6.captions.cost import estimate_cost

    cost = estimate_cost(report.estimate, report.total_tokens, *prices) if report.dry_run else None
    if as_json:
        print_json({**report.as_json(), **({"cost": cost.as_json()} if cost else {})})
    elif report.dry_run:
        _print_estimate(report, cost)
    else:
        _print_report(report)
    if cost is not None and cost.over_budget:
        _warn_budget(cost)
    if report.stopped == "interrupted":
        sys.exit(130)


def _warn_budget(cost) -> None:
    from dcase_t6.captions.cost import BUDGET_USD

    low, high = BUDGET_USD
    reporter.warning(f"estimated ${cost.total_usd:,.2f} in all is more than the task's suggested LLM budget (about "
                     f"${low:g}-{high:g} over the whole challenge, DCASE 2025 Task 6 rules, External Resources); use "
                     "fewer --pairs or captions, a cheaper model, a local server, or local MarianMT models")


def _print_estimate(report: AugmentReport, cost) -> None:
    from pathlib import Path

    estimate = report.estimate
    done = report.kept + sum(report.rejected.values())
    journal = f"in {escape(report.journal)}" if Path(report.journal).exists() else "(no journal yet)"
    console.print(f"{report.kind}: {report.items} item(s) planned, {done} already answered {journal}")
    capped = "" if estimate["requests"] == estimate["requests_needed"] else \
        f" (of {estimate['requests_needed']} still needed; --max-requests)"
    console.print(f"dry run: {estimate['requests']} request(s) would be sent{capped}")
    if estimate["prompt_tokens"] or estimate["completion_tokens"]:
        console.print(f"estimated tokens: {estimate['prompt_tokens']:,} prompt + {estimate['completion_tokens']:,} "
                      f"completion = {estimate['prompt_tokens'] + estimate['completion_tokens']:,} "
                      f"({estimate['method']}); nothing was sent")
        spent = f" + ${cost.spent_usd:,.2f} already spent (journal) = ${cost.total_usd:,.2f}" if cost.spent_usd else ""
        console.print(f"estimated cost: ${cost.usd:,.2f}{spent} at ${cost.price_in:g} / ${cost.price_out:g} per "
                      "million prompt / completion tokens (--price-in/--price-out)", highlight=False)
    else:
        console.print("local models: no tokens are paid; nothing was translated")


def _print_report(report: AugmentReport) -> None:
    table = Table(title=f"{report.kind}: {escape(report.output or '')}", title_justify="left")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("items planned", str(report.items))
    table.add_row("kept", str(report.kept))
    for reason, count in report.rejected.items():
        table.add_row(f"skipped: {escape(reason)}", str(count))
    table.add_row("failed (asked again next run)", str(report.failed))
    table.add_row("not asked yet", str(report.pending))
    table.add_row("requests sent by this run", f"{report.requests} ({report.attempts} HTTP attempts)"
                  if report.attempts != report.requests else str(report.requests))
    if report.total_tokens["prompt"] or report.total_tokens["completion"]:
        table.add_row("tokens this run (prompt + completion)",
                      f"{report.tokens['prompt']:,} + {report.tokens['completion']:,}")
        table.add_row("tokens in the journal", f"{report.total_tokens['prompt']:,} + "
                      f"{report.total_tokens['completion']:,}")
    console.print(table)
    console.print(f"journal: {escape(report.journal)}; model and prompts: {escape(report.metadata or '')}")
    if report.stopped == "max-requests":
        console.print(f"[yellow]stopped at --max-requests; {report.pending + report.failed} item(s) left: run the same "
                      "command again to continue[/]")
    elif report.stopped == "interrupted":
        console.print("[yellow]interrupted; run the same command again to continue[/]")
    elif report.failed:
        console.print(f"[yellow]{report.failed} item(s) got no answer; run the same command again to ask them "
                      "again[/]")
