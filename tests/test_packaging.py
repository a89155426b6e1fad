"""Submission zip: build, organiser-style check and the `package` command, on real files."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from dcase_t6.common.errors import UserError
from dcase_t6.retrieval.matrices import read_csv
from dcase_t6.submission.package import (
    CSV_KIND,
    META_KIND,
    REPORT_KIND,
    Expected,
    SystemFiles,
    SystemSummary,
    build_package,
    check_package,
    member_name,
)
from dcase_t6.submission.report import TechnicalReport
from helpers.cli import run_dcase
from helpers.submission import EVALUATE_JSON, FILES, PDF, QUERIES, filled_meta, label, make_system, write_yaml


@pytest.fixture
def report(tmp_path) -> Path:
    path = tmp_path / "report.pdf"
    path.write_bytes(PDF)
    return path


@pytest.fixture
def systems(tmp_path) -> list[SystemFiles]:
    return [make_system(tmp_path, 1), make_system(tmp_path, 2)]


@pytest.fixture
def package(tmp_path, systems, report) -> Path:
    out = tmp_path / "submission.zip"
    build_package(systems, out, TechnicalReport(report))
    return out


def rewrite(source: Path, change) -> Path:
    """A copy of the zip ``source`` whose {name: bytes} members went through ``change``."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    change(members)
    target = source.with_name("changed.zip")
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return target


def edit_meta(index: int, edit):
    def change(members: dict) -> None:
        name = member_name(label(index), META_KIND)
        meta = yaml.safe_load(members[name])
        edit(meta)
        members[name] = yaml.safe_dump(meta, allow_unicode=True).encode()
    return change


def edit_csv(index: int, edit):
    def change(members: dict) -> None:
        name = member_name(label(index), CSV_KIND)
        members[name] = edit(members[name].decode("utf-8")).encode("utf-8")
    return change


def rename(old: str, new: str):
    def change(members: dict) -> None:
        members[new] = members.pop(old)
    return change


def relabel(index: int, new_label: str):
    def change(members: dict) -> None:
        for kind in (CSV_KIND, META_KIND, REPORT_KIND):
            members[member_name(new_label, kind)] = members.pop(member_name(label(index), kind))
    return change


def add_systems(*indices: int):
    def change(members: dict) -> None:
        for index in indices:
            for kind in (CSV_KIND, META_KIND, REPORT_KIND):
                members[member_name(label(index), kind)] = members[member_name(label(1), kind)]
    return change


def drop_reports(members: dict) -> None:
    for name in [name for name in members if name.endswith(".pdf")]:
        del members[name]


def test_valid_package_round_trips(package, systems, report, tmp_path):
    result = check_package(package)
    assert result.ok, result.problems
    assert result.systems == [SystemSummary(label(i), queries=len(QUERIES), files=len(FILES)) for i in (1, 2)]
    assert result.as_json()["systems"] == [{"label": label(i), "queries": len(QUERIES), "files": len(FILES)}
                                           for i in (1, 2)]
    with zipfile.ZipFile(package) as archive:
        assert sorted(archive.namelist()) == sorted(member_name(label(i), kind) for i in (1, 2)
                                                    for kind in (CSV_KIND, META_KIND, REPORT_KIND))
        for system in systems:
            extracted = Path(archive.extract(member_name(system.label, CSV_KIND), tmp_path / "unzipped"))
            inside, original = read_csv(extracted), read_csv(system.predictions)
            assert inside.files == FILES and inside.queries == QUERIES
            assert np.array_equal(inside.scores, original.scores)
            meta_bytes = archive.read(member_name(system.label, META_KIND))
            assert meta_bytes == system.meta.read_bytes()
            assert yaml.safe_load(meta_bytes)["submission"]["label"] == system.label
            assert archive.read(member_name(system.label, REPORT_KIND)) == report.read_bytes()


