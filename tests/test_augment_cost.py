"""`augment --dry-run`: the cost estimate at --price-in/--price-out and the warning above the task's LLM budget."""

import json

from click.testing import CliRunner

from dcase_t6.cli import main

# Nothing listens there: a dry run sends nothing and needs no key.
API = ["--api-base", "http://127.0.0.1:9/v1", "--model", "gpt-4o", "--api-key-env", "DCASE_T6_NO_SUCH_KEY"]


def _mix(root, out, *extra):
    args = ["augment", "llm-mix", "--data-root", root, "--dataset", "synthetic", "--pairs", 40, "--out", out, *API,
            "--dry-run", *extra]
    return CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)


def test_dry_run_prices_the_tokens_at_gpt4o_list_prices_by_default(tiny_data_root, tmp_path):
    out = tmp_path / "mix.csv"
    result = _mix(tiny_data_root, out, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    estimate, cost = payload["estimate"], payload["cost"]
    expected = (estimate["prompt_tokens"] * 2.50 + estimate["completion_tokens"] * 10.00) / 1e6
    assert estimate["requests"] == 40 and abs(cost["usd"] - expected) < 1e-4
    assert cost["price_in"] == 2.5 and cost["price_out"] == 10.0 and cost["spent_usd"] == 0
    assert cost["budget_usd"] == [15.0, 25.0] and cost["over_budget"] is False
    text = _mix(tiny_data_root, out, "--price-in", 1000, "--price-out", 0)
    assert text.exit_code == 0 and not out.exists()
    line = next(line for line in text.output.splitlines() if line.startswith("estimated cost:"))
    assert f"${estimate['prompt_tokens'] * 1000 / 1e6:,.2f} at $1000 / $0 per million" in line
    assert "warning" not in text.output


def test_dry_run_warns_above_the_tasks_suggested_budget(tiny_data_root, tmp_path):
    result = _mix(tiny_data_root, tmp_path / "mix.csv", "--price-in", 1e6, "--price-out", 1e6)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "warning: estimated $" in text
    assert "more than the task's suggested LLM budget (about $15-25 over the whole challenge" in text
    as_json = _mix(tiny_data_root, tmp_path / "mix.csv", "--price-in", 1e6, "--json")
    assert json.loads(as_json.stdout)["cost"]["over_budget"] is True


def test_help_states_the_default_prices_and_the_budget():
    result = CliRunner().invoke(main, ["augment", "llm-mix", "--help"])
    text = " ".join(result.output.split())
    assert "GPT-4o's list price" in text and "[default: 2.5;" in text and "[default: 10.0;" in text
    assert "about 15-25 USD over the challenge" in text
