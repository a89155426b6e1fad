"""Standard logging: the LoggingReporter's records (a start and an end line per task, nothing per item) and
`dcase-t6 --log-file FILE`, which appends a plain timestamped log that several commands of a job share."""

import logging

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import dcase_t6
from dcase_t6.cli import main
from dcase_t6.common.errors import UserError
from dcase_t6.common.logreport import LOG_LINE, LOGGER_NAME, IsoFormatter, LoggingReporter, check_log_file
from dcase_t6.common.reporting import BYTES, SILENT, Recorder
from dcase_t6.retrieval.matrices import SimilarityMatrix, write_csv
from helpers.cli import cli, cli_error

BAR_CHARACTERS = "━█▏▎▍▌▋▊▉╸╺"


class ListHandler(logging.Handler):
    """Keeps every record it is given."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[tuple[str, str]]:
        return [(record.levelname, record.getMessage()) for record in self.records]


@pytest.fixture
def captured(request):
    """A real logger (INFO and up, not passed to the root) and the handler keeping its records."""
    logger = logging.getLogger(f"{LOGGER_NAME}.test.{request.node.name}")
    handler = ListHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, handler
    logger.removeHandler(handler)


def test_the_package_adds_one_null_handler_so_nothing_is_printed_unless_asked():
    handlers = logging.getLogger(LOGGER_NAME).handlers
    assert [type(handler) for handler in handlers] == [logging.NullHandler]
    assert dcase_t6.__version__


def test_info_and_warning_reach_the_inner_reporter_and_the_logger(captured):
    logger, handler = captured
    inner = Recorder()
    reporter = LoggingReporter(inner, logger)
    reporter.info("precision fp16 needs a GPU")
    reporter.warning("left out 3 pairs")
    assert inner.messages == [("info", "precision fp16 needs a GPU"), ("warning", "left out 3 pairs")]
    assert handler.lines() == [("INFO", "precision fp16 needs a GPU"), ("WARNING", "left out 3 pairs")]


def test_a_task_logs_its_start_and_its_end_and_nothing_per_item(captured):
    logger, handler = captured
    inner = Recorder()
    with LoggingReporter(inner, logger).task("caching audio at 32000 Hz", total=1200) as task:
        for _ in range(1200):
            task.advance()
    assert inner.tasks[0]["completed"] == 1200
    assert len(handler.records) == 2
    assert handler.lines()[0] == ("INFO", "caching audio at 32000 Hz: started, 1,200 items")
    level, end = handler.lines()[1]
    assert level == "INFO"
    assert end.startswith("caching audio at 32000 Hz: done, 1,200/1,200 items in ")
    assert end.endswith(" items/s)") and " s (" in end


def test_bytes_unknown_totals_and_restarts_are_counted(captured):
    logger, handler = captured
    reporter = LoggingReporter(SILENT, logger)
    with reporter.task("downloading clotho_audio_development.7z", total=None, unit=BYTES) as task:
        task.restart(3_000_000, completed=1_000_000)
        task.advance(2_000_000)
    with reporter.task("reading clips", total=None) as task:
        task.advance(5)
    lines = [text for _, text in handler.lines()]
    assert lines[0] == "downloading clotho_audio_development.7z: started, total unknown"
    assert lines[1].startswith("downloading clotho_audio_development.7z: done, 3.0 MB/3.0 MB in ")
    assert lines[1].endswith("/s)")
    assert lines[2] == "reading clips: started, total unknown"
    assert lines[3].startswith("reading clips: done, 5 items in ")


def test_an_exception_inside_a_task_logs_where_it_stopped_then_propagates(captured):
    logger, handler = captured
    inner = Recorder()
    with pytest.raises(ValueError, match="bad clip"):
        with LoggingReporter(inner, logger).task("caching audio", total=1200) as task:
            task.advance(340)
            raise ValueError("bad clip")
    assert inner.tasks[0]["completed"] == 340
    assert handler.lines()[0] == ("INFO", "caching audio: started, 1,200 items")
    level, stopped = handler.lines()[1]
    assert level == "WARNING" and len(handler.records) == 2
    assert stopped.startswith("caching audio: stopped at 340/1,200 items after ")
    assert stopped.endswith(" s (ValueError)")


def test_describe_is_logged_at_most_every_n_seconds_and_its_last_text_ends_the_task(captured):
    logger, handler = captured
    with LoggingReporter(SILENT, logger).task("epoch 1/2", total=100) as task:  # every 60 s: none in this test
        for step in range(100):
            task.advance()
            task.describe(f"epoch 1/2 loss {1 / (step + 1):.4f}")
    assert len(handler.records) == 2
    assert handler.lines()[1][1].endswith("; last: epoch 1/2 loss 0.0100")
    handler.records.clear()
    with LoggingReporter(SILENT, logger, describe_every=0).task("epoch 2/2", total=3) as task:
        for step in range(3):
            task.advance()
            task.describe(f"epoch 2/2 loss {step}")
    assert [text for _, text in handler.lines()[1:4]] == [f"epoch 2/2: epoch 2/2 loss {step} ({step + 1}/3 items)"
                                                          for step in range(3)]
    handler.records.clear()
    with LoggingReporter(SILENT, logger, describe_every=None).task("epoch", total=1) as task:
        task.describe("never logged")
    assert len(handler.records) == 2


def test_for_rank_keeps_the_log_on_the_main_process_and_is_silent_elsewhere(captured):
    logger, handler = captured
    inner = Recorder()
    reporter = LoggingReporter(inner, logger)
    assert reporter.for_rank(True) is reporter
    other = reporter.for_rank(False)
    other.info("from rank 1")
    other.warning("from rank 1")
    with other.task("caching audio", total=2) as task:
        task.advance(2)
    assert handler.records == [] and inner.messages == [] and inner.tasks == []


def test_log_lines_carry_an_iso_time_and_the_level(captured):
    logger, handler = captured
    logger.info("hello")
    line = IsoFormatter().format(handler.records[0])
    assert LOG_LINE.match(line) and line.endswith(" INFO hello"), line
    assert line[10] == "T" and line[19] == "."


def test_check_log_file_accepts_new_empty_and_own_logs_and_refuses_the_rest(tmp_path):
    assert check_log_file(tmp_path / "new.log") == tmp_path / "new.log"
    (tmp_path / "empty.log").touch()
    check_log_file(tmp_path / "empty.log")
    (tmp_path / "own.log").write_text("2025-05-01T14:03:07.412+02:00 INFO command: dcase-t6 ...\n")
    check_log_file(tmp_path / "own.log")
    (tmp_path / "notes.txt").write_text("my notes\n2025-05-01T14:03:07 INFO\n")
    for path, fragment in [(tmp_path / "notes.txt", "not a dcase-t6 log"), (tmp_path, "a folder"),
                           (tmp_path / "absent" / "x.log", "does not exist")]:
        with pytest.raises(UserError, match=fragment):
            check_log_file(path)


# --- the CLI -----------------------------------------------------------------------------------------------------


def evaluation_files(folder):
    """Predictions for q1 only and a relevance file asking q1 and q2: evaluate --allow-missing warns that q2 is
    skipped."""
    predictions = folder / "predictions.csv"
    write_csv(SimilarityMatrix(["q1"], ["a.wav", "b.wav"], np.array([[0.9, 0.1]])), predictions)
    relevance = folder / "relevance.csv"
    pd.DataFrame({"query": ["q1", "q2"], "audio_filenames": [repr(["a.wav"]), repr(["b.wav"])]}).to_csv(
        relevance, index=False)
    return predictions, relevance


def test_log_file_is_appended_by_each_command_with_its_command_line_lines_and_end(tmp_path):
    work, root, log = tmp_path / "work", tmp_path / "data", tmp_path / "job.log"
    synthetic = ["prepare", "synthetic", "--root", root, "--train", 3, "--val", 2, "--test", 2, "--min-duration", 2,
                 "--max-duration", 2]
    cli(work, "--log-file", log, *synthetic)
    first = log.read_bytes()
    cli(work, "--log-file", log, "prepare", "cache", "--root", root, "--rate", 16000, "--workers", 1)
    predictions, relevance = evaluation_files(tmp_path)
    output = cli(work, "--log-file", log, "evaluate", "-p", predictions, "-r", relevance, "--allow-missing")
    assert "warning: skipped 1 ground-truth queries" in output  # the console still shows it
    refusal = cli_error(work, "--log-file", log, *synthetic[:-4], "--min-duration", 1, "--max-duration", 1)

    text = log.read_text(encoding="utf-8")
    assert log.read_bytes().startswith(first)  # appended, never truncated
    lines = text.splitlines()
    assert all(LOG_LINE.match(line) for line in lines), text
    assert "\x1b" not in text and not set(BAR_CHARACTERS) & set(text)
    messages = [line.split(" ", 2)[1:] for line in lines]
    commands = [message for level, message in messages if message.startswith("command: ")]
    assert [command.split(" (dcase-t6 ")[0] for command in commands] == [
        f"command: dcase-t6 --workdir {work} --log-file {log} prepare synthetic --root {root} --train 3 --val 2 "
        "--test 2 --min-duration 2 --max-duration 2",
        f"command: dcase-t6 --workdir {work} --log-file {log} prepare cache --root {root} --rate 16000 --workers 1",
        f"command: dcase-t6 --workdir {work} --log-file {log} evaluate -p {predictions} -r {relevance} "
        "--allow-missing",
        f"command: dcase-t6 --workdir {work} --log-file {log} prepare synthetic --root {root} --train 3 --val 2 "
        "--test 2 --min-duration 1 --max-duration 1"]
    assert ["INFO", "synthesising clips: started, 7 items"] in messages
    assert any(level == "INFO" and message.startswith("synthesising clips: done, 7/7 items in ")
               for level, message in messages)
    assert any(level == "INFO" and message.startswith("caching audio at 16000 Hz: done, 7/7 items in ")
               for level, message in messages)
    assert any(level == "INFO" and "7 clip(s) to cache need about" in message for level, message in messages)
    assert ["WARNING", "skipped 1 ground-truth queries missing from the predictions"] in messages
    assert ["ERROR", refusal] in messages  # the one-line refusal, as printed
    ends = [(level, message.split(" after ")[0]) for level, message in messages if message.startswith("exit")]
    assert ends == [("INFO", "exit: ok")] * 3 + [("ERROR", "exit 2")]
    assert messages[-1][1].startswith("exit 2 after ")
    assert len(logging.getLogger(LOGGER_NAME).handlers) == 1  # the file handler is gone after each command


def test_the_environment_variable_names_the_log_file(tmp_path, monkeypatch):
    log = tmp_path / "env.log"
    predictions, relevance = evaluation_files(tmp_path)
    monkeypatch.setenv("DCASE_T6_LOG_FILE", str(log))
    cli(tmp_path / "work", "evaluate", "-p", predictions, "-r", relevance, "--allow-missing")
    assert "evaluate -p" in log.read_text(encoding="utf-8")


def test_a_log_file_that_is_an_input_a_folder_or_in_no_folder_is_refused_untouched(tmp_path):
    predictions, relevance = evaluation_files(tmp_path)
    before = relevance.read_bytes(), predictions.read_bytes()
    evaluate = ["evaluate", "-p", predictions, "-r", relevance, "--allow-missing"]
    assert "not a dcase-t6 log" in cli_error(tmp_path / "work", "--log-file", relevance, *evaluate)
    assert "not a dcase-t6 log" in cli_error(tmp_path / "work", "--log-file", predictions, *evaluate)
    assert (relevance.read_bytes(), predictions.read_bytes()) == before
    assert "a folder" in cli_error(tmp_path / "work", "--log-file", tmp_path, *evaluate)
    absent = tmp_path / "logs" / "job.log"
    assert "does not exist" in cli_error(tmp_path / "work", "--log-file", absent, *evaluate)
    assert not absent.parent.exists()


def test_without_log_file_nothing_is_logged_and_the_reporter_is_the_rich_one(tmp_path):
    from dcase_t6.cli.console import reporter

    predictions, relevance = evaluation_files(tmp_path)
    result = CliRunner().invoke(main, ["--workdir", str(tmp_path / "work"), "evaluate", "-p", str(predictions),
                                       "-r", str(relevance), "--allow-missing"])
    assert result.exit_code == 0, result.output
    assert reporter.current is reporter.rich
    assert list(tmp_path.glob("*.log")) == []


def test_only_the_main_process_of_a_torchrun_job_writes_but_every_process_checks(tmp_path, monkeypatch):
    predictions, relevance = evaluation_files(tmp_path)
    evaluate = ["evaluate", "-p", predictions, "-r", relevance, "--allow-missing"]
    monkeypatch.setenv("RANK", "1")
    cli(tmp_path / "work", "--log-file", tmp_path / "job.log", *evaluate)
    assert not (tmp_path / "job.log").exists()
    assert "not a dcase-t6 log" in cli_error(tmp_path / "work", "--log-file", relevance, *evaluate)
    monkeypatch.setenv("RANK", "0")
    cli(tmp_path / "work", "--log-file", tmp_path / "job.log", *evaluate)
    assert "exit: ok" in (tmp_path / "job.log").read_text(encoding="utf-8")
