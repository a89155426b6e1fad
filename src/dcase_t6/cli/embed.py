"""`dcase-t6 embed`: a run's (or an exported model's) embeddings and similarity matrix of a split."""

from __future__ import annotations

from pathlib import Path

import click

from dcase_t6.cli import main, print_summary
from dcase_t6.cli.console import reporter
from dcase_t6.common.errors import UserError


@main.command()
@click.argument("run", required=False)
@click.option("--model", "model_source", metavar="DIR|OWNER/NAME",
              help="Instead of RUN: an exported model folder (`dcase-t6 export`) or a Hugging Face hub repo id; "
                   "no registry is used, the files go to --out.")
@click.option("--revision", help="With --model OWNER/NAME: the hub branch, tag or commit (default main).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="With --model: the folder for the embeddings and similarity .npz files.")
@click.option("--data-root", required=True, help="Prepared data root.")
@click.option("--dataset", default="clotho", show_default=True, help="Dataset of the split (index name).")
@click.option("--split", "split_name", default="development-testing", show_default=True,
              help="Split to embed, e.g. development-testing, development-validation or eval.")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Which checkpoint of the run: best (by validation) or last (the latest state).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--chunk-batches", type=int, default=32, show_default=True,
              help="Batches per resumable chunk: an interrupted embedding continues at the first unfinished chunk "
                   "(kept in <dataset>.<split>.embeddings.partial beside the output).")
@click.option("--dist-timeout-minutes", type=float, default=120.0, show_default=True,
              help="Under torchrun: how long a process waits for the others (at most 10080; NCCL's own default "
                   "is 10 minutes).")
@click.option("--bank", "bank_split", metavar="SPLIT|DATASET/SPLIT",
              help="Also write QB-Norm's query bank of the split: the distinct captions of this split (e.g. "
              "development-training) scored against the clips of --split, as <dataset>.<split>.bank.npz beside the "
              "similarity file (for evaluate/ensemble/package --normalise querybank --bank FILE).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write the submission CSV here.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@click.pass_obj
def embed(obj, run, model_source, revision, out_dir, data_root, dataset, split_name, checkpoint, batch_size,
          chunk_batches, dist_timeout_minutes, bank_split, csv_path, as_json):
    """Embed a split with a trained run and register embeddings and the similarity matrix.

    Uses the run's best checkpoint (by its validation metric) unless --checkpoint last, and the input
    settings (audio_seconds) of the run's own config, exactly as its validation did.

    The matrix can then be named as RUN:DATASET/SPLIT wherever a matrix file is accepted
    (evaluate --predictions, ensemble --system, package --predictions).

    With --model DIR (a folder written by `dcase-t6 export`) or --model OWNER/NAME (a hub repo) instead
    of RUN, no registry is involved: <dataset>.<split>.embeddings.npz and .similarity.npz go to --out,
    with the input settings the model was exported with (`dcase-t6 runs import` registers it instead).

    Under torchrun each process embeds its share of the clips and captions (one per GPU) and the
    first writes the very files one process would. Killed or stopped, the same command again resumes at
    the first unfinished chunk (--chunk-batches) of every process.

    \b
    Example:
      dcase-t6 embed small-3fa2c1 --data-root DATA --split development-testing --csv dev_test.csv
      dcase-t6 embed --model exported/small --data-root DATA --split development-testing --out emb/
      dcase-t6 embed --model my-team/passt-clotho --data-root DATA --dataset eval --split evaluation \\
          --out emb/ --csv eval.csv
      dcase-t6 embed small-3fa2c1 --data-root DATA --split development-testing --bank development-training
      dcase-t6 embed small-3fa2c1 --data-root DATA --dataset eval --split evaluation \
          --bank clotho/development-training
      torchrun --nproc_per_node 4 -m dcase_t6 embed small-3fa2c1 --data-root DATA --dataset wavcaps \\
          --split train --batch-size 128
    """
    from dcase_t6.embedding.checkpoints import SplitRequest, check_batch_size, embed_exported, embed_run
    from dcase_t6.embedding.sharded import check_chunk_batches
    from dcase_t6.retrieval.matrices import read_matrix, write_csv
    from dcase_t6.runs.world import check_timeout, init_world

    check_batch_size(batch_size, "--batch-size")
    check_chunk_batches(chunk_batches, "--chunk-batches")
    check_timeout(dist_timeout_minutes, "--dist-timeout-minutes")
    if bank_split is not None:
        from dcase_t6.embedding.bank import check_bank_split

        check_bank_split(bank_split, dataset, split_name)
    if (run is None) == (model_source is None):
        raise UserError("embed: give either RUN (a registered run) or --model DIR|OWNER/NAME (an exported model)")
    _check_embed_outputs(obj["workdir"], model_source, out_dir, data_root, dataset, csv_path)
    if model_source is not None:
        from click.core import ParameterSource

        if click.get_current_context().get_parameter_source("checkpoint") is ParameterSource.COMMANDLINE:
            raise UserError("embed --model: --checkpoint does not apply (an exported folder holds one checkpoint)")
        if not out_dir:
            raise UserError("embed --model: give --out FOLDER for the embeddings and similarity files")
    elif out_dir or revision:
        raise UserError("embed RUN: --out and --revision only apply with --model (a run's files are registered "
                        "in its run folder)")
    world = init_world(dist_timeout_minutes)  # joins torchrun's processes, or runs alone
    request = SplitRequest(data_root, dataset, split_name, checkpoint, batch_size, chunk_batches, world)
    if model_source is not None:
        outcome = embed_exported(model_source, request, out_dir, revision, reporter=reporter)
    else:
        outcome = embed_run(obj["workdir"], run, request, reporter=reporter)
    if not world.is_main:
        return
    summary = outcome.as_json()
    if bank_split is not None:
        from dcase_t6.embedding.bank import BankRequest, bank_exported, bank_run

        bank_request = BankRequest(request, outcome, bank_split)
        summary["bank"] = str(bank_exported(model_source, bank_request, revision, reporter) if model_source else
                              bank_run(obj["workdir"], run, bank_request, reporter))
    if csv_path:
        write_csv(read_matrix(outcome.similarity), csv_path)
        summary["csv"] = csv_path
    print_summary(summary, as_json)


def _check_embed_outputs(workdir, model_source, out_dir, data_root, dataset, csv_path) -> None:
    """--out and --csv may be written without harming an input (before anything is read)."""

    from dcase_t6.common.outputs import FolderKind, OutputRequest, check_output_dir, check_output_file
    from dcase_t6.data.layout import Layout
    from dcase_t6.runs.layout import WorkLayout

    model = ("--model", model_source if model_source and Path(model_source).exists() else None)
    if out_dir:
        check_output_dir(OutputRequest(out_dir, "--out", inputs=[model, ("--data-root", data_root)],
                                       protected=[("work directory", workdir)]), FolderKind(replaced=False))
    if csv_path:
        layout = Layout.at(data_root)
        check_output_file(csv_path, "--csv", [model, ("--data-root index", layout.index_file(dataset)),
                                              ("--data-root queries", layout.queries_file(dataset)),
                                              ("--data-root relevance", layout.relevance_file(dataset)),
                                              ("--workdir registry", WorkLayout.at(workdir).database)])
