"""Hostile submission inputs: zip bombs, duplicate and unsafe entries, broken zips, hostile metadata YAML.

Each case goes through `dcase-t6 package` as a user runs it and must end in one clear line, the documented exit
code, no traceback, bounded time and memory, and untouched files.
"""

import random
import re
import struct
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.retrieval.matrices import SimilarityMatrix, write_csv
from dcase_t6.submission.package import CSV_KIND, META_KIND, REPORT_KIND, build_package, check_package, member_name
from dcase_t6.submission.report import TechnicalReport
from dcase_t6.submission.zipsafety import MemberError, csv_bound, read_member
from helpers.submission import PDF, label, make_system

LABEL = label(1)
CSV, META, REPORT = (member_name(LABEL, kind) for kind in (CSV_KIND, META_KIND, REPORT_KIND))
MiB = 1 << 20


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict:
    """Inputs of one valid system and the members of the zip `dcase-t6 package` builds from them."""
    folder = tmp_path_factory.mktemp("hostile-source")
    system = make_system(folder, 1)
    report = folder / "report.pdf"
    report.write_bytes(PDF)
    good = folder / "good.zip"
    build_package([system], good, TechnicalReport(report))
    with zipfile.ZipFile(good) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    return {"system": system, "report": report, "members": members, "good": good}


