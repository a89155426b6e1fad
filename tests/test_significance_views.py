"""The explorer's summary page and the draft report show `evaluate`'s intervals and paired comparison, digit for
digit."""

import json
import re

import pandas as pd
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.explore.analysis import SystemSource, clip_captions, explore
from dcase_t6.explore.audio import scan_audio
from dcase_t6.explore.pages import Site
from dcase_t6.retrieval.ground_truth import read_captions_file, read_relevance_file
from dcase_t6.retrieval.matrices import read_matrix
from dcase_t6.submission.report import ReportContent, render_html
from dcase_t6.submission.report_intervals import per_query_intervals
from helpers.submission import FILES, QUERIES, filled_meta, label, make_system


def evaluate_json(*args):
    result = CliRunner().invoke(main, ["evaluate", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_summary_page_shows_the_intervals_and_the_paired_difference_of_evaluate(case):
    sources = [SystemSource("first", read_matrix(case["first"]), str(case["first"])),
               SystemSource("second", read_matrix(case["second"]), str(case["second"]))]
    exploration = explore(sources, read_relevance_file(case["relevance"]),
                          clip_captions(read_captions_file(case["captions"])))
    page = Site(exploration, scan_audio(case["audio"], exploration.clips)).render("summary.html").content.decode()
    expected = evaluate_json("-p", case["first"], "-p", case["second"], "-r", case["relevance"], "--ci")
    for index, system in enumerate(expected["systems"]):
        row = re.search(rf'<tr class="ci" data-system-ci="{index}">(.*?)</tr>', page, re.S).group(1)
        for key, (low, high) in system["ci95"].items():
            assert f'data-ci-metric="{key}" data-low="{low!r}" data-high="{high!r}"' in row
        for key in ("R@1", "mAP@16"):
            assert f'data-metric="{key}" data-value="{system["audio_to_text"][key]!r}"' in page
    paired = re.search(r'<table class="metrics" id="paired-difference">(.*?)</table>', page, re.S).group(1)
    for key, figures in expected["comparisons"][0]["text_to_audio"].items():
        cells = re.search(rf'<tr data-metric="{re.escape(key)}">(.*?)</tr>', paired, re.S).group(1)
        low, high = figures["ci95"]
        assert f'data-value="{figures["difference"]!r}"' in cells and f'data-p="{figures["p_value"]!r}"' in cells
        assert f'data-low="{low!r}" data-high="{high!r}"' in cells
    assert "10,000 random swaps" in page and "seed 0" in page


def test_draft_report_shows_the_intervals_of_evaluate_ci(tmp_path):
    system = make_system(tmp_path, 1)
    relevance = tmp_path / "relevance.csv"
    pd.DataFrame({"query": QUERIES, "audio_filenames": [str(FILES[i:i + 2]) for i in range(len(QUERIES))]}) \
        .to_csv(relevance, index=False)
    per_query = tmp_path / "per_query.csv"
    expected = evaluate_json("-p", system.predictions, "-r", relevance, "--per-query", per_query, "--ci",
                             "--direction", "t2a")
    intervals = per_query_intervals(per_query)
    assert intervals.n_queries == expected["n_queries"]
    assert intervals.rows == tuple((key, f"{expected[key]:.4f}", f"[{low:.4f}, {high:.4f}]")
                                   for key, (low, high) in expected["ci95"].items())
    html = render_html(ReportContent([filled_meta(label(1))], None, tmp_path / "figure.png", "a figure",
                                     intervals=intervals))
    assert "<td>mAP@16</td><td>" + intervals.rows[-1][1] + "</td><td>" + intervals.rows[-1][2] + "</td>" in html
    assert "bootstrap percentile, 10,000 resamples of the queries, seed 0" in html
    ranks_only = tmp_path / "ranks.csv"
    pd.DataFrame({"query": ["a"], "n_relevant": [1], "ranks": ["3"]}).to_csv(ranks_only, index=False)
    assert per_query_intervals(ranks_only) is None  # a hand-made file of ranks: no interval table