@pytest.mark.parametrize("change, expected", [
    (relabel(1, "Mueller_CP_JKU_task6_1"), "task6/Mueller_CP_JKU_task6_1/: label 'Mueller_CP_JKU_task6_1' is not"),
    (rename(member_name(label(1), CSV_KIND), f"task6/{label(1)}/{label(3)}.output.csv"),
     f"task6/{label(1)}/{label(3)}.output.csv: file label '{label(3)}' differs from its folder '{label(1)}'"),
    (rename(member_name(label(1), CSV_KIND), f"task6/{label(1)}/{label(1)}.output.v2.csv"),
     f"task6/{label(1)}/{label(1)}.output.v2.csv: file name has 4 dot-separated parts"),
    (rename(member_name(label(1), META_KIND), member_name(label(1), "metadata.yaml")),
     f"task6/{label(1)}/: missing {label(1)}.meta.yaml"),
    (edit_meta(1, lambda m: m["submission"].update(label=label(3))),
     f"{member_name(label(1), META_KIND)}: submission.label: '{label(3)}' differs from the label '{label(1)}'"),
    (edit_meta(1, lambda m: m["submission"]["authors"][1].update(corresponding=True)),
     f"{member_name(label(1), META_KIND)}: submission.authors: more than one author is marked"),
    (edit_meta(2, lambda m: m["submission"]["authors"][0].update(corresponding=False)),
     f"{member_name(label(2), META_KIND)}: submission.authors: no author is marked"),
    (edit_meta(1, lambda m: m["submission"].update(abbreviation="Eleven chrs")),
     f"{member_name(label(1), META_KIND)}: submission.abbreviation: 'Eleven chrs' has more than 10 characters"),
    (edit_meta(1, lambda m: m["system"]["complexity"].update(total_parameters="1,000")),
     f"{member_name(label(1), META_KIND)}: system.complexity.total_parameters: '1,000' is not an integer"),
    (edit_meta(1, lambda m: m["results"]["development_testing"].update({"mAP@10": "0.35"})),
     f"{member_name(label(1), META_KIND)}: results.development_testing.mAP@10: '0.35' is not a number"),
    (edit_meta(1, lambda m: m["submission"]["authors"][0]["affiliation"].pop("location")),
     f"{member_name(label(1), META_KIND)}: submission.authors[0].affiliation: 'location' is a required property"),
    (lambda members: members.update({member_name(label(1), META_KIND): b"submission: [oops\n"}),
     f"{member_name(label(1), META_KIND)}: not valid YAML"),
    (edit_csv(1, lambda text: text.replace("bird, in ", "Pensol - le Moulin cours d&#39;eau.wav\",\"x", 1)),
     f"{member_name(label(1), CSV_KIND)}: duplicated audio file column 'Pensol - le Moulin cours d&#39;eau.wav'"),
    (edit_csv(2, lambda text: text.rstrip("\r\n").rsplit(",", 1)[0] + ",abc\r\n"),
     f"{member_name(label(2), CSV_KIND)}: row 5, column 6 (\"it's a dog.wav\") holds 'abc', not a number"),
    (add_systems(3, 4, 5), "changed.zip: 5 systems; a team submits 1 to 4"),
    (lambda members: members.update({member_name(label(1), REPORT_KIND): b"<html>report</html>"}),
     f"{member_name(label(1), REPORT_KIND)}: not a PDF (it does not start with %PDF)"),
    (drop_reports, "changed.zip: no technical report"),
    (lambda members: members.clear(), "changed.zip: 0 systems; a team submits 1 to 4"),
    (lambda members: members.update({"README.txt": b"hello"}), "README.txt: outside the layout task6/<label>/"),
    (relabel(2, "Other_INST_task6_2"), "changed.zip: labels of several teams"),
])
def test_check_reports_each_organiser_check(package, change, expected):
    changed = rewrite(package, change)
    result = check_package(changed)
    expected = expected.replace("changed.zip:", f"{changed}:")
    assert any(problem.startswith(expected) for problem in result.problems), result.problems