def run(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def assert_clean_exit(result, code: int) -> None:
    """Exit ``code`` through SystemExit (no other exception), no traceback in the output."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


def write_zip(path: Path, entries) -> Path:
    """A zip of ``(name or ZipInfo, bytes)`` entries, deflated."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def with_members(source: dict, **changes: bytes) -> list:
    """The valid members with ``{"CSV"|"META"|"REPORT": new bytes}`` swapped in."""
    names = {"CSV": CSV, "META": META, "REPORT": REPORT}
    replaced = {names[key]: value for key, value in changes.items()}
    return [(name, replaced.get(name, data)) for name, data in source["members"].items()]


def patch_entry(data: bytes, name: str, local_offset: int | None, central_offset: int, fmt: str, value) -> bytes:
    """Patch one field of entry ``name`` in its central record and, unless None, its local header."""
    raw = bytearray(data)
    with zipfile.ZipFile(zipfile.io.BytesIO(data)) as archive:
        info = archive.getinfo(name)
    central = raw.index(b"PK\x01\x02")
    while raw[central + 46:central + 46 + len(name.encode())] != name.encode():
        central = raw.index(b"PK\x01\x02", central + 4)
    struct.pack_into(fmt, raw, central + central_offset, value)
    if local_offset is not None:
        struct.pack_into(fmt, raw, info.header_offset + local_offset, value)
    return bytes(raw)


def zero_bomb(path: Path, source: dict, member: str, megabytes: int) -> Path:
    """The valid zip with ``member`` followed by ``megabytes`` MiB of ASCII zeros, deflated (~1000:1)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, data in source["members"].items():
            if name != member:
                archive.writestr(name, data)
        with archive.open(member, "w", force_zip64=True) as handle:
            handle.write(source["members"][member])
            chunk = b"0" * MiB
            for _ in range(megabytes):
                handle.write(chunk)
    return path


def check_one_problem(path: Path, *options) -> str:
    """Run `package --check`; assert exit 1, one problem, the zip untouched; return the problem line."""
    before = path.read_bytes()
    result = run("package", "--check", path, *options)
    assert_clean_exit(result, 1)
    assert f"{path}: 1 problem(s)" in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("  - ")]
    assert len(lines) == 1, result.output
    assert path.read_bytes() == before
    return lines[0][4:]


# --- zip structure and bombs: `package --check` -----------------------------------------------------------------


def _duplicate(source, tmp):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns, and writes the second copy
        return write_zip(tmp / "dup.zip", with_members(source) + [(CSV, b"index,a.wav\r\nq,0.5\r\n")])


def _extra(name: str):
    def build(source, tmp):
        return write_zip(tmp / "extra.zip", with_members(source) + [(name, b"echo pwned\n")])
    return build


def _patched_header(start: int, end: int, value: int, name: str):
    """A valid zip whose CSV entry's header bytes [start, end) (little-endian uint16) are ``value``."""
    def build(source, tmp):
        data = write_zip(tmp / "plain.zip", with_members(source)).read_bytes()
        (tmp / name).write_bytes(patch_entry(data, CSV, start, end, "<H", value))
        return tmp / name
    return build


def _flag_bits(value: int):
    return _patched_header(6, 8, value, "flagged.zip")  # general-purpose flags


def _method(value: int):
    return _patched_header(8, 10, value, "method.zip")  # compression method


def _bzip2(source, tmp):
    with zipfile.ZipFile(tmp / "bzip2.zip", "w") as archive:
        for name, data in source["members"].items():
            archive.writestr(name, data, compress_type=zipfile.ZIP_BZIP2 if name == CSV else zipfile.ZIP_DEFLATED)
    return tmp / "bzip2.zip"


def _symlink(source, tmp):
    entries = with_members(source)
    info = zipfile.ZipInfo(REPORT)
    info.external_attr = 0o120777 << 16
    return write_zip(tmp / "symlink.zip", [entry for entry in entries if entry[0] != REPORT] + [(info, b"/etc/passwd")])


def _flipped(source, tmp):
    data = bytearray(write_zip(tmp / "plain.zip", with_members(source)).read_bytes())
    with zipfile.ZipFile(tmp / "plain.zip") as archive:
        info = archive.getinfo(CSV)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for offset in range(start + 10, start + 20):
        data[offset] ^= 0xFF
    (tmp / "flipped.zip").write_bytes(bytes(data))
    return tmp / "flipped.zip"


def _lying_size(source, tmp):
    padded = source["members"][CSV] + b"0" * (8 * MiB)
    data = write_zip(tmp / "plain.zip", with_members(source, CSV=padded)).read_bytes()
    (tmp / "lying.zip").write_bytes(patch_entry(data, CSV, 22, 24, "<I", len(source["members"][CSV])))
    return tmp / "lying.zip"


def _latin1_header(source, tmp):
    latin1 = source["members"][CSV].replace("Ünïcødé".encode(), "Ünïcødé".encode("latin-1"))
    return write_zip(tmp / "latin1.zip", with_members(source, CSV=latin1))


def _latin1_row(source, tmp):
    rows = source["members"][CSV].split(b"\r\n")
    rows[3] = b"caf\xe9 " + rows[3]
    return write_zip(tmp / "latin1.zip", with_members(source, CSV=b"\r\n".join(rows)))


def _many_entries(source, tmp):
    return write_zip(tmp / "many.zip", with_members(source) + [(f"task6/{LABEL}/x{i}", b"") for i in range(5000)])


def _meta_bomb(source, tmp):
    return zero_bomb(tmp / "meta-bomb.zip", source, META, 2)


def _meta_bomb_small(source, tmp):
    return zero_bomb(tmp / "meta-bomb.zip", source, META, 1)


def _report_bomb(source, tmp):
    return zero_bomb(tmp / "report-bomb.zip", source, REPORT, 101)


ZIP_CASES = {
    "duplicate-entry": (_duplicate, f"{CSV}: appears 2 times in the zip (which copy an extractor keeps is undefined)"),
    "traversal-dotdot": (_extra("../evil.sh"), "../evil.sh: unsafe path (absolute, with .. or a backslash)"),
    "traversal-inside-layout": (_extra(f"task6/{LABEL}/../../../evil.sh"),
                                f"task6/{LABEL}/../../../evil.sh: unsafe path"),
    "absolute-path": (_extra("/etc/cron.d/evil"), "/etc/cron.d/evil: unsafe path"),
    "backslash-path": (_extra("..\\..\\evil.bat"), "..\\..\\evil.bat: unsafe path"),
    "symlink-member": (_symlink, f"{REPORT}: is a symbolic link; zip the file itself"),
    "encrypted-member": (_flag_bits(0x1), f"{CSV}: is encrypted; the organisers cannot open it"),
    "strong-encryption-flag": (_flag_bits(0x40), f"{CSV}: is encrypted"),
    "patched-data-flag": (_flag_bits(0x20), f"{CSV}: holds compressed patched data"),
    "unknown-compression-99": (_method(99), f"{CSV}: uses compression method 99; only stored or deflate"),
    "bzip2-member": (_bzip2, f"{CSV}: uses compression method 12"),
    "corrupt-deflate-data": (_flipped, f"{CSV}: corrupt data in the zip"),
    "lying-declared-size": (_lying_size, f"{CSV}: corrupt data in the zip (Bad CRC-32"),
    "non-utf8-header": (_latin1_header, f"{CSV}: not UTF-8 text (byte 0xdc on line 1: invalid continuation byte)"),
    "non-utf8-row": (_latin1_row, f"{CSV}: not UTF-8 text (byte 0xe9 on line 4: invalid continuation byte)"),
    "meta-bomb": (_meta_bomb, f"{META}: declares 2,"),
    "meta-bomb-small": (_meta_bomb_small, f"{META}: declares 1,"),
    "report-bomb": (_report_bomb, f"{REPORT}: declares 105,"),
}


@pytest.mark.parametrize("case", list(ZIP_CASES))
def test_check_refuses_hostile_zip(source, tmp_path, case):
    build, expected = ZIP_CASES[case]
    path = build(source, tmp_path)
    started = time.perf_counter()
    problem = check_one_problem(path)
    assert problem.startswith(expected), problem
    assert time.perf_counter() - started < 10


def test_check_refuses_many_entries_before_reading_them(source, tmp_path):
    path = _many_entries(source, tmp_path)
    assert check_one_problem(path) == (f"{path}: 5,003 entries; a submission holds at most 64 (4 systems x 3 "
                                       "files); rebuild it with `dcase-t6 package`")


@pytest.mark.parametrize("cut", ["half", "end-record", "empty"])
def test_check_refuses_truncated_zip(source, tmp_path, cut):
    data = source["good"].read_bytes()
    path = tmp_path / f"{cut}.zip"
    path.write_bytes({"half": data[:len(data) // 2], "end-record": data[:-10], "empty": b""}[cut])
    assert check_one_problem(path).startswith(f"{path}: not a readable zip archive (File is not a zip file)")


def test_check_refuses_csv_bomb_over_expected_shape(source, tmp_path):
    path = zero_bomb(tmp_path / "bomb.zip", source, CSV, 64)
    started = time.perf_counter()
    problem = check_one_problem(path, "--expected-rows", 4, "--expected-files", 5)
    assert problem == (f"{CSV}: declares {64 * MiB + len(source['members'][CSV]):,} bytes uncompressed, more than "
                       f"the {csv_bound(4, 5):,} a file of its kind can need (zip bomb or wrong file); check "
                       "--expected-rows/--expected-files and rebuild the zip")
    assert time.perf_counter() - started < 10


MEASURE = """
import resource, sys, time
from click.testing import CliRunner
from dcase_t6.cli import main
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
result = CliRunner().invoke(main, ["package", "--check", sys.argv[1]])
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(result.exit_code, type(result.exception).__name__, grown, time.perf_counter() - started)
print(result.output)
"""


def test_check_refuses_csv_bomb_over_fixed_ceiling_in_bounded_time_and_memory(source, tmp_path):
    megabytes = csv_bound(None, None) // MiB + 8  # 181 MB ceiling: 3 MB of zip inflating to ~190 MB
    path = zero_bomb(tmp_path / "bomb.zip", source, CSV, megabytes)
    assert path.stat().st_size < 2 * MiB
    before = path.read_bytes()
    measured = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True,
                              timeout=60, check=True)
    code, exception, grown_kib, seconds = measured.stdout.split("\n", 1)[0].split()
    assert (code, exception) == ("1", "SystemExit"), measured.stdout
    assert int(grown_kib) < 32 * 1024, measured.stdout  # holding the member would take 190 MB
    assert float(seconds) < 10
    assert f"{CSV}: declares {megabytes * MiB + len(source['members'][CSV]):,} bytes uncompressed" in measured.stdout
    assert "Traceback" not in measured.stdout + measured.stderr
    assert path.read_bytes() == before


def test_member_reads_stop_at_the_bound_even_when_the_header_is_honest(source, tmp_path):
    path = write_zip(tmp_path / "big.zip", with_members(source, CSV=source["members"][CSV] + b"0" * (3 * MiB)))
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(CSV)
        with pytest.raises(MemberError, match=rf"^{re.escape(CSV)}: inflates to more than the 2,097,152 a file"):
            read_member(archive, info, 2 * MiB)
        assert read_member(archive, info, 4 * MiB) == info.file_size


def test_csv_bound_covers_the_largest_csv_package_writes(tmp_path):
    names = ["n" * 1000 + f"{i}.wav" for i in range(4)]
    worst = SimilarityMatrix([f"q{i}" + '",' * 240 for i in range(3)], names, np.full((3, 4), -1.2345678901234567e-300))
    write_csv(worst, tmp_path / "worst.csv")
    assert (tmp_path / "worst.csv").stat().st_size <= csv_bound(3, 4)
    assert csv_bound(None, None) == 16 + 1045 * 1024 + 5225 * (1024 + 1045 * 32) == 181_144_496


def _header_fields(data: bytes) -> list[int]:
    """Offsets of the version, flag, method and size fields of every local header and central record."""
    fields = []
    for magic, offsets in ((b"PK\x03\x04", (4, 6, 8, 18, 22)), (b"PK\x01\x02", (6, 8, 10, 20, 24))):
        start = data.find(magic)
        while start != -1:
            fields += [start + offset for offset in offsets]
            start = data.find(magic, start + 4)
    return fields


def test_corrupted_zips_never_escape_as_exceptions(source, tmp_path):
    data = source["good"].read_bytes()
    fields, rng = _header_fields(data), random.Random(7)
    path = tmp_path / "fuzz.zip"
    outcomes = set()
    for _ in range(300):
        mutated = bytearray(data)
        for _ in range(rng.choice([1, 2, 4])):
            mutated[rng.choice(fields) + rng.randrange(2)] = rng.randrange(256)
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        path.write_bytes(bytes(mutated))
        outcomes.add(check_package(path).ok)
    assert outcomes == {True, False}  # some changes hit unused bytes or fields, most break the zip


# --- metadata YAML: `package --check` on the member and `package` on the file -------------------------------------


def _meta_text(source: dict) -> str:
    return source["members"][META].decode("utf-8")


def _lines(source: dict) -> dict:
    """Line numbers the messages name: ``next`` (a line appended to the YAML), the R@1 line and its successor."""
    lines = _meta_text(source).splitlines()
    r1 = next(number for number, line in enumerate(lines, start=1) if line.strip().startswith("R@1:"))
    return {"next": len(lines) + 1, "laughs": len(lines) + 3, "r1": r1, "r1_next": r1 + 1}


LAUGHS = "bomb:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  {chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))
META_CASES = {
    "nan-result": (lambda text: re.sub(r"R@1: .*", "R@1: .nan", text),
                   "results.development_testing.R@1: nan is not a finite number"),
    "inf-count": (lambda text: text.replace("audio: 3839", "audio: .inf"),
                  "system.training_datasets[0].data_instances.audio: inf is not a finite number"),
    "duplicate-key": (lambda text: re.sub(r"(    R@1: .*)", r"\1\n    R@1: 0.99", text),
                      "line {r1_next}: duplicate key 'R@1' (first on line {r1}); keep one of them"),
    "python-tag": (lambda text: text + "exploit: !!python/object/apply:os.system ['echo pwned']\n",
                   "line {next}: YAML tag !!python/object/apply:os.system refused"),
    "billion-laughs": (lambda text: text + LAUGHS,
                       "line {laughs}: YAML alias *a refused (aliases can expand without bound)"),
    "deep-nesting": (lambda text: text + "deep: " + "[" * 20000 + "]" * 20000 + "\n",
                     "line {next}: nested more than 32 levels deep"),
    "int-tag-not-a-number": (lambda text: text + "bad: !!int abc\n", "line {next}: !!int value does not convert"),
    "int-of-5000-digits": (lambda text: text + "huge: !!int " + "9" * 5000 + "\n",
                           "line {next}: !!int value does not convert (Exceeds the limit (4300 digits)"),
}


@pytest.mark.parametrize("case", list(META_CASES))
def test_check_refuses_hostile_meta_member(source, tmp_path, case):
    edit, expected = META_CASES[case]
    expected = expected.format(**_lines(source))
    path = write_zip(tmp_path / "meta.zip", with_members(source, META=edit(_meta_text(source)).encode("utf-8")))
    started = time.perf_counter()
    problem = check_one_problem(path)
    assert problem.startswith(f"{META}: {expected}"), problem
    assert time.perf_counter() - started < 10


def build_args(source: dict, meta: Path, out: Path) -> list:
    system = source["system"]
    return ["package", "-l", LABEL, "-p", system.predictions, "-m", meta, "--report", source["report"], "--out", out]


def assert_build_refused(source: dict, tmp_path: Path, meta: Path, expected: str, predictions: Path | None = None):
    """`package` exits 2 with one error line starting with ``expected``; an existing --out stays as it was."""
    out = tmp_path / "submission.zip"
    out.write_bytes(b"previous submission")
    args = build_args(source, meta, out)
    if predictions is not None:
        args[args.index("-p") + 1] = predictions
    started = time.perf_counter()
    result = run(*args)
    assert_clean_exit(result, 2)
    assert result.output.startswith(f"error: {expected}"), result.output
    assert out.read_bytes() == b"previous submission" and not list(tmp_path.glob(".*.tmp"))
    assert time.perf_counter() - started < 10
    return result


ONE_LINE_META_CASES = ["duplicate-key", "python-tag", "billion-laughs", "deep-nesting", "int-tag-not-a-number"]


@pytest.mark.parametrize("case", ONE_LINE_META_CASES)
def test_build_refuses_hostile_meta_file_in_one_line(source, tmp_path, case):
    edit, expected = META_CASES[case]
    meta = tmp_path / "meta.yaml"
    meta.write_text(edit(_meta_text(source)), encoding="utf-8")
    result = assert_build_refused(source, tmp_path, meta, f"{meta}: {expected.format(**_lines(source))}")
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("case", ["nan-result", "inf-count"])
def test_build_refuses_non_finite_numbers(source, tmp_path, case):
    edit, expected = META_CASES[case]
    meta = tmp_path / "meta.yaml"
    meta.write_text(edit(_meta_text(source)), encoding="utf-8")
    result = assert_build_refused(source, tmp_path, meta, f"{meta}: 1 metadata problem(s); fix these fields:")
    assert result.output.splitlines()[1] == f"  - {expected}; write a number (results: a fraction in [0, 1])"


def test_build_refuses_oversized_meta_without_reading_it(source, tmp_path):
    meta = tmp_path / "meta.yaml"
    with open(meta, "w", encoding="utf-8") as handle:
        handle.write(_meta_text(source))
        handle.write("#" * (64 * MiB))
    assert_build_refused(source, tmp_path, meta, f"{meta}: more than 262,144 bytes, too large for a metadata file")


def test_build_refuses_non_utf8_csv_row(source, tmp_path):
    predictions = tmp_path / "latin1.csv"
    queries = [f"query {i}" for i in range(2000)]
    write_csv(SimilarityMatrix(queries, ["a.wav", "b.wav"], np.full((2000, 2), 0.125)), predictions)
    rows = predictions.read_bytes().split(b"\r\n")
    rows[1500] = b"caf\xe9" + rows[1500]  # far past the first buffer a text reader decodes
    predictions.write_bytes(b"\r\n".join(rows))
    assert_build_refused(source, tmp_path, source["system"].meta,
                         f"{predictions}: not UTF-8 text after the header (invalid continuation byte); save the CSV "
                         "as UTF-8", predictions)


# --- label convention: a warning, not an error ----------------------------------------------------------------------


def _other_author(text: str) -> str:
    return text.replace("lastname: Müller", "lastname: Smith").replace("abbreviation: CP-JKU", "abbreviation: TUNI", 1)


WARNINGS = [f"submission.label: '{LABEL}' starts with 'Mueller-Luedenscheidt', not the corresponding author's "
            "lastname 'Smith'; the organisers' convention is <Lastname>_<INSTITUTE>_task6_<n>",
            f"submission.label: '{LABEL}' names institute 'CP-JKU', not the corresponding author's affiliation "
            "abbreviation 'TUNI'; the organisers' convention is <Lastname>_<INSTITUTE>_task6_<n>"]


def test_label_of_another_author_warns_on_build(source, tmp_path):
    meta = tmp_path / "meta.yaml"
    meta.write_text(_other_author(_meta_text(source)), encoding="utf-8")
    out = tmp_path / "submission.zip"
    result = run(*build_args(source, meta, out))
    assert result.exit_code == 0 and out.is_file(), result.output
    assert [line for line in result.output.splitlines() if line.startswith("warning:")] == \
        [f"warning: {meta}: {warning}" for warning in WARNINGS]


def test_label_of_another_author_warns_on_check(source, tmp_path):
    path = write_zip(tmp_path / "other.zip", with_members(source, META=_other_author(_meta_text(source)).encode()))
    result = run("package", "--check", path)
    assert result.exit_code == 0 and result.output.startswith(f"ok {path}"), result.output
    assert [line for line in result.output.splitlines() if line.startswith("warning:")] == \
        [f"warning: {META}: {warning}" for warning in WARNINGS]
    as_json = run("package", "--check", path, "--json")
    assert as_json.exit_code == 0 and f'"{META}: {WARNINGS[1]}"' in as_json.output


def test_label_spelled_without_umlauts_does_not_warn(source):
    result = run("package", "--check", source["good"])  # Müller, label Mueller-Luedenscheidt, both CP-JKU
    assert result.exit_code == 0 and "warning" not in result.output, result.output
