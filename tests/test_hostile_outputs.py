"""Hostile output paths: nothing a user owns is ever deleted or overwritten.

Every case runs a real command on real files and must end in exit code 2, one ``error:`` line naming the path and
the fix, no traceback, and the user's files byte-for-byte as they were (nothing written, nothing removed). The rules
(``dcase_t6.common.outputs``): an output is never an input, a link to one or a folder holding one; ``--force``
replaces only a folder holding dcase-t6's marker and nothing the marker does not list, and never the work directory
or the data root; run names are one safe folder name.
"""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.common.errors import UserError
from dcase_t6.common.fsops import replace_owned_dir
from dcase_t6.common.outputs import MARKER, mark_output
from dcase_t6.retrieval.matrices import SimilarityMatrix, write_matrix
from dcase_t6.runs.registry import ImportedRun, Registry
from helpers.cli import refused
from helpers.data import snapshot
from helpers.submission import PDF, make_system

SYNTHETIC = ["--train", "6", "--val", "2", "--test", "2", "--min-duration", "2", "--max-duration", "2.5"]


def run(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def refused_intact(tmp_path: Path, args, *fragments: str) -> str:
    """``refused`` and nothing under ``tmp_path`` changed."""
    before = snapshot(tmp_path)
    line = refused(run(*args), *fragments)
    assert snapshot(tmp_path) == before
    return line


# --- export: the work directory, the data root, folders dcase-t6 did not write ------------------------------------

@pytest.fixture
def registered(tmp_path) -> dict:
    """A work directory whose registry holds one finished run (with a checkpoint file), and a data root."""
    data = tmp_path / "data"
    (data / "index").mkdir(parents=True)
    (data / "index" / "clotho.csv").write_text("dataset,split\nclotho,development-training\n")
    workdir = tmp_path / "work"
    registry = Registry(workdir)
    run_id = registry.create_run("tiny", {"data_root": str(data)}, None, 0)
    registry.set_status(run_id, "finished")
    (workdir / "runs" / run_id).mkdir(parents=True, exist_ok=True)
    (workdir / "runs" / run_id / "best.pt").write_bytes(b"weights of weeks of training")
    return {"workdir": workdir, "data": data, "run": run_id, "tmp": tmp_path}


def export(case, *args):
    return ["--workdir", case["workdir"], "export", case["run"], *args]


def test_export_force_never_replaces_the_work_directory(registered):
    refused_intact(registered["tmp"], export(registered, "--out", registered["workdir"], "--force"),
                   "is the work directory", "choose another --out")


def test_export_force_never_replaces_a_folder_holding_the_work_directory(registered):
    refused_intact(registered["tmp"], export(registered, "--out", registered["tmp"], "--force"),
                   "holds the work directory")


def test_export_force_never_replaces_a_link_to_the_work_directory(registered):
    link = registered["tmp"] / "link"
    link.symlink_to(registered["workdir"], target_is_directory=True)
    refused_intact(registered["tmp"], export(registered, "--out", link, "--force"), "is the work directory")


def test_export_force_never_replaces_the_runs_data_root(registered):
    refused_intact(registered["tmp"], export(registered, "--out", registered["data"], "--force"),
                   "is the data root")


def test_export_force_never_replaces_the_given_data_root(registered):
    refused_intact(registered["tmp"], export(registered, "--out", registered["data"], "--force", "--data-root",
                                             registered["data"]), "is the data root")


def test_export_force_never_replaces_a_run_folder(registered):
    refused_intact(registered["tmp"], export(registered, "--out", registered["workdir"] / "runs" / registered["run"],
                                             "--force"), "is the run folder")


def test_export_force_never_replaces_a_folder_it_did_not_write(registered):
    mine = registered["tmp"] / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("three years")
    refused_intact(registered["tmp"], export(registered, "--out", mine, "--force"),
                   "not a model folder written by dcase-t6", MARKER)


def test_export_force_never_replaces_a_users_file_in_its_own_folder(registered):
    earlier = registered["tmp"] / "exported"
    earlier.mkdir()
    (earlier / "config.json").write_text("{}")
    mark_output(earlier, "export")
    (earlier / "notes.txt").write_text("added by the user later")
    refused_intact(registered["tmp"], export(registered, "--out", earlier, "--force"),
                   "holds 'notes.txt', which dcase-t6 did not write")


def usage_refused_intact(tmp_path: Path, args, *fragments: str) -> None:
    """Refused by click's own check of the option (exit 2, its usage message, no traceback), nothing changed."""
    before = snapshot(tmp_path)
    result = run(*args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output and all(fragment in result.output for fragment in fragments)
    assert snapshot(tmp_path) == before


def test_export_out_that_is_a_file_or_below_a_file(registered):
    (registered["tmp"] / "file").write_text("a file")
    usage_refused_intact(registered["tmp"], export(registered, "--out", registered["tmp"] / "file", "--force"),
                         "is a file")
    refused_intact(registered["tmp"], export(registered, "--out", registered["tmp"] / "file" / "sub"),
                   "is a file, not a folder")


def test_export_out_symlink_loop(registered):
    loop = registered["tmp"] / "loop"
    loop.symlink_to(registered["tmp"] / "loop2")
    (registered["tmp"] / "loop2").symlink_to(loop)
    refused_intact(registered["tmp"], export(registered, "--out", loop, "--force"), "cannot be resolved")


# --- package: --out (or --draft-report) is one of the inputs ------------------------------------------------------

@pytest.fixture
def system(tmp_path) -> dict:
    built = make_system(tmp_path, 1)
    report = tmp_path / "r.zip"  # a report given under a zip's name: --out r.zip must not replace it
    report.write_bytes(PDF)
    return {"label": built.label, "predictions": built.predictions, "meta": built.meta, "report": report,
            "tmp": tmp_path}


def package(system, *args):
    return ["package", "-l", system["label"], "-p", system["predictions"], "-m", system["meta"], *args]


def test_package_out_is_the_report_input(system):
    refused_intact(system["tmp"], package(system, "--report", system["report"], "--out", system["report"]),
                   "the same file as the input --report", "choose another --out")


def test_package_out_is_the_metadata_input(system):
    refused_intact(system["tmp"], package(system, "--report", system["report"], "--out", system["meta"]),
                   "the same file as the input --meta")


def test_package_out_is_a_symlink_to_the_predictions(system):
    link = system["tmp"] / "submission.zip"
    link.symlink_to(system["predictions"])
    refused_intact(system["tmp"], package(system, "--report", system["report"], "--out", link),
                   "the same file as the input --predictions")


def test_package_out_is_a_hard_link_of_the_report(system):
    link = system["tmp"] / "hard.zip"
    os.link(system["report"], link)
    refused_intact(system["tmp"], package(system, "--report", system["report"], "--out", link),
                   "the same file as the input --report")


def test_package_draft_report_is_the_per_query_input(system):
    per_query = system["tmp"] / "per_query.csv"
    per_query.write_text("query,rank\n")
    refused_intact(system["tmp"], package(system, "--draft-report", per_query, "--per-query", per_query, "--out",
                                          system["tmp"] / "s.zip"), "--draft-report", "the same file as the input")


def test_package_init_meta_out_is_the_results_input(system):
    results = system["tmp"] / "eval.json"
    results.write_text('{"R@1": 0.1}')
    refused_intact(system["tmp"], ["package", "--init-meta", "-l", system["label"], "--results", results, "--out",
                                   results], "the same file as the input --results")


def test_package_out_is_a_folder(system):
    usage_refused_intact(system["tmp"], package(system, "--report", system["report"], "--out", system["tmp"]),
                         "is a directory")


# --- explore --html: the site never holds, is or links to an input ------------------------------------------------

@pytest.fixture
def exploring(tmp_path) -> dict:
    files = ["a.wav", "b.wav", "c.wav"]
    audio = tmp_path / "audio"
    audio.mkdir()
    for index, name in enumerate(files):
        sf.write(audio / name, np.zeros(441 * (index + 1), dtype=np.float32), 44100, subtype="PCM_16")
    site = tmp_path / "site"
    site.mkdir()
    predictions = site / "predictions.csv"  # the user keeps the matrix in the folder the site goes to
    write_matrix(SimilarityMatrix(["q one", "q two"], files, np.arange(6.0).reshape(2, 3)), predictions)
    captions = tmp_path / "captions.csv"
    pd.DataFrame({"file_name": files, **{f"caption_{k}": [f"{name} {k}" for name in files]
                                         for k in range(1, 6)}}).to_csv(captions, index=False)
    relevance = tmp_path / "relevance.csv"
    pd.DataFrame({"query": ["q one", "q two"], "audio_filenames": ["['a.wav']", "['c.wav']"]}).to_csv(
        relevance, index=False)
    return {"audio": audio, "site": site, "predictions": predictions, "captions": captions, "relevance": relevance,
            "tmp": tmp_path}


def explore(case, html, predictions=None):
    return ["explore", "-p", predictions or case["predictions"], "-r", case["relevance"], "--audio", case["audio"],
            "--clip-captions", case["captions"], "--html", html]


def test_explore_html_folder_holding_the_predictions(exploring):
    refused_intact(exploring["tmp"], explore(exploring, exploring["site"]), "holds the input --predictions")


def test_explore_html_is_the_audio_folder(exploring):
    refused_intact(exploring["tmp"], explore(exploring, exploring["audio"]), "is the input --audio")


def test_explore_html_link_to_a_folder_holding_the_captions(exploring):
    link = exploring["tmp"] / "link"
    link.symlink_to(exploring["tmp"], target_is_directory=True)
    refused_intact(exploring["tmp"], explore(exploring, link), "holds the input")


def test_explore_html_earlier_site_with_a_users_file(exploring):
    moved = exploring["tmp"] / "predictions.csv"
    exploring["predictions"].rename(moved)
    site = exploring["tmp"] / "new-site"
    assert run(*explore(exploring, site, moved)).exit_code == 0
    assert (site / MARKER).is_file() and run(*explore(exploring, site, moved)).exit_code == 0  # its own: replaced
    (site / "audio" / "my-recording.wav").write_bytes(b"RIFF mine")
    refused_intact(exploring["tmp"], explore(exploring, site, moved),
                   "holds 'audio/my-recording.wav', which dcase-t6 did not write")


# --- prepare synthetic: only the files it generates ---------------------------------------------------------------

def test_prepare_synthetic_first_run_keeps_a_users_file(tmp_path):
    (tmp_path / "synthetic").mkdir()
    (tmp_path / "synthetic" / "field-notes.txt").write_text("recorded by hand")
    refused_intact(tmp_path, ["prepare", "synthetic", "--root", tmp_path, *SYNTHETIC],
                   "not a synthetic dataset written by dcase-t6", "move your files out of it")


def test_prepare_synthetic_force_keeps_a_users_file_added_later(tmp_path):
    assert run("prepare", "synthetic", "--root", tmp_path, *SYNTHETIC).exit_code == 0
    (tmp_path / "synthetic" / "audio" / "development" / "mine.wav").write_bytes(b"RIFF mine")
    refused_intact(tmp_path, ["prepare", "synthetic", "--root", tmp_path, *SYNTHETIC, "--seed", "3", "--force"],
                   "holds 'audio/development/mine.wav', which dcase-t6 did not write")
    (tmp_path / "synthetic" / "audio" / "development" / "mine.wav").unlink()
    assert run("prepare", "synthetic", "--root", tmp_path, *SYNTHETIC, "--seed", "3", "--force").exit_code == 0


def test_prepare_clotho_keeps_a_users_files_in_an_audio_folder_it_did_not_extract(tmp_path, monkeypatch):
    from dcase_t6.data import archive
    from dcase_t6.data.clotho import CLOTHO_MD5
    from helpers.data import clotho_release

    monkeypatch.setattr(archive, "seven_zip_binary", lambda: None)
    release = tmp_path / "release"
    release.mkdir()
    for name, value in clotho_release(release).items():
        monkeypatch.setitem(CLOTHO_MD5, name, value)
    root = tmp_path / "data"
    (root / "clotho" / "audio" / "development").mkdir(parents=True)
    (root / "clotho" / "audio" / "development" / "my take.wav").write_bytes(b"RIFF recorded by hand")
    refused_intact(tmp_path, ["prepare", "clotho", "--root", root, "--archives", release, "--workers", "1"],
                   "holds files dcase-t6 did not extract", "move them out of it")


def test_a_users_file_appearing_before_the_swap_is_kept(tmp_path):
    """The check is made again right before the folder is replaced (a file added while the output was written)."""
    target, staging = tmp_path / "out", tmp_path / ".staging"
    for folder in (target, staging):
        folder.mkdir()
        (folder / "page.html").write_text("old" if folder is target else "new")
    mark_output(target, "explore --html")
    (target / "late.txt").write_text("written meanwhile")
    with pytest.raises(UserError, match="holds 'late.txt', which dcase-t6 did not write"):
        replace_owned_dir(staging, target, "explore --html")
    assert (target / "late.txt").read_text() == "written meanwhile" and (target / "page.html").read_text() == "old"


# --- run names: one safe folder name ------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "message"), [
    ("../a/escaped", "contains a path separator"),
    ("x" * 300, "has 300 characters (at most 100)"),
    ("a\x00b", "contains a control character"),
    ("..", "starts with '.'"),
    ("back\\slash", "contains a path separator"),
])
def test_train_name_is_one_safe_folder_name(tmp_path, name, message):
    workdir = tmp_path / "work"
    refused_intact(tmp_path, ["--workdir", workdir, "train", "--name", name, "--data-root", tmp_path],
                   "config key 'name'", message)
    assert not workdir.exists()


