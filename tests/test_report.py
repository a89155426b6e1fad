"""Draft technical report: a real PDF with the metadata, results, weights and a plot."""

import json
import zipfile

import pandas as pd
import pytest
import yaml

from dcase_t6.common.errors import UserError
from dcase_t6.ensemble.weights import read_weights
from dcase_t6.submission.package import REPORT_KIND, check_package, member_name
from dcase_t6.submission.report import DraftOptions, check_pdf, recall_curve, weights_note, write_draft
from helpers.cli import run_dcase
from helpers.submission import FILES, QUERIES, TEAM, filled_meta, label, make_system, pdf_text_and_images

WEIGHTS = {"format": "dcase-t6-ensemble-weights", "metric": "mAP@16", "normalize": "zscore",
           "weights": {"passt/s1": 0.35, "cnn/s1": 0.65}, "validation": {"mAP@16": 0.4321, "n_queries": 4}}


def test_draft_report_from_cli_with_per_query_recall_curve_and_weights(tmp_path):
    systems = [make_system(tmp_path, 1), make_system(tmp_path, 2)]
    relevance = tmp_path / "relevance.csv"
    pd.DataFrame({"query": QUERIES, "audio_filenames": [str(FILES[i:i + 2]) for i in range(len(QUERIES))]}) \
        .to_csv(relevance, index=False)
    per_query = tmp_path / "per_query.csv"
    evaluated = run_dcase("evaluate", "-p", systems[0].predictions, "-r", relevance, "--per-query", per_query, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    weights = tmp_path / "weights.json"
    weights.write_text(json.dumps(WEIGHTS), encoding="utf-8")
    draft, out = tmp_path / "draft.pdf", tmp_path / "submission.zip"
    args = [arg for system in systems for arg in ("-l", system.label, "-p", system.predictions, "-m", system.meta)]
    built = run_dcase("package", *args, "--draft-report", draft, "--per-query", per_query, "--weights", weights,
                      "--out", out)
    assert built.exit_code == 0, built.output
    text, images = pdf_text_and_images(draft.read_bytes())
    assert f"{TEAM}: systems for DCASE 2025 Task 6" in text
    assert label(1) in text and label(2) in text
    assert "Zoë Müller" in text and "Ørjan Łukasiewicz" in text and "Johannes Kepler Universität" in text
    assert "cnn/s1" in text and "chosen on validation mAP@16 = 0.4321; normalize: zscore" in text
    assert "mean recall R@K" in text and images >= 1
    assert check_package(out).ok
    with zipfile.ZipFile(out) as archive:
        assert all(archive.read(member_name(label(i), REPORT_KIND)) == draft.read_bytes() for i in (1, 2))


def test_draft_report_without_per_query_plots_the_yaml_results(tmp_path):
    meta = filled_meta(label(1), {"R@1": 0.2329, "R@5": 0.5217, "R@10": 0.6478, "mAP@10": 0.3523, "mAP@16": 0.4059})
    out = tmp_path / "draft.pdf"
    write_draft(out, [meta])
    text, images = pdf_text_and_images(out.read_bytes())
    assert text.startswith(meta["submission"]["name"]) and label(1) in text
    assert "0.4059" in text and "development-testing results reported in the metadata" in text
    assert images == 1
    assert "Ensemble weights" not in text


def test_recall_curve_from_ranks_by_hand(tmp_path):
    path = tmp_path / "per_query.csv"
    pd.DataFrame({"query": ["a, b", "c"], "n_relevant": [2, 1], "ranks": ["3 7", "1"]}).to_csv(path, index=False)
    curve = recall_curve(path, max_k=8)
    assert curve.tolist() == pytest.approx([0.5, 0.5, 0.75, 0.75, 0.75, 0.75, 1.0, 1.0])


@pytest.mark.parametrize("content, expected", [
    ("query,R@1\nq,1\n", "missing ['n_relevant', 'ranks']"),
    ("query,n_relevant,ranks\nq,2,3 x\n", "row 2: ranks '3 x' / n_relevant 2 are not integers"),
    ("query,n_relevant,ranks\nq,0,\n", "row 2: n_relevant is 0"),
])
def test_recall_curve_rejects_bad_per_query_files(tmp_path, content, expected):
    path = tmp_path / "per_query.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        recall_curve(path)


def test_weights_and_report_inputs_are_validated(tmp_path):
    weights = tmp_path / "weights.json"
    weights.write_text(json.dumps({"weights": {"a": "0.5"}}), encoding="utf-8")
    with pytest.raises(UserError, match='expected an object with "weights"'):
        read_weights(weights)
    weights.write_text(json.dumps({"weights": {"a": 1}}), encoding="utf-8")
    # the one weights reader accepts hand-written files: "format" and "normalize" are optional
    assert read_weights(weights).weights == {"a": 1.0} and weights_note(read_weights(weights)) == ""
    assert read_weights(weights).normalize == "none"
    with pytest.raises(UserError, match="report not found"):
        check_pdf(tmp_path / "absent.pdf")
    with pytest.raises(UserError, match="absent.json: file not found"):
        write_draft(tmp_path / "d.pdf", [filled_meta()], DraftOptions(weights=tmp_path / "absent.json"))
    assert not (tmp_path / "d.pdf").exists()


def test_draft_handles_null_fields_and_markup_in_names(tmp_path):
    meta = filled_meta(label(1))
    meta["submission"]["name"] = "<b>Bold</b> & co"
    meta["system"]["description"]["ensemble"] = True
    del meta["results"]["development_testing"]["R@1"]
    out = tmp_path / "draft.pdf"
    write_draft(out, [yaml.safe_load(yaml.safe_dump(meta, allow_unicode=True))])
    text, _ = pdf_text_and_images(out.read_bytes())
    assert "<b>Bold</b> & co" in text and "n/a" in text
