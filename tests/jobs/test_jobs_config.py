"""Config validation, presets and the precedence preset < file < env < CLI (no TensorFlow needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobs import config as cfg
from jobs.config import ConfigError, FloatRange, IntRange, load_config
from jobs.errors import EXIT_CODES
from tests.support import REPO


@pytest.mark.parametrize("preset", cfg.PRESETS)
def test_presets_are_valid(preset: str) -> None:
    config = load_config(preset, environ={})
    assert config.preset == preset


def test_seed_preset_is_the_reference_study() -> None:
    config = load_config("seed", environ={})
    assert config.tuner.kind == "random"
    assert (config.tuner.max_trials, config.search.epochs) == (10, 10)
    assert config.space.num_layers == IntRange(min=2, max=5, step=1)
    assert config.space.units == IntRange(min=32, max=512, step=32)
    assert config.space.learning_rate == FloatRange(min=1e-4, max=1e-2, sampling="log")
    assert config.space.batch_size == [32, 64, 128]
    assert config.space.dropout == 0.0 and config.space.translate_pixels == 0
    assert config.space.lr_schedule == "constant"
    assert config.search.early_stopping_patience is None and config.search.train_subset is None
    assert config.final.mode == "best_trial" and config.tuner.objective == "val_accuracy"
    assert config.runtime.jit_compile == "auto"  # Keras' own choice, as the study ran: no XLA on a CPU


@pytest.mark.parametrize(
    ("override", "field", "allowed"),
    [
        ({"tuner": {"kind": "grid"}}, "tuner.kind", "'random', 'hyperband' or 'bayesian'"),
        ({"space": {"units": {"min": 64, "max": 32}}}, "space.units", "must not exceed max"),
        ({"space": {"dropout": 1.5}}, "space.dropout", "less than 1"),
        ({"space": {"dropout": {"min": 0.0, "max": 1.2}}}, "space.dropout", "within [0, 1)"),
        (
            {"space": {"learning_rate": {"min": 0.0, "max": 0.1, "sampling": "log"}}},
            "space.learning_rate",
            "min > 0",
        ),
        ({"space": {"batch_size": []}}, "space.batch_size", "at least 1 item"),
        ({"space": {"lr_schedule": ["cosine", "linear"]}}, "space.lr_schedule", "'constant' or 'cosine'"),
        ({"space": {"translate_pixels": [0, 20]}}, "space.translate_pixels", "between 0 and 13"),
        ({"space": {"rotation_degrees": 60}}, "space.rotation_degrees", "less than or equal to 45"),
        ({"space": {"zoom": 1.0}}, "space.zoom", "less than 1"),
        ({"space": {"elastic_pixels": -1}}, "space.elastic_pixels", "greater than or equal to 0"),
        ({"space": {"elastic_grid": 1}}, "space.elastic_grid", "greater than or equal to 2"),
        ({"space": {"ema_momentum": {"min": 0.9, "max": 1.0}}}, "space.ema_momentum", "within [0, 1)"),
        ({"search": {"epochs": 0}}, "search.epochs", "greater than or equal to 1"),
        ({"search": {"epochs": "ten"}}, "search.epochs", "valid integer"),
        ({"search": {"train_subset": 59001}}, "train_subset", "exceeds the training split"),
        ({"final": {"mode": "average"}}, "final.mode", "'retrain' or 'best_trial'"),
        ({"final": {"epochs": "bestest"}}, "final.epochs", "'best' or a positive integer"),
        ({"tuner": {"factor": 1}}, "tuner.factor", "greater than or equal to 2"),
        ({"tuner": {"executions_per_trial": 2}}, "tuner.executions_per_trial", "Input should be 1"),
        ({"output": {"model_name": "a/b"}}, "output.model_name", "not a valid folder name"),
        ({"space": {"unit": 3}}, "space.unit", "allowed: num_layers, units"),
        ({"tunr": {}}, "tunr", "allowed: preset, seed, tuner"),
        ({"runtime": {"jit_compile": "always"}}, "runtime.jit_compile", "'auto'"),
    ],
)
def test_bad_field_is_named_with_allowed_values(override: dict, field: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("smoke", environ={}, cli=override)
    message = str(caught.value)
    assert field in message and allowed in message


def test_fixed_choices_and_ranges_are_accepted() -> None:
    config = load_config(
        "smoke",
        environ={},
        cli={"space": {"num_layers": 3, "units": [128, 256], "dropout": {"min": 0.0, "max": 0.3}}},
    )
    assert config.space.num_layers == 3
    assert config.space.units == [128, 256]
    assert config.space.dropout == FloatRange(min=0.0, max=0.3)


def test_precedence_preset_file_env_cli(tmp_path: Path) -> None:
    file = tmp_path / "job.yaml"
    file.write_text("tuner: {max_trials: 5, max_epochs: 4}\nsearch: {epochs: 6}\nseed: 11\n")
    env = {"TUNE_TUNER__MAX_TRIALS": "7", "TUNE_SEARCH__EPOCHS": "8", "TUNE_OUTPUT": "/tmp/from-env"}
    config = load_config("smoke", file, env, cli={"search": {"epochs": 9}})
    assert config.seed == 11  # file over preset
    assert config.tuner.max_epochs == 4  # file
    assert config.tuner.max_trials == 7  # env over file
    assert config.search.epochs == 9  # CLI over env
    assert config.output.dir == "/tmp/from-env"
    assert config.tuner.kind == "random"  # untouched preset value
    assert config.space.units == IntRange(min=16, max=64, step=16)


def test_env_names_preset_config_and_data_dir(tmp_path: Path) -> None:
    file = tmp_path / "job.yaml"
    file.write_text("search: {epochs: 3}\n")
    env = {
        "TUNE_PRESET": "seed",
        "TUNE_CONFIG": str(file),
        "MNIST_DATA_DIR": "/data/mnist",
        "TUNE_DATA_CACHE": "/cache",
        "TUNE_PUSHGATEWAY": "pgw:9091",
        "TUNE_SPACE__TRANSLATE_PIXELS": "[0, 2]",
    }
    config = load_config(environ=env)
    assert config.preset == "seed" and config.search.epochs == 3
    assert (config.data.dir, config.data.cache_dir) == ("/data/mnist", "/cache")
    assert config.runtime.pushgateway == "pgw:9091"
    assert config.space.translate_pixels == [0, 2]


def test_unknown_env_section_is_rejected() -> None:
    with pytest.raises(ConfigError, match="TUNE_SPCE__UNITS.*SECTION one of"):
        load_config("smoke", environ={"TUNE_SPCE__UNITS": "3"})


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("smoke", tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("tuner: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("smoke", bad, environ={})
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config("smoke", listed, environ={})
    with pytest.raises(ConfigError, match="preset: 'fast' is not one of seed, default, smoke"):
        load_config("fast", environ={})


def _run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    code = (
        "import sys; from jobs.tune import main; rc = main(sys.argv[1:]); "
        "print('TF_IMPORTED' if 'tensorflow' in sys.modules else 'NO_TF'); sys.exit(rc)"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_cli_bad_config_exits_2_before_importing_tensorflow() -> None:
    result = _run_cli(["--preset", "smoke", "--set", "space.dropout=2"], {"TUNE_TUNER__KIND": "grid"})
    assert result.returncode == 2
    assert "NO_TF" in result.stdout
    assert "tuner.kind" in result.stderr and "'random', 'hyperband' or 'bayesian'" in result.stderr
    assert "space.dropout" in result.stderr


def test_cli_print_config_applies_flags() -> None:
    result = _run_cli(["--preset", "seed", "--max-trials", "3", "--final-epochs", "12", "--print-config"])
    assert result.returncode == 0, result.stderr
    assert "max_trials: 3" in result.stdout and "epochs: 12" in result.stdout
    assert "NO_TF" in result.stdout


def test_cli_help_documents_exit_codes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jobs.tune", "--help"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "TUNE_<SECTION>__<FIELD>" in text and "--export-again" in text
    for row in EXIT_CODES:  # the table of jobs/errors.py, every row
        assert f"{row.code} {row.meaning}" in text


def test_environment_values_are_yaml_and_empty_fixed_variables_mean_unset() -> None:
    env = {
        "TUNE_FINAL__EPOCHS": "12",
        "TUNE_SEARCH__TRAIN_SUBSET": "null",
        "TUNE_SPACE__UNITS": "{min: 16, max: 32}",  # merged key by key into the preset's range
        "TUNE_SEED": "5",
        "TUNE_PUSHGATEWAY": "",  # compose passes it empty: no metrics
        "TUNE_OUTPUT": "runs/x",
    }
    config = load_config("smoke", environ=env)
    assert config.final.epochs == 12 and config.search.train_subset is None and config.seed == 5
    assert config.space.units == IntRange(min=16, max=32, step=16)
    assert config.runtime.pushgateway is None and config.output.dir == "runs/x"
    assert load_config("smoke", environ={"TUNE_FINAL__EPOCHS": "best"}).final.epochs == "best"
    with pytest.raises(ConfigError, match="TUNE_SPACE__UNITS: value '{min: \\[}' is not valid YAML"):
        load_config("smoke", environ={"TUNE_SPACE__UNITS": "{min: [}"})


def test_set_flags_and_named_flags_override_the_environment() -> None:
    env = {"TUNE_SEARCH__EPOCHS": "8", "TUNE_TUNER__MAX_TRIALS": "7"}
    config = load_config(
        "smoke",
        environ=env,
        set_flags=["search.epochs=5", "space.units={min: 32, max: 64}", "tuner.max_trials=4"],
        flags={"search.epochs": 9, "output.dir": "123"},  # a named flag's text stays text
    )
    assert (config.search.epochs, config.tuner.max_trials, config.output.dir) == (9, 4, "123")
    assert config.space.units == IntRange(min=32, max=64, step=16)
    with pytest.raises(ConfigError, match="--set 'space': expected SECTION.FIELD=VALUE"):
        load_config("smoke", environ={}, set_flags=["space"])


def test_the_run_variables_are_read_by_pydantic_settings() -> None:
    assert cfg.job_environment({}).export_again is False
    assert cfg.job_environment({"TUNE_EXPORT_AGAIN": ""}).export_again is False  # compose's empty default
    assert cfg.job_environment({"TUNE_EXPORT_AGAIN": "1", "TUNE_PRESET": "seed"}).export_again is True
    assert load_config(environ={"TUNE_PRESET": "seed"}).preset == "seed"
    with pytest.raises(ConfigError, match="TUNE_EXPORT_AGAIN: Input should be a valid boolean"):
        cfg.job_environment({"TUNE_EXPORT_AGAIN": "maybe"})
