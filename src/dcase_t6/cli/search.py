"""`dcase-t6 index build` and `dcase-t6 search`: search over your own sounds with a trained model."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from dcase_t6.cli import console, json_option, main, print_json
from dcase_t6.cli.console import reporter
from dcase_t6.common.errors import UserError


@main.group()
def index():
    """Index a folder of your own sounds for `dcase-t6 search` (and `explore --index`).

    \b
    Example:
      dcase-t6 index build --model small-3fa2c1 --audio ~/sounds --out sounds-index
      dcase-t6 search sounds-index "a dog barks twice"
    """


@index.command("build")
@click.option("--model", "model_source", required=True, metavar="RUN|DIR|OWNER/NAME",
              help="The model: a registered run (id or unique prefix), an exported model folder (`dcase-t6 export`) "
                   "or a Hugging Face hub repo id. An index holds one model's vectors.")
@click.option("--audio", "audio_dir", required=True, type=click.Path(file_okay=False),
              help="Folder of sounds, searched recursively (.wav, .flac, .mp3, .ogg).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="The index folder: new, empty, or an index of the same model to update.")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="With a run: which checkpoint.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Clips per forward pass.")
@click.option("--approximate/--exact", "approximate", default=None,
              help="Build the approximate (FAISS) index whatever the size, or never; default: from "
                   "100,000 files on (the measured break-even, docs/search.md).")
@json_option
@click.pass_obj
def build(obj, model_source, audio_dir, out_dir, checkpoint, batch_size, approximate, as_json):
    """Embed every audio file under --audio into an index folder (--out).

    Incremental: a rebuild embeds only new and changed files (by size and time, then content), drops the
    removed ones and keeps the rest; an interrupted build resumes where it stopped, and the previous index
    stays readable until the new one is complete. Files that do not decode are left out with a warning.

    \b
    Example:
      dcase-t6 index build --model small-3fa2c1 --audio ~/sounds --out sounds-index
      dcase-t6 index build --model exported/small --audio ~/sounds --out sounds-index --json
    """
    from dcase_t6.runs.hub import looks_like_repo_id
    from dcase_t6.search.build import BuildRequest, build_index, check_index_folder
    from dcase_t6.search.encoder import ModelSource, open_encoder

    folder = Path(model_source).expanduser()
    is_folder = folder.is_dir() or looks_like_repo_id(model_source)
    check_index_folder(out_dir, audio_dir, inputs=[("--model", folder if folder.is_dir() else None)],
                       protected=[("work directory", obj["workdir"])])
    source = (ModelSource(folder=model_source, batch_size=batch_size) if is_folder else
              ModelSource(run=model_source, workdir=obj["workdir"], checkpoint=checkpoint, batch_size=batch_size))
    with open_encoder(source, "index") as encoder:
        outcome = build_index(BuildRequest(audio_dir, out_dir, approximate), encoder, reporter)
    if as_json:
        print_json(outcome.as_json())
        return
    state = "updated" if outcome.updated else "up to date"
    console.print(f"index {escape(str(outcome.index))}: {outcome.files} files, {state} in {outcome.seconds:.1f} s "
                  f"({outcome.embedded} embedded, {outcome.unchanged} unchanged, {outcome.same_content} same content, "
                  f"{outcome.resumed} resumed, {outcome.removed} removed, {outcome.skipped} left out); "
                  f"{'exact and approximate' if outcome.approximate else 'exact'} search; model "
                  f"{escape(outcome.model.describe())}", highlight=False, soft_wrap=True)


@main.command()
@click.argument("index_dir", metavar="INDEX", type=click.Path(file_okay=False))
@click.argument("text", required=False)
@click.option("--like", "like", type=click.Path(dir_okay=False),
              help="Instead of TEXT: an example sound; finds the files that sound like it.")
@click.option("--top", type=int, default=10, show_default=True, help="How many files to list.")
@click.option("--exact", "exact", is_flag=True, help="Search every vector (the default below 100,000 files).")
@click.option("--approximate", "approximate", is_flag=True,
              help="Use the index's approximate (FAISS) index (the default when it has one).")
@json_option
@click.pass_obj
def search(obj, index_dir, text, like, top, exact, approximate, as_json):
    """List the files of INDEX that best match TEXT (a caption), with their scores.

    TEXT is embedded with the model the index was built with (its run in --workdir, or its exported
    folder), and every file is ranked by cosine similarity; --like FILE ranks them against a sound instead.

    \b
    Example:
      dcase-t6 search sounds-index "a dog barks twice"
      dcase-t6 search sounds-index --like ~/sounds/door.wav --top 5 --json
    """
    from dcase_t6.search.query import Query, check_query, open_searcher

    if exact and approximate:
        raise UserError("search: give --exact or --approximate, not both")
    query = Query(text, like, top, "exact" if exact else "approximate" if approximate else "auto")
    check_query(query)
    with open_searcher(index_dir, obj["workdir"], reporter) as searcher:
        answer = searcher.search(query)
    if as_json:
        print_json(answer.as_json())
        return
    asked = f'"{escape(text)}"' if text is not None else f"like {escape(str(like))}"
    console.print(f"search {asked}: top {len(answer.hits)} of {answer.vectors} files, {answer.method}, "
                  f"{answer.seconds * 1000:.0f} ms", highlight=False, soft_wrap=True)
    table = Table(show_edge=False, pad_edge=False)
    for column, justify in (("rank", "right"), ("score", "right"), ("file", "left")):
        table.add_column(column, justify=justify)
    for hit in answer.hits:
        table.add_row(str(hit.rank), f"{hit.score:.4f}", escape(hit.path))
    console.print(table)