@pytest.mark.parametrize(("pipeline", "message"), [
    ("name: ../escape\nsystems: [{name: a, stages: [{name: s}]}]\n", "name: expected a name"),
    (f"systems: [{{name: {'a' * 101}, stages: [{{name: s}}]}}]\n", "systems[0].name: expected a name of 1 to 100"),
    ("systems: [{name: a, stages: [{name: ../up}]}]\n", "stages[0].name: expected a name"),
])
def test_pipeline_names_are_safe_before_anything_is_written(tmp_path, pipeline, message):
    path = tmp_path / "pipeline.yaml"
    path.write_text(pipeline)
    refused_intact(tmp_path, ["--workdir", tmp_path / "work", "train", "--pipeline", path], message)


def test_registry_refuses_an_imported_run_id_that_escapes(tmp_path):
    registry = Registry(tmp_path / "work")
    with pytest.raises(UserError, match="contains a path separator"):
        registry.import_run(ImportedRun("../../outside", "tiny", {}, None, 0, None, []))
    assert not (tmp_path / "outside").exists() and registry.runs() == []


# --- file outputs: folders, parents that are files, symlink loops, inputs --------------------------------------------

@pytest.fixture
def matrix(tmp_path) -> dict:
    predictions = tmp_path / "system.csv"
    write_matrix(SimilarityMatrix(["q one", "q two"], ["a.wav", "b.wav"], np.eye(2)), predictions)
    relevance = tmp_path / "relevance.csv"
    pd.DataFrame({"query": ["q one", "q two"], "audio_filenames": ["['a.wav']", "['b.wav']"]}).to_csv(
        relevance, index=False)
    return {"predictions": predictions, "relevance": relevance, "tmp": tmp_path}


