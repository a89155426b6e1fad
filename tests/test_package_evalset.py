"""`package --check` / `package` against the official evaluation set: exact queries, exact file columns."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

from dcase_t6.retrieval.matrices import SimilarityMatrix, write_csv
from dcase_t6.submission.package import SystemFiles, build_package
from dcase_t6.submission.report import TechnicalReport
from helpers.cli import run_dcase
from helpers.submission import PDF, filled_meta

LABEL = "Mueller_CP-JKU_task6_1"
QUERIES = ["A bird sings, loudly.", 'Water "flows" fast', "Schön & laut: ça va", "cours d&#39;eau, it's wet",
           "  leading spaces and a dog barking"]
FILES = ["Pensol - le Moulin cours d&#39;eau.wav", 'bird, in "rain".wav', "Ünïcødé – café.wav", "it's a dog.wav"]


@pytest.fixture
def official(tmp_path) -> tuple[Path, Path]:
    """The organisers' retrieval_captions.csv and audio folder (real WAV files)."""
    captions = tmp_path / "retrieval_captions.csv"
    with open(captions, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["caption"])
        writer.writerows([query] for query in QUERIES)
    audio = tmp_path / "retrieval_audio"
    audio.mkdir()
    for index, name in enumerate(FILES):
        soundfile.write(audio / name, np.full(4410, 0.01 * (index + 1), dtype=np.float32), 44100)
    return captions, audio


def _zip(folder: Path, queries: list[str], files: list[str], name: str = "submission") -> Path:
    """A submission zip (built without the evaluation check) whose CSV has these rows and columns."""
    predictions = folder / f"{name}.csv"
    scores = np.random.default_rng(0).standard_normal((len(queries), len(files)))
    write_csv(SimilarityMatrix(queries, files, scores), predictions)
    meta = folder / f"{name}.yaml"
    meta.write_text(yaml.safe_dump(filled_meta(LABEL), allow_unicode=True), encoding="utf-8")
    report = folder / "report.pdf"
    report.write_bytes(PDF)
    out = folder / f"{name}.zip"
    build_package([SystemFiles(LABEL, predictions, meta)], out, TechnicalReport(report))
    return out


def _changed(queries=None, files=None):
    return (list(QUERIES) if queries is None else queries), (list(FILES) if files is None else files)


