"""``python -m jobs.tune`` as a real process: fatal errors as one line and their exit code, the data folder,
progress on a terminal, and one export per search however often it is rerun."""

from __future__ import annotations

import json
import re
from pathlib import Path

import modelrepo
from jobs.errors import EXIT_DATA, EXIT_SEARCH
from tests.support.jobs import (
    failing_trials_env,
    job_command,
    job_env,
    run_in_terminal,
    run_job,
    tiny_config,
    write_config,
)


def _error_lines(stderr: str) -> list[str]:
    """The job's own ERROR log lines (TensorFlow's C++ log has another format)."""
    return re.findall(r"^\d{4}-\d\d-\d\d [\d:,]+ ERROR .*$", stderr, re.M)


def test_a_search_whose_every_trial_fails_exits_4_with_one_line(tmp_path: Path, synthetic_dir: Path) -> None:
    # More failures allowed in a row than there are trials: the search ends normally with nothing scored,
    # and the final step raises "no trial completed" (the error an import cycle once turned into exit 1).
    config = tiny_config(
        tmp_path / "out",
        synthetic_dir,
        tuner={"max_trials": 2, "max_consecutive_failed_trials": 5},
        runtime={"tensorboard": False},
    )
    result = run_job(
        job_command(write_config(tmp_path / "job.yaml", config)), failing_trials_env(tmp_path / "s")
    )
    assert result.returncode == EXIT_SEARCH, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and errors[0].endswith("search failed: no trial completed: nothing to export")
    assert result.stderr.count("injected trial failure") == 2  # each failed trial logged as a warning
    assert not (tmp_path / "out" / "models").exists()


def test_a_data_folder_that_is_given_but_missing_exits_3_naming_it(
    tmp_path: Path, synthetic_dir: Path
) -> None:
    config_file = write_config(tmp_path / "job.yaml", tiny_config(tmp_path / "out", synthetic_dir))
    missing = tmp_path / "no-such-mnist"
    by_flag = run_job(job_command(config_file, "--data-dir", str(missing)))
    by_env = run_job(job_command(config_file), job_env(MNIST_DATA_DIR=str(missing)))  # env beats the file
    for result in (by_flag, by_env):
        assert result.returncode == EXIT_DATA, result.stderr[-3000:]
        errors = _error_lines(result.stderr)
        assert len(errors) == 1 and f"data error: {missing}: no such data directory" in errors[0]
        assert "download" not in result.stderr.replace("to download MNIST through Keras", "")
        assert "devices:" not in result.stderr  # failed before TensorFlow was set up


def test_progress_on_a_terminal_and_one_export_per_search(tmp_path: Path, synthetic_dir: Path) -> None:
    output = tmp_path / "out"
    config_file = write_config(
        tmp_path / "job.yaml",
        tiny_config(
            output,
            synthetic_dir,
            tuner={"max_trials": 1},
            final={"mode": "retrain", "epochs": 3},  # 3 epochs: only the final fit has an "Epoch 3/3"
            runtime={"tensorboard": False},
        ),
    )
    # 1. On a terminal: Keras' progress bar for the trial and the 40-epoch-like final fit.
    code, screen = run_in_terminal(job_command(config_file), job_env())
    assert code == 0, screen[-3000:]
    assert re.search(r"Epoch 3/3\s.*━", screen, re.S), screen[-3000:]  # the final fit's bar
    assert "final fit epoch" not in screen  # no duplicate log lines beside the bar
    assert modelrepo.list_versions(output / "models", "mnist") == [1]
    record = json.loads((output / "tuner" / "export.json").read_text())
    assert (record["model_name"], record["version"]) == ("mnist", 1)

    # 2. The same command again (a retried pod): finds its version, publishes nothing, loads no TensorFlow.
    again = run_job(job_command(config_file))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "this search already exported mnist version 1" in again.stderr
    assert "devices:" not in again.stderr and "final fit" not in again.stderr
    assert modelrepo.list_versions(output / "models", "mnist") == [1]

    # 3. Asked to export again: a new version from the same search (not searched again); log lines, no bar.
    forced = run_job(job_command(config_file, "--export-again"))
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "--export-again: publishing a new version" in forced.stderr
    assert re.search(r"final fit epoch 3/3 .*elapsed", forced.stderr)
    assert "━" not in forced.stdout + forced.stderr
    assert "trial 0:" not in forced.stderr  # the finished search did not run again
    assert modelrepo.list_versions(output / "models", "mnist") == [1, 2]

    # 4. And the next rerun finds that newer version.
    last = run_job(job_command(config_file))
    assert last.returncode == 0 and "already exported mnist version 2" in last.stderr, last.stderr[-3000:]
    assert modelrepo.list_versions(output / "models", "mnist") == [1, 2]

    # 5. TUNE_EXPORT_AGAIN=1 (how compose asks for it) does what the flag does; a bad value is a config error.
    by_env = run_job(job_command(config_file), {**job_env(), "TUNE_EXPORT_AGAIN": "1"})
    assert by_env.returncode == 0, by_env.stderr[-3000:]
    assert modelrepo.list_versions(output / "models", "mnist") == [1, 2, 3]
    bad = run_job(job_command(config_file), {**job_env(), "TUNE_EXPORT_AGAIN": "maybe"})
    assert bad.returncode == 2 and "TUNE_EXPORT_AGAIN" in bad.stderr, bad.stderr[-3000:]
    assert modelrepo.list_versions(output / "models", "mnist") == [1, 2, 3]


def test_an_export_record_whose_version_is_gone_does_not_count(tmp_path: Path, caplog) -> None:
    from jobs.config import load_config
    from jobs.runtime import output_paths, read_export_record, write_export_record

    paths = output_paths(load_config("smoke", environ={"TUNE_OUTPUT": str(tmp_path)}))
    assert read_export_record(paths) is None  # a search that never exported
    version = tmp_path / "models" / "mnist" / "3"
    version.mkdir(parents=True)
    write_export_record(paths, "mnist", 3, version)
    assert read_export_record(paths).version == 3
    version.rmdir()  # an operator deleted the published version: the next run exports anew
    assert read_export_record(paths) is None
    assert "which is gone: exporting again" in caplog.text
    paths.export_record.write_text("{half")
    assert read_export_record(paths) is None and "ignoring unreadable" in caplog.text
