"""`dcase-t6 export`: a registered run as a self-contained model folder, optionally pushed to the hub."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from dcase_t6.cli import console, json_option, main, print_json


@main.command()
@click.argument("run")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The model folder to write.")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Which checkpoint of the run to export.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--data-root", help="Where the dev-test ground truth is, for the model card's dev-test scores "
              "(default: the run's data_root).")
@click.option("--push-to-hub", "repo_id", metavar="OWNER/NAME",
              help="Also upload the folder to this Hugging Face model repo (created if missing; token from "
                   "`hf auth login` or HF_TOKEN).")
@click.option("--private", is_flag=True, help="With --push-to-hub: create the repo private.")
@json_option
@click.pass_obj
def export(obj, run, out, checkpoint, force, data_root, repo_id, private, as_json):
    """Export a run as a model folder others can load, without the registry, the data or pickle.

    \b
    The folder holds:
      README.md           model card: architecture, training data and recipe, validation and
                          dev-test metrics from the registry, how to load it
      config.json         model config, input settings, parameter count, SHA-256 of the weights
      model.safetensors   audio backbone, projections, temperature (cluster heads)
      text/               the text transformer (config, safetensors weights) and its tokenizer
      training.json       the run: id, code version, seed, data fingerprint, config, epochs, dev-test
    Load it with `dcase-t6 embed --model DIR`, register it with `dcase-t6 runs import DIR`, or in
    Python with dcase_t6.runs.folder.load_exported(DIR). The folder is written under a temporary
    name and renamed when complete; if the upload fails, the folder is still complete.

    \b
    Example:
      dcase-t6 export demo-seed0-3fa2c1 --out exported/demo-seed0
      dcase-t6 export small-3fa2c1 --out exported/small --push-to-hub my-team/passt-clotho --private
    """
    from dcase_t6.sharing.export import ExportRequest, export_run

    result = export_run(obj["workdir"], ExportRequest(run, out, checkpoint, force=force, data_root=data_root,
                                                      push_to=repo_id, private=private))
    if as_json:
        print_json(result.as_json())
        return
    console.print(f"exported run {result.run_id} ({result.checkpoint} checkpoint, epoch {result.checkpoint_epoch}) "
                  f"to {escape(str(result.folder))}", highlight=False, soft_wrap=True)
    table = Table("file", "bytes", "sha256")
    for item in result.files:
        table.add_row(escape(item.path), f"{item.bytes:,}", item.sha256[:16])
    console.print(table)
    if result.hub_url:
        console.print(f"pushed to the hub: {escape(result.hub_url)}", highlight=False, soft_wrap=True)
