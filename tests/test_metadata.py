"""Metadata template, JSON Schema validation and --init-meta on real files."""

import json
import re

import pytest
import yaml

from dcase_t6.common.errors import UserError
from dcase_t6.submission import metadata
from helpers.submission import EVALUATE_JSON, LABEL, filled_meta

SEED_TEMPLATE_FIELDS = {
    "submission": ["label", "name", "abbreviation", "authors"],
    "author": ["lastname", "firstname", "email", "corresponding", "affiliation"],
    "affiliation": ["abbreviation", "institute", "department", "location"],
    "description": ["input_sampling_rate", "acoustic_features", "text_embeddings", "audio_augmentation",
                    "text_augmentation", "learning_scheme", "ensemble", "audio_modelling", "text_modelling",
                    "loss_function", "optimizer", "learning_rate", "metric_monitored"],
    "dataset": ["name", "purpose", "url", "data_types", "data_instances", "data_volume"],
    "results": ["R@1", "R@5", "R@10", "mAP@10", "mAP@16"],
}


def test_template_has_every_seed_field_its_comments_and_map16():
    text = metadata.template_text()
    meta = yaml.safe_load(text)
    assert list(meta["submission"]) == SEED_TEMPLATE_FIELDS["submission"]
    author = meta["submission"]["authors"][0]
    assert list(author) == SEED_TEMPLATE_FIELDS["author"]
    assert list(author["affiliation"]) == SEED_TEMPLATE_FIELDS["affiliation"]
    assert list(meta["system"]["description"]) == SEED_TEMPLATE_FIELDS["description"]
    assert list(meta["system"]["training_datasets"][0]) == SEED_TEMPLATE_FIELDS["dataset"]
    assert meta["system"]["complexity"]["total_parameters"] == 732354
    assert "source_code" in meta["system"] and "validation_datasets" in meta["system"]
    assert list(meta["results"]["development_testing"]) == SEED_TEMPLATE_FIELDS["results"]
    for comment in ("# Use maximum 10 characters.", "# Mark true for one of the authors",
                    "# Use numerical value (do not use comma for thousands-separator).",
                    '# If information field is not applicable to the system, use "!!null".'):
        assert comment in text


def test_unfilled_template_lists_every_empty_submission_field():
    problems = metadata.meta_problems(yaml.safe_load(metadata.template_text()), "Lastname_INST_task6_1")
    paths = {problem.split(":")[0] for problem in problems}
    assert paths == {"submission.name", "submission.abbreviation", "submission.authors[0].lastname",
                     "submission.authors[0].firstname", "submission.authors[0].email",
                     "submission.authors[0].affiliation.abbreviation", "submission.authors[0].affiliation.institute",
                     "submission.authors[0].affiliation.department", "submission.authors[0].affiliation.location"}


def test_filled_template_validates_and_keeps_yaml_quirks():
    meta = filled_meta()
    assert meta["system"]["description"]["ensemble"] is False  # `ensemble: No` reads as a boolean
    assert meta["system"]["description"]["learning_rate"] == "1e-3"  # PyYAML reads 1e-3 as text
    assert metadata.meta_problems(meta, LABEL) == []
    meta["system"]["description"]["ensemble"] = "yes: 3 PaSST + 2 CNN systems"
    meta["system"]["description"]["learning_rate"] = 2e-5
    assert metadata.meta_problems(meta, LABEL) == []


