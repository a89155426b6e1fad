"""The figures in docs/speed.md belong to the benchmarks that measure them (``benchmarks/_published.py``): every
``benchmarks/bench_*.py`` owns exactly one marked block, no figure sits outside one, and the writer replaces only
its own block, refusing a page whose markers are missing or duplicated. Fast: no benchmark runs."""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
SPEED = ROOT / "docs" / "speed.md"
MARKER = re.compile(r"^<!-- (begin|end): benchmarks/(\S+) -->$")


def load_published():
    """benchmarks/ is not a package: load the module from its file."""
    spec = importlib.util.spec_from_file_location("_published", BENCHMARKS / "_published.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("_published", module)
    spec.loader.exec_module(module)
    return module


published = load_published()


def marker_lines(text: str) -> list[tuple[int, str, str]]:
    return [(number, *MARKER.match(line.strip()).groups()) for number, line in enumerate(text.splitlines())
            if MARKER.match(line.strip())]


def speed_section(text: str) -> list[str]:
    """The lines of the speed section: from its heading to the GPU acceptance run's description (or next heading)."""
    lines = text.splitlines()
    start = next(number for number, line in enumerate(lines) if line.startswith("## Speed"))
    end = next((number for number in range(start + 1, len(lines))
                if lines[number].startswith("## ") or lines[number].startswith("**GPU acceptance run.**")), len(lines))
    return lines[start:end]


def test_every_benchmark_has_exactly_one_block_and_every_block_a_script():
    text = SPEED.read_text(encoding="utf-8")
    found = marker_lines(text)
    scripts = sorted(path.name for path in BENCHMARKS.glob("bench_*.py"))
    assert scripts
    for script in scripts:
        begins = [number for number, kind, name in found if kind == "begin" and name == script]
        ends = [number for number, kind, name in found if kind == "end" and name == script]
        assert len(begins) == 1 and len(ends) == 1, f"{script}: {len(begins)} begin and {len(ends)} end markers"
        assert begins[0] < ends[0], script
    for _, _, name in found:
        assert (BENCHMARKS / name).is_file(), f"docs/speed.md has a block for a missing script: benchmarks/{name}"
    # blocks do not nest or interleave: begin, end, begin, end ...
    assert [kind for _, kind, _ in found] == ["begin", "end"] * (len(found) // 2)
    assert all(found[i][2] == found[i + 1][2] for i in range(0, len(found), 2))


def test_the_speed_section_has_no_table_row_outside_a_block():
    inside, outside = None, []
    for line in speed_section(SPEED.read_text(encoding="utf-8")):
        match = MARKER.match(line.strip())
        if match:
            inside = match.group(2) if match.group(1) == "begin" else None
        elif line.lstrip().startswith("|") and inside is None:
            outside.append(line)
    assert not outside, f"table rows outside any benchmark's block: {outside}"


def test_every_block_holds_a_table_and_its_when_and_where_line():
    lines = SPEED.read_text(encoding="utf-8").splitlines()
    found = marker_lines("\n".join(lines))
    for (begin, _, name), (end, _, _) in zip(found[::2], found[1::2]):
        body = lines[begin + 1:end]
        assert body[:2] == ["| benchmark | measured | goal |", "|---|---|---|"], name
        assert body[-1].startswith(("Measured ", "Figures from earlier runs")), name


def test_the_writer_replaces_only_its_own_block(tmp_path):
    page = tmp_path / "speed.md"
    page.write_bytes(SPEED.read_bytes())
    original = SPEED.read_text(encoding="utf-8")
    rows = [published.Row("`evaluate`, a | b", "0.01 s; 99x", "< 0.5 s"), published.Row("no goal", "1 s")]
    published.publish("bench_evaluate.py", rows, page)
    updated = page.read_text(encoding="utf-8")
    begin, end = published.markers("bench_evaluate.py")
    head, block_and_tail = original.split(begin + "\n")
    tail = block_and_tail.split(end + "\n", 1)[1]
    assert updated.startswith(head + begin + "\n") and updated.endswith(end + "\n" + tail)
    block = updated[len(head):len(updated) - len(tail)].splitlines()
    assert block[1:5] == ["| benchmark | measured | goal |", "|---|---|---|",
                          "| `evaluate`, a \\| b | 0.01 s; 99x | < 0.5 s |", "| no goal | 1 s |  |"]
    assert block[5] == "" and block[6].startswith("Measured ") and "cores" in block[6]
    # every other block byte-identical
    for script in (path.name for path in BENCHMARKS.glob("bench_*.py")):
        if script != "bench_evaluate.py":
            assert _block(updated, script) == _block(original, script), script
    # no temporary file left beside it
    assert [path.name for path in tmp_path.iterdir()] == ["speed.md"]


def _block(text: str, script: str) -> str:
    begin, end = published.markers(script)
    return text[text.index(begin):text.index(end) + len(end)]


@pytest.mark.parametrize("damage", ["missing begin", "missing end", "duplicated begin", "duplicated block",
                                    "end before begin"])
def test_the_writer_refuses_bad_markers_and_leaves_the_page_unchanged(tmp_path, damage):
    begin, end = published.markers("bench_fbank.py")
    text = SPEED.read_text(encoding="utf-8")
    block = _block(text, "bench_fbank.py")
    damaged = {"missing begin": text.replace(begin + "\n", ""),
               "missing end": text.replace(end + "\n", ""),
               "duplicated begin": text.replace(begin + "\n", begin + "\n" + begin + "\n"),
               "duplicated block": text + "\n" + block + "\n",
               "end before begin": text.replace(block, f"{end}\nmiddle\n{begin}")}[damage]
    page = tmp_path / "speed.md"
    page.write_text(damaged, encoding="utf-8")
    with pytest.raises(published.PublishError, match="bench_fbank.py"):
        published.publish("bench_fbank.py", [published.Row("a", "b", "c")], page)
    assert page.read_text(encoding="utf-8") == damaged
    assert [path.name for path in tmp_path.iterdir()] == ["speed.md"]


def test_a_page_without_any_block_is_refused_not_appended_to(tmp_path):
    page = tmp_path / "other.md"
    page.write_text("# Other\n\nNo blocks here.\n", encoding="utf-8")
    with pytest.raises(published.PublishError, match="missing"):
        published.publish("bench_train.py", [published.Row("a", "b")], page)
    assert page.read_text(encoding="utf-8") == "# Other\n\nNo blocks here.\n"


def test_the_script_ends_with_one_line_when_refused(tmp_path, capsys):
    page = tmp_path / "speed.md"
    page.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"^--write-docs: .*speed\.md: the marker line .* is missing"):
        published.finish("bench_train.py", [published.Row("a", "b")], page)
    assert "| a | b |  |" in capsys.readouterr().out  # the rows are printed first
    published.finish("bench_train.py", [published.Row("a", "b")], None)  # without --write-docs: prints only
    assert page.read_text(encoding="utf-8") == "no markers\n"


def test_the_option_is_parsed_both_ways(tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    published.add_option(parser)
    assert parser.parse_args([]).write_docs is None
    assert parser.parse_args(["--write-docs", "--quick"]).write_docs == published.DOCUMENT
    assert parser.parse_args(["--write-docs", str(tmp_path / "p.md")]).write_docs == tmp_path / "p.md"
    assert published.requested(["--quick"]) is None
    assert published.requested(["--write-docs"]) == published.DOCUMENT
    assert published.requested([f"--write-docs={tmp_path / 'p.md'}"]) == tmp_path / "p.md"