def test_evaluate_per_query_whose_parent_is_a_file(matrix):
    refused_intact(matrix["tmp"], ["evaluate", "-p", matrix["predictions"], "-r", matrix["relevance"], "--per-query",
                                   matrix["predictions"] / "per_query.csv"], "is a file, not a folder")


def test_evaluate_per_query_symlink_loop(matrix):
    loop = matrix["tmp"] / "loop.csv"
    loop.symlink_to(matrix["tmp"] / "loop2.csv")
    (matrix["tmp"] / "loop2.csv").symlink_to(loop)
    refused_intact(matrix["tmp"], ["evaluate", "-p", matrix["predictions"], "-r", matrix["relevance"], "--per-query",
                                   loop], "cannot be resolved")


def test_evaluate_per_query_symlink_to_the_relevance_input(matrix):
    link = matrix["tmp"] / "per_query.csv"
    link.symlink_to(matrix["relevance"])
    refused_intact(matrix["tmp"], ["evaluate", "-p", matrix["predictions"], "-r", matrix["relevance"], "--per-query",
                                   link], "the same file as the input --relevance")


def test_evaluate_predictions_symlink_loop(matrix):
    loop = matrix["tmp"] / "loop.csv"
    loop.symlink_to(matrix["tmp"] / "loop2.csv")
    (matrix["tmp"] / "loop2.csv").symlink_to(loop)
    refused_intact(matrix["tmp"], ["evaluate", "-p", loop, "-r", matrix["relevance"]], "loop.csv")