@pytest.mark.parametrize("change, expected", [
    (lambda m: m["submission"]["authors"][1].update(corresponding=True),
     "submission.authors: more than one author is marked `corresponding: true`"),
    (lambda m: m["submission"]["authors"][0].pop("corresponding"),
     "submission.authors: no author is marked `corresponding: true`"),
    (lambda m: m["submission"].update(abbreviation="ABCDEFGHIJK"),
     "submission.abbreviation: 'ABCDEFGHIJK' has more than 10 characters"),
    (lambda m: m["system"]["complexity"].update(total_parameters="1,000"),
     "system.complexity.total_parameters: '1,000' is not an integer"),
    (lambda m: m["results"]["development_testing"].update({"R@1": "0.25"}),
     "results.development_testing.R@1: '0.25' is not a number"),
    (lambda m: m["results"]["development_testing"].update({"mAP@16": 40.59}),
     "results.development_testing.mAP@16: 40.59 is above 1"),
    (lambda m: m["results"]["development_testing"].update({"mAP@16": None}),
     "results.development_testing.mAP@16: None is not a number"),
    (lambda m: m["submission"]["authors"][1]["affiliation"].pop("department"),
     "submission.authors[1].affiliation: 'department' is a required property"),
    (lambda m: m["submission"]["authors"][1].update(email="x"),
     "submission.authors[1].email: 'x' is not an e-mail address"),
    (lambda m: m["submission"].update(label="Mueller_JKU_task6_9"),
     "submission.label: 'Mueller_JKU_task6_9' is not a label of the form"),
    (lambda m: m["submission"].update(label="Other_CP-JKU_task6_1"),
     f"submission.label: 'Other_CP-JKU_task6_1' differs from the label '{LABEL}'"),
    (lambda m: m["system"]["description"].update(audio_modelling=""),
     "system.description.audio_modelling: is empty; describe it, or write !!null"),
    (lambda m: m["system"]["description"].pop("optimizer"),
     "system.description: 'optimizer' is a required property"),
])
def test_each_organiser_check_names_the_field(change, expected):
    meta = filled_meta()
    change(meta)
    problems = metadata.meta_problems(meta, LABEL)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_every_problem_is_listed_with_its_path(tmp_path):
    meta = filled_meta()
    meta["submission"]["authors"][1]["corresponding"] = True
    meta["submission"]["abbreviation"] = "much too long"
    meta["system"]["complexity"]["total_parameters"] = "86 M"
    path = tmp_path / "meta.yaml"
    path.write_text(yaml.safe_dump(meta, allow_unicode=True), encoding="utf-8")
    with pytest.raises(UserError, match="3 metadata problem") as caught:
        metadata.read_meta(path, LABEL)
    message = str(caught.value)
    assert "submission.authors:" in message and "submission.abbreviation:" in message
    assert "system.complexity.total_parameters:" in message


def test_read_meta_reports_yaml_syntax_and_missing_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("submission:\n  label: [unclosed\n", encoding="utf-8")
    with pytest.raises(UserError, match="broken.yaml: not valid YAML"):
        metadata.read_meta(broken, LABEL)
    with pytest.raises(UserError, match="file not found; create it with `dcase-t6 package --init-meta"):
        metadata.read_meta(tmp_path / "absent.yaml", LABEL)


def test_init_meta_prefills_label_and_results_and_keeps_comments(tmp_path):
    results = tmp_path / "eval.json"
    results.write_text(json.dumps(EVALUATE_JSON), encoding="utf-8")
    out = tmp_path / "meta.yaml"
    metadata.init_meta(LABEL, out, results)
    text = out.read_text(encoding="utf-8")
    template = metadata.template_text()
    assert [line for line in template.splitlines() if line.lstrip().startswith("#")] == \
        [line for line in text.splitlines() if line.lstrip().startswith("#")]
    meta = yaml.safe_load(text)
    assert meta["submission"]["label"] == LABEL
    expected = {key: EVALUATE_JSON[key] for key in SEED_TEMPLATE_FIELDS["results"]}
    assert meta["results"]["development_testing"] == expected
    filled = filled_meta(results=metadata.read_results(results))
    assert filled["results"] == meta["results"] and metadata.meta_problems(filled, LABEL) == []
    with pytest.raises(UserError, match="already exists"):
        metadata.init_meta(LABEL, out, results)


def test_init_meta_rejects_bad_label_and_bad_results(tmp_path):
    with pytest.raises(UserError, match=re.escape("--label: label 'Mueller_CP_JKU_task6_1' is not of the form")):
        metadata.render_meta("Mueller_CP_JKU_task6_1")
    results = tmp_path / "eval.json"
    results.write_text(json.dumps({**EVALUATE_JSON, "mAP@16": 40.6}), encoding="utf-8")
    with pytest.raises(UserError, match=r"eval.json: mAP@16 is 40.6; expected a fraction in \[0, 1\]"):
        metadata.init_meta(LABEL, tmp_path / "meta.yaml", results)
    assert not (tmp_path / "meta.yaml").exists()


def test_tiny_results_stay_numbers_in_yaml():
    text = metadata.render_meta(LABEL, {"R@1": 1e-05, "R@5": 0.0, "R@10": 1.0, "mAP@10": 0.5, "mAP@16": 0.25})
    assert yaml.safe_load(text)["results"]["development_testing"]["R@1"] == 1e-05