def test_check_lists_every_problem_at_once(package):
    def break_everything(members: dict) -> None:
        edit_meta(1, lambda m: m["submission"].update(abbreviation="Eleven chrs"))(members)
        edit_meta(2, lambda m: m["submission"]["authors"][1].update(corresponding=True))(members)
        drop_reports(members)
    result = check_package(rewrite(package, break_everything), Expected(rows=1000, files=1045))
    assert len(result.problems) == 7, result.problems
    assert sum("query rows, expected 1000" in problem for problem in result.problems) == 2
    assert sum("audio file columns, expected 1045" in problem for problem in result.problems) == 2


def test_check_reports_corrupt_and_truncated_zips(package, tmp_path):
    data = bytearray(package.read_bytes())
    with zipfile.ZipFile(package) as archive:
        info = archive.getinfo(member_name(label(1), CSV_KIND))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for offset in range(start + 10, start + 20):
        data[offset] ^= 0xFF
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(bytes(data))
    problems = check_package(corrupt).problems
    assert len(problems) == 1 and problems[0].startswith(f"{info.filename}: corrupt data in the zip")
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(package.read_bytes()[:200])
    assert check_package(truncated).problems[0].startswith(f"{truncated}: not a readable zip archive")
    assert check_package(tmp_path / "absent.zip").problems[0].endswith("file not found; pass the submission zip")


def test_check_expected_rows_names_the_csv(package):
    result = check_package(package, Expected(rows=len(QUERIES) + 1))
    assert result.problems == [f"{member_name(label(i), CSV_KIND)}: {len(QUERIES)} query rows, expected "
                               f"{len(QUERIES) + 1} (one row per query caption)" for i in (1, 2)]


def _bad_csv(text: str):
    def change(systems: list[SystemFiles], report: Path) -> list[SystemFiles]:
        systems[0].predictions.write_text(text, encoding="utf-8")
        return systems
    return change


def _bad_meta(edit):
    def change(systems: list[SystemFiles], report: Path) -> list[SystemFiles]:
        meta = filled_meta(systems[0].label)
        edit(meta)
        write_yaml(systems[0].meta, meta)
        return systems
    return change


def _relabel_first(new_label: str):
    def change(systems: list[SystemFiles], report: Path) -> list[SystemFiles]:
        return [SystemFiles(new_label, systems[0].predictions, systems[0].meta), *systems[1:]]
    return change


def _not_a_pdf(systems: list[SystemFiles], report: Path) -> list[SystemFiles]:
    report.write_bytes(b"Just text")
    return systems


@pytest.mark.parametrize("change, expected", [
    (_relabel_first("Mueller_CP-JKU_Task6_1"), "--label: label 'Mueller_CP-JKU_Task6_1' is not of the form"),
    (_relabel_first(label(2)), "--label: labels repeat"),
    (_relabel_first("Other_INST_task6_1"), "--label: labels of several teams (Mueller-Luedenscheidt_CP-JKU, "
                                           "Other_INST)"),
    (lambda systems, report: systems * 3, "--label: 6 systems; a team submits 1 to 4; labels repeat"),
    (_bad_meta(lambda m: m["submission"].update(label=label(4))), "submission.label: "),
    (_bad_meta(lambda m: m["submission"]["authors"][1].update(corresponding=True)), "more than one author"),
    (_bad_csv("index,a.wav,a.wav\nq1,0.1,0.2\n"), "duplicated audio file column 'a.wav'"),
    (_bad_csv("index,a.wav,b.wav\nq1,0.1,high\n"), "row 2, column 3 ('b.wav') holds 'high', not a number"),
    (_not_a_pdf, "report.pdf: not a PDF"),
])
def test_failed_build_writes_no_zip_and_keeps_an_old_one(tmp_path, systems, report, change, expected):
    systems = change(systems, report)
    fresh = tmp_path / "fresh.zip"
    with pytest.raises(UserError) as caught:
        build_package(systems, fresh, TechnicalReport(report))
    assert expected in str(caught.value)
    assert not fresh.exists()
    old = tmp_path / "old.zip"
    old.write_bytes(b"previous submission")
    with pytest.raises(UserError):
        build_package(systems, old, TechnicalReport(report))
    assert old.read_bytes() == b"previous submission"
    assert not list(tmp_path.glob(".*.tmp"))


