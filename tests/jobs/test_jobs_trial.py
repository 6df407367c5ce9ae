"""jobs.trial's parameters: flags over TRIAL_* variables, each checked against the preset's search space
(named on failure), and the model built by the search's own hypermodel."""

from __future__ import annotations

import pytest

from jobs.config import load_config
from jobs.errors import ConfigError
from jobs.trial import fixed_hyperparameters, parse_settings, trial_model

SEED_VALUES = {"num_layers": 2, "units_0": 64, "units_1": 96, "learning_rate": 0.003, "batch_size": 64}


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAL_TRIAL_DIR", "/tmp/trial-a")
    monkeypatch.setenv("TRIAL_LEARNING_RATE", "0.002")
    monkeypatch.setenv("TRIAL_UNITS_3", "128")
    from_env = parse_settings([])
    assert (str(from_env.trial_dir), from_env.learning_rate, from_env.units_3) == ("/tmp/trial-a", 0.002, 128)
    flags = parse_settings(["--learning-rate=0.004", "--batch-size", "32"])
    assert (flags.learning_rate, flags.batch_size) == (0.004, 32)
    assert flags.hyperparameters() == {"batch_size": 32, "learning_rate": 0.004, "units_3": 128}


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--dropout=1.5"], "dropout"),
        (["--num-layers=0"], "num_layers"),
        (["--batch-size=big"], "batch_size"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_field(argv: list[str], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        parse_settings(["--trial-dir=/tmp/t", *argv])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"learning_rate": None}, r"learning_rate .* is missing: the space searches it \(0.0001..0.01\)"),
        ({"learning_rate": 0.5}, r"learning_rate .* = 0.5 is outside the space"),
        ({"units_1": 100}, r"units_1 .* = 100 is outside the space \(32..512 step 32\)"),
        ({"batch_size": 256}, r"batch_size .*one of \[32, 64, 128\]"),
        ({"dropout": 0.2}, r"dropout .*fixed at 0.0"),
        ({"rotation_degrees": 5.0}, r"rotation_degrees .* no such hyperparameter"),
    ],
)
def test_values_must_lie_in_the_presets_space(change: dict, message: str) -> None:
    config = load_config("seed", None, {}, {})
    values = {k: v for k, v in {**SEED_VALUES, **change}.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        fixed_hyperparameters(config, values)


def test_units_of_layers_past_num_layers_are_ignored() -> None:
    config = load_config("seed", None, {}, {})
    _, used = fixed_hyperparameters(config, {**SEED_VALUES, "units_2": 512, "units_4": 32})
    assert {k for k in used if k.startswith("units_")} == {"units_0", "units_1"}


def test_the_trial_model_is_the_search_model() -> None:
    """No second copy: the trial's model is what MlpHyperModel builds for the same values in a search."""
    import keras_tuner as kt

    from jobs.search_space import MlpHyperModel

    config = load_config("seed", None, {}, {})
    model, _, _, used = trial_model(config, SEED_VALUES, 1000)
    hp = kt.HyperParameters()
    hp.values.update(SEED_VALUES)
    hypermodel = MlpHyperModel(config.space, 1000, config.trial_epochs())
    for name, value in hypermodel.declare(hp).items():
        hp.values[name] = value
    reference = hypermodel.build(hp)

    def structure(built):
        return [(type(layer).__name__, layer.count_params()) for layer in built.layers]

    assert structure(model) == structure(reference)
    assert float(model.optimizer.learning_rate) == pytest.approx(SEED_VALUES["learning_rate"])
    assert used["dropout"] == 0.0 and used["lr_schedule"] == "constant"