CASES = {
    "one changed character": (_changed(queries=[QUERIES[0], 'Water "flows" fasT', *QUERIES[2:]]),
                              ["row 3: query 'Water \"flows\" fasT' is not an official evaluation caption",
                               "nearest official caption", "row 3): 'Water \"flows\" fast'",
                               "differs only in upper/lower case"]),
    "changed punctuation": (_changed(queries=["A bird sings loudly.", *QUERIES[1:]]),
                            ["row 2: query 'A bird sings loudly.' is not an official evaluation caption",
                             "differs from character 13 on"]),
    "dropped query": (_changed(queries=QUERIES[:3] + QUERIES[4:]),
                      ["no row for the official caption \"cours d&#39;eau, it's wet\"", "row 5)"]),
    "re-normalised (lower-cased, stripped)": (
        _changed(queries=[query.lower().strip() for query in QUERIES]),
        ["row 2: query 'a bird sings, loudly.' is not an official evaluation caption",
         "(4 such queries in all)", "differs only in upper/lower case", "(4 official captions without a row in all)"]),
    "repeated query": (_changed(queries=[*QUERIES, QUERIES[1]]), ["row 7: query 'Water \"flows\" fast' repeats row 3"]),
    "missing file column": (_changed(files=FILES[:2] + FILES[3:]),
                            ["no column for the evaluation audio file 'Ünïcødé – café.wav'"]),
    "extra file column": (_changed(files=[*FILES, "extra clip.wav"]),
                          ["header cell 6: file 'extra clip.wav' is not an evaluation audio file"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_check_names_the_first_mismatch(tmp_path, official, case):
    (queries, files), expected = CASES[case]
    captions, audio = official
    result = run_dcase("package", "--check", _zip(tmp_path, queries, files), "--eval-captions", captions,
                       "--eval-audio", audio)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    for part in expected:
        assert part in text, (part, text)
    assert f"task6/{LABEL}/{LABEL}.output.csv: " in text


def test_correct_submission_passes_with_captions_and_with_prepared_eval(tmp_path, official):
    captions, audio = official
    good = _zip(tmp_path, list(QUERIES), list(reversed(FILES)))  # order of rows and columns is free
    result = run_dcase("package", "--check", good, "--eval-captions", captions, "--eval-audio", audio)
    assert result.exit_code == 0, result.output
    assert "queries and files equal the evaluation set" in result.output
    data = tmp_path / "data"
    prepared = run_dcase("prepare", "eval", "--root", data, "--captions", captions, "--audio", audio)
    assert prepared.exit_code == 0, prepared.output
    as_json = run_dcase("package", "--check", good, "--data-root", data, "--json")
    payload = json.loads(as_json.output)
    assert as_json.exit_code == 0 and payload["ok"] is True
    assert payload["eval_set"] == {"source": f"--data-root {data}", "queries": 5, "files": 4}
    bad = _zip(tmp_path, list(QUERIES), FILES[:3], name="bad")
    failed = run_dcase("package", "--check", bad, "--data-root", data)
    assert failed.exit_code == 1 and "no column for the evaluation audio file \"it's a dog.wav\"" in failed.output


def test_captions_alone_check_the_queries_only(tmp_path, official):
    captions, _ = official
    result = run_dcase("package", "--check", _zip(tmp_path, list(QUERIES), FILES[:2]), "--eval-captions", captions)
    assert result.exit_code == 0, result.output


def test_build_refuses_a_matrix_that_is_not_the_evaluation_set(tmp_path, official):
    captions, audio = official
    predictions = tmp_path / "system.csv"
    write_csv(SimilarityMatrix([q.lower() for q in QUERIES], FILES, np.zeros((5, 4))), predictions)
    meta = tmp_path / "meta.yaml"
    meta.write_text(yaml.safe_dump(filled_meta(LABEL), allow_unicode=True), encoding="utf-8")
    report = tmp_path / "report.pdf"
    report.write_bytes(PDF)
    out = tmp_path / "submission.zip"
    args = ["package", "-l", LABEL, "-p", predictions, "-m", meta, "--report", report, "--out", out,
            "--eval-captions", captions, "--eval-audio", audio]
    refused = run_dcase(*args)
    assert refused.exit_code == 2 and not out.exists()
    assert f"{predictions}: row 2: query 'a bird sings, loudly.'" in " ".join(refused.output.split())
    write_csv(SimilarityMatrix(list(QUERIES), FILES, np.zeros((5, 4))), predictions)
    built = run_dcase(*args)
    assert built.exit_code == 0, built.output
    assert "equal the evaluation set of --eval-captions" in " ".join(built.output.split())


@pytest.mark.parametrize("args, expected", [
    (["--eval-audio", "x"], "--eval-audio goes with --eval-captions"),
    (["--eval-captions", "c.csv", "--data-root", "d"], "give --eval-captions or --data-root, not both"),
    (["--data-root", "nowhere"], "eval.queries.csv: not found; run `dcase-t6 prepare eval"),
])
def test_bad_evaluation_set_options_exit_2(tmp_path, args, expected):
    result = run_dcase("package", "--check", tmp_path / "s.zip", *args)
    assert result.exit_code == 2 and expected in " ".join(result.output.split()), result.output


def test_build_finds_the_evaluation_set_of_a_registered_eval_matrix(tmp_path, official):
    """-p RUN:eval/evaluation: the run's data_root, where `prepare eval` ran, is checked without any option."""
    from dcase_t6.runs.registry import Registry

    captions, audio = official
    data, workdir = tmp_path / "data", tmp_path / "work"
    assert run_dcase("prepare", "eval", "--root", data, "--captions", captions, "--audio", audio).exit_code == 0
    registry = Registry(workdir)
    run = registry.create_run("passt", {"data_root": str(data)}, None, 0)
    matrix = tmp_path / "eval.similarity.csv"
    write_csv(SimilarityMatrix(QUERIES[:4], FILES, np.zeros((4, 4))), matrix)
    registry.add_file(run, "similarity", "eval/evaluation", matrix, {})
    meta = tmp_path / "meta.yaml"
    meta.write_text(yaml.safe_dump(filled_meta(LABEL), allow_unicode=True), encoding="utf-8")
    report = tmp_path / "report.pdf"
    report.write_bytes(PDF)
    result = run_dcase("--workdir", workdir, "package", "-l", LABEL, "-p", f"{run}:eval/evaluation", "-m", meta,
                       "--report", report, "--out", tmp_path / "submission.zip")
    assert result.exit_code == 2, result.output
    assert "no row for the official caption '  leading spaces and a dog barking'" in result.output
    assert f"(checked against --data-root {data})" in " ".join(result.output.split())