def test_build_checks_expected_shape_and_zip_suffix(tmp_path, systems, report):
    with pytest.raises(UserError, match=r"system1.csv: 4 query rows, expected 1000 .*; 5 audio file columns"):
        build_package(systems, tmp_path / "s.zip", TechnicalReport(report), expected=Expected(rows=1000, files=1045))
    with pytest.raises(UserError, match="the submission must be a .zip file"):
        build_package(systems, tmp_path / "s.tar", TechnicalReport(report))
    assert build_package(systems, tmp_path / "s.zip", TechnicalReport(report), expected=Expected(rows=4, files=5)).ok


def test_cli_build_check_and_json(tmp_path, systems, report):
    out = tmp_path / "submission.zip"
    args = [arg for system in systems for arg in ("-l", system.label, "-p", system.predictions, "-m", system.meta)]
    built = run_dcase("package", *args, "--report", report, "--out", out, "--expected-rows", 4)
    assert built.exit_code == 0, built.output
    assert "all checks pass" in built.output and out.is_file()
    checked = run_dcase("package", "--check", out, "--expected-rows", 4)
    assert checked.exit_code == 0 and checked.output.startswith("ok ")
    as_json = run_dcase("package", "--check", out, "--expected-rows", 5, "--json")
    payload = json.loads(as_json.output)
    assert as_json.exit_code == 1 and payload["ok"] is False and len(payload["problems"]) == 2
    assert [system["label"] for system in payload["systems"]] == [label(1), label(2)]
    broken = rewrite(out, edit_meta(1, lambda m: m["submission"].update(abbreviation="Eleven chrs")))
    listed = run_dcase("package", "--check", broken)
    assert listed.exit_code == 1
    assert "1 problem(s)" in listed.output and "'Eleven chrs' has more than 10 characters" in listed.output


@pytest.mark.parametrize("args, expected", [
    (["-l", "bad_label", "-p", "x.csv", "-m", "x.yaml", "--report", "r.pdf", "--out", "s.zip"],
     "--label: label 'bad_label' is not of the form"),
    (["-l", label(1), "-l", label(2), "-p", "x.csv", "-m", "x.yaml", "--report", "r.pdf", "--out", "s.zip"],
     "got 2 --label, 1 --predictions and 1 --meta"),
    (["-l", label(1), "-p", "x.csv", "-m", "x.yaml", "--out", "s.zip"], "exactly one of --report PDF"),
    (["-l", label(1), "-p", "x.csv", "-m", "x.yaml", "--report", "r.pdf", "--weights", "w.json", "--out", "s.zip"],
     "--weights, --per-query and --runs only apply with --draft-report"),
    (["--check", "s.zip", "--label", label(1)], "--label does not apply to --check"),
    (["--init-meta", "--label", label(1), "--out", "m.yaml", "--report", "r.pdf"],
     "--report does not apply to --init-meta"),
    (["--init-meta", "--out", "m.yaml"], "package --init-meta: give one --label and --out meta.yaml"),
])
def test_cli_usage_errors_exit_2(args, expected):
    result = run_dcase("package", *args)
    assert result.exit_code == 2 and expected in result.output, result.output


def test_cli_init_meta_from_evaluate_json(tmp_path):
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps(EVALUATE_JSON), encoding="utf-8")
    out = tmp_path / "meta.yaml"
    result = run_dcase("package", "--init-meta", "--label", label(3), "--results", evaluation, "--out", out)
    assert result.exit_code == 0, result.output
    meta = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert meta["submission"]["label"] == label(3)
    assert meta["results"]["development_testing"]["mAP@16"] == EVALUATE_JSON["mAP@16"]
    again = run_dcase("package", "--init-meta", "--label", label(3), "--out", out)
    assert again.exit_code == 2 and "already exists" in again.output


def test_cli_help_has_an_example():
    result = run_dcase("package", "--help")
    assert result.exit_code == 0 and "Example:" in result.output and "--check submission.zip" in result.output