def test_ensemble_out_is_a_folder_or_below_a_file(matrix):
    weights = matrix["tmp"] / "weights.json"
    weights.write_text("{}")
    usage_refused_intact(matrix["tmp"], ["ensemble", "--apply", "-w", weights, "-s", f"a={matrix['predictions']}",
                                         "--out", matrix["tmp"]], "is a directory")
    refused_intact(matrix["tmp"], ["ensemble", "--apply", "-w", weights, "-s", f"a={matrix['predictions']}",
                                   "--out", weights / "ensemble.csv"], "is a file, not a folder")


def test_per_query_in_an_unwritable_folder(matrix):
    """A folder without write permission; as root (CI), which writes anywhere else, /proc/self: no process may
    create files there."""
    locked = matrix["tmp"] / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    folder = Path("/proc/self") if hasattr(os, "geteuid") and os.geteuid() == 0 else locked
    try:
        refused_intact(matrix["tmp"], ["evaluate", "-p", matrix["predictions"], "-r", matrix["relevance"],
                                       "--per-query", folder / "per_query.csv"], "permission denied")
    finally:
        locked.chmod(0o755)


def test_embed_out_is_the_data_root_and_csv_is_its_index(registered):
    model = registered["tmp"] / "exported"
    model.mkdir()
    (model / "config.json").write_text("{}")
    base = ["--workdir", registered["workdir"], "embed", "--model", model, "--data-root", registered["data"],
            "--dataset", "clotho"]
    refused_intact(registered["tmp"], [*base, "--out", registered["data"]], "is the input --data-root")
    refused_intact(registered["tmp"], [*base, "--out", model], "is the input --model")
    refused_intact(registered["tmp"], [*base, "--out", registered["tmp"] / "emb", "--csv",
                                       registered["data"] / "index" / "clotho.csv"], "the same file as the input")
    refused_intact(registered["tmp"], ["--workdir", registered["workdir"], "embed", registered["run"], "--data-root",
                                       registered["data"], "--csv", registered["workdir"] / "registry.sqlite"],
                   "the same file as the input --workdir registry")


def test_augment_out_is_the_split_index_or_the_journal(registered):
    data = registered["data"]
    base = ["augment", "back-translate", "--data-root", data, "--dataset", "clotho"]
    refused_intact(registered["tmp"], [*base, "--out", data / "index" / "clotho.csv"],
                   "the same file as the input --data-root index")
    out = registered["tmp"] / "bt.csv"
    refused_intact(registered["tmp"], [*base, "--out", out, "--journal", out], "--journal",
                   "the same file as the input --out")
