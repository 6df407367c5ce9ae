"""k8s/katib: the Experiment renders, passes Katib's OpenAPI types strictly and its webhook rules, its
trial template is a strict batch/v1 Job and searches the `seed` preset's space; trials run for real as
Katib's StdOut collector runs them, their log yields the objective for every epoch, and the best of two
is promoted into the model repository, which a started service answers with."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
import numpy as np
import pytest
import yaml

import modelrepo
from jobs.config import FloatRange, IntRange, load_config
from jobs.errors import EXIT_CONFIG, FAIL_JOB_CODES
from tests.support import REPO
from tests.support.crds import katib_validator, schema_errors
from tests.support.katib_tools import (
    DEFAULT_FILTER,
    METRICS_FILE,
    ZERO_TIME,
    parse_metrics,
    stdout_collector_script,
    substitute,
    webhook_errors,
)
from tests.support.tools import require_tools

KATIB = REPO / "k8s" / "katib"
VERSIONS = ("1.30.0", "1.37.0")


@pytest.fixture(scope="module")
def experiment() -> dict:
    require_tools("kubectl")
    out = subprocess.run(
        ["kubectl", "kustomize", str(KATIB)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    (doc,) = [d for d in yaml.safe_load_all(out) if d]
    assert doc["kind"] == "Experiment"
    return doc


def errors_of(doc: dict) -> list[str]:
    """The types first: the webhook cannot decode an Experiment its Go types refuse."""
    return schema_errors(katib_validator(), doc) or webhook_errors(doc)


def test_experiment_passes_types_and_webhook(experiment) -> None:
    assert errors_of(experiment) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_a_trial_is_a_strict_batch_job(experiment, version: str) -> None:
    job = substitute(experiment, _assignment(experiment), "mnist-seed-a1b2c3d4")
    kubernetes_validate.validate(job, version, strict=True)
    assert job["spec"]["backoffLimit"] == 0  # katib#849: a retried pod confuses the collector


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def apply(doc: dict) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        key = int(last) if last.isdigit() else last
        if value is _DELETE:
            del node[key]
        elif isinstance(key, int) and key == len(node):
            node.append(value)
        else:
            node[key] = value

    return apply


_DELETE = object()
_TRIAL = "spec.trialTemplate"
_POD = f"{_TRIAL}.trialSpec.spec.template.spec"
BROKEN = {
    "unknown field": (_set("spec.objective.goalValue", 0.99), "goalValue"),
    "wrong type": (_set("spec.maxTrialCount", "ten"), "maxTrialCount"),
    "name too long": (_set("metadata.name", "mnist-seed-" + "x" * 30), "40 characters"),
    "name pattern": (_set("metadata.name", "9mnist"), "metadata.name"),
    "no trials": (_set("spec.maxTrialCount", 0), "maxTrialCount"),
    "parallel above max": (_set("spec.parallelTrialCount", 11), "parallelTrialCount"),
    "failed above max": (_set("spec.maxFailedTrialCount", 11), "maxFailedTrialCount"),
    "negative failed": (_set("spec.maxFailedTrialCount", -1), "maxFailedTrialCount"),
    "objective type": (_set("spec.objective.type", "max"), "objective.type"),
    "objective twice": (
        _set("spec.objective.additionalMetricNames.1", "val_accuracy"),
        "additionalMetricNames",
    ),
    "algorithm": (_set("spec.algorithm.algorithmName", "bayesian"), "algorithmName"),
    "parameter type": (_set("spec.parameters.0.parameterType", "integer"), "parameterType"),
    "distribution": (_set("spec.parameters.6.feasibleSpace.distribution", "log"), "distribution"),
    "list for an int": (_set("spec.parameters.0.feasibleSpace.list", ["2", "3"]), "list"),
    "min for a categorical": (_set("spec.parameters.7.feasibleSpace.min", "32"), "categorical"),
    "undeclared placeholder": (
        _set(f"{_POD}.containers.0.args.10", "--dropout=${trialParameters.dropout}"),
        "dropout",
    ),
    "declared, unused": (
        _set(f"{_TRIAL}.trialParameters.8", {"name": "trialName", "reference": "${trialSpec.Name}"}),
        "trialName",
    ),
    "reference not a parameter": (_set(f"{_TRIAL}.trialParameters.0.reference", "layers"), "layers"),
    "reference twice": (_set(f"{_TRIAL}.trialParameters.1.reference", "num_layers"), "duplicated"),
    "primary container": (_set(f"{_TRIAL}.primaryContainerName", "training"), "primary container"),
    "no conditions": (_set(f"{_TRIAL}.successCondition", _DELETE), "successCondition"),
    "named template": (_set(f"{_TRIAL}.trialSpec.metadata", {"name": "fixed"}), "metadata.name"),
    "not a Job": (_set(f"{_TRIAL}.trialSpec.spec.backofLimit", 0), "batch/v1 Job"),
    "bad Job field type": (_set(f"{_POD}.restartPolicy", 3), "batch/v1 Job"),
    "collector kind": (_set("spec.metricsCollectorSpec.collector.kind", "Stdout"), "collector.kind"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_copy_fails(experiment, case: str) -> None:
    mutate, fragment = BROKEN[case]
    broken = copy.deepcopy(experiment)
    mutate(broken)
    errors = errors_of(broken)
    assert errors, f"{case}: the broken copy passed"
    assert any(fragment in error for error in errors), errors


def test_search_space_and_budget_are_the_seed_presets(experiment) -> None:
    config = load_config("seed", None, {}, {})
    spec = experiment["spec"]
    params = {p["name"]: p for p in spec["parameters"]}
    space = config.space
    assert isinstance(space.num_layers, IntRange) and isinstance(space.units, IntRange)
    layers = params.pop("num_layers")["feasibleSpace"]
    assert (int(layers["min"]), int(layers["max"])) == (space.num_layers.min, space.num_layers.max)
    for i in range(space.num_layers.max):
        units = params.pop(f"units_{i}")["feasibleSpace"]
        assert (int(units["min"]), int(units["max"]), int(units["step"])) == (
            space.units.min,
            space.units.max,
            space.units.step,
        )
    rate = params.pop("learning_rate")
    assert isinstance(space.learning_rate, FloatRange) and space.learning_rate.sampling == "log"
    feasible = rate["feasibleSpace"]
    assert (float(feasible["min"]), float(feasible["max"])) == (
        space.learning_rate.min,
        space.learning_rate.max,
    )
    assert feasible["distribution"] == "logUniform" and rate["parameterType"] == "double"
    assert [int(v) for v in params.pop("batch_size")["feasibleSpace"]["list"]] == space.batch_size
    assert params == {}  # nothing else is searched (seed fixes the rest)
    assert spec["maxTrialCount"] == config.tuner.max_trials
    assert spec["maxFailedTrialCount"] == config.tuner.max_consecutive_failed_trials
    assert spec["algorithm"]["algorithmName"] == config.tuner.kind == "random"
    objective = spec["objective"]
    assert (objective["type"], objective["objectiveMetricName"]) == ("maximize", config.tuner.objective)
    assert {m["name"]: m["value"] for m in objective["metricStrategies"]} == {
        "val_accuracy": "max",
        "val_loss": "min",
    }
    container = spec["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    assert "--preset=seed" in container["args"]


def test_trials_run_on_the_tune_jobs_claim_and_gpu(experiment) -> None:
    tune = [d for d in yaml.safe_load_all((REPO / "k8s" / "tune-job.yaml").read_text()) if d]
    job = next(d for d in tune if d["kind"] == "Job")["spec"]["template"]["spec"]
    pod = experiment["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].split("/")[-1].startswith("mnist-tune:")
    assert container["command"] == ["python", "-m", "jobs.trial"]
    assert container["resources"] == job["containers"][0]["resources"]
    assert pod["nodeSelector"] == job["nodeSelector"] and pod["tolerations"] == job["tolerations"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {
        v["persistentVolumeClaim"]["claimName"] for v in job["volumes"] if "persistentVolumeClaim" in v
    }
    trial_dir = next(a for a in container["args"] if a.startswith("--trial-dir="))
    assert trial_dir == f"--trial-dir=/workspace/katib/{experiment['metadata']['name']}/${{trialSpec.Name}}"
    # Katib joins the words with spaces into sh -c: none may hold a space or a shell character.
    assert all(
        " " not in word and not set(word) & set(";&|<>'\"`")
        for word in container["command"] + container["args"]
    )


def test_promote_job_reads_the_trials_and_writes_the_served_repository(experiment) -> None:
    documents = [d for d in yaml.safe_load_all((KATIB / "promote-job.yaml").read_text()) if d]
    (job,) = documents
    for version in VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"])
    assert args["trials-dir"] == f"/workspace/katib/{experiment['metadata']['name']}"
    serve = yaml.safe_load((REPO / "k8s" / "serve-deployment.yaml").read_text())["spec"]["template"]["spec"]
    model_root = next(e["value"] for e in serve["containers"][0]["env"] if e["name"] == "DIGITS_MODEL_ROOT")
    assert f"{args['output']}/models" == model_root
    (rule,) = [r for r in job["spec"]["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert tuple(rule["onExitCodes"]["values"]) == FAIL_JOB_CODES


# --- trials as Katib runs them ------------------------------------------------------------------------


def _assignment(experiment: dict, **values: str) -> dict[str, str]:
    """A Suggestion's assignment: every parameter's minimum (or first choice), overridden by ``values``."""
    result = {}
    for parameter in experiment["spec"]["parameters"]:
        space = parameter["feasibleSpace"]
        result[parameter["name"]] = space["list"][0] if "list" in space else space["min"]
    return {**result, **values}


@pytest.fixture(scope="module")
def katib_run(experiment, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two trials of the Experiment, each its Job's container run as Katib's StdOut collector runs it:
    ``sh -c "<command> <args> 1>/var/log/katib/metrics.log 2>&1 && echo completed > ..."``.

    Where this differs from the pod, in one place (REDIRECT): the claim's /workspace and Katib's
    /var/log/katib are folders under a temporary directory, ``python`` is this virtualenv's, and the
    environment shrinks the seed preset's data and epochs for a test (small synthetic digits, 2 epochs).
    """
    from tests.support.mnist import synthetic_arrays, write_idx

    root = tmp_path_factory.mktemp("katib")
    data = root / "digits"
    write_idx(data, synthetic_arrays(2400, 300, seed=5), compress=True)
    redirect = {"/var/log/katib": str(root / "var-log-katib"), "/workspace": str(root / "claim")}
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("TUNE_", "MNIST_", "TRIAL_"))
    }
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(REPO),
        TF_CPP_MIN_LOG_LEVEL="2",
        MNIST_DATA_DIR=str(data),
        TUNE_DATA__VALIDATION_SIZE="400",
        TUNE_SEARCH__EPOCHS="2",
    )
    trials = {
        # A good and a poor learning rate for two epochs: the first must win.
        "mnist-seed-good0001": _assignment(experiment, num_layers="2", units_0="64", learning_rate="0.005"),
        "mnist-seed-poor0002": _assignment(experiment, num_layers="2", units_0="64", learning_rate="0.0001"),
    }
    runs = {}
    for name, assignment in trials.items():
        job = substitute(experiment, assignment, name)
        (container,) = job["spec"]["template"]["spec"]["containers"]
        script = stdout_collector_script(container)
        for path, local in redirect.items():
            script = script.replace(path, local)
        log_dir = Path(redirect["/var/log/katib"])
        log_dir.mkdir(parents=True, exist_ok=True)
        for old in log_dir.iterdir():  # one trial per pod: a fresh metrics folder each
            old.unlink()
        result = subprocess.run(
            ["sh", "-c", script], env=env, cwd=root, capture_output=True, text=True, timeout=300, check=False
        )
        runs[name] = {
            "script": script,
            "code": result.returncode,
            "metrics": (log_dir / "metrics.log").read_text(),
            "marks": {p.name: p.read_text() for p in log_dir.glob("*.pid")},
            "dir": Path(redirect["/workspace"]) / "katib" / experiment["metadata"]["name"] / name,
        }
    return {"runs": runs, "root": root, "claim": Path(redirect["/workspace"]), "data": data, "env": env}


def test_a_trial_runs_as_katibs_collector_runs_it(experiment, katib_run) -> None:
    objective = experiment["spec"]["objective"]
    metrics = [objective["objectiveMetricName"], *objective["additionalMetricNames"]]
    for name, run in katib_run["runs"].items():
        assert run["code"] == 0, run["metrics"][-3000:]
        assert METRICS_FILE not in run["script"] and "1>" in run["script"]
        assert list(run["marks"].values()) == ["completed\n"], run["marks"]  # Katib's completion mark
        assert list(run["marks"])[0].removesuffix(".pid").isdigit()  # $$$$ in the args is the shell's pid
        found = parse_metrics(run["metrics"], metrics)
        epochs = [line for line in run["metrics"].splitlines() if re.search(r" epoch \d+/\d+ ", line)]
        assert len(epochs) == 2, run["metrics"][-2000:]
        values = [v for n, v, _ in found if n == "val_accuracy"]
        losses = [v for n, v, _ in found if n == "val_loss"]
        assert len(values) == len(losses) == 2  # the objective for every epoch, and nothing else
        # Each value carries its line's own time (RFC 3339), not Katib's zero time.
        stamps = [datetime.fromisoformat(t) for n, _, t in found if n == "val_accuracy"]
        assert ZERO_TIME not in {t for *_, t in found} and stamps == sorted(stamps), found
        record = json.loads((run["dir"] / "trial.json").read_text())
        assert values == pytest.approx(record["history"]["val_accuracy"], abs=6e-5)
        assert record["trial"] == name and (run["dir"] / "model.weights.h5").is_file()


def test_the_filter_needs_ascii_semantics() -> None:
    """Go's \\w and \\d are ASCII; Python's str patterns are Unicode unless re.ASCII."""
    line = "trial x epoch 1/2 val_accuracy=٠.٩٥ val_loss=0.5"  # Arabic-Indic digits
    assert [m[1] for m in DEFAULT_FILTER.finditer(line)] == ["val_accuracy", "val_loss"]
    assert DEFAULT_FILTER.search(line)[2] == ""  # no ASCII digit: the value does not parse, as in Go
    unicode = re.compile(DEFAULT_FILTER.pattern)
    assert unicode.search(line)[2] == "٠.٩٥"


def test_bad_parameters_exit_2_naming_the_field(experiment, katib_run) -> None:
    job = substitute(experiment, _assignment(experiment, learning_rate="0.5"), "mnist-seed-bad00003")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    args = [a.replace("/workspace", str(katib_run["claim"])) for a in container["args"]]
    result = subprocess.run(
        [sys.executable, "-m", "jobs.trial", *args],
        env=katib_run["env"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == EXIT_CONFIG
    assert "learning_rate (--learning-rate / TRIAL_LEARNING_RATE) = 0.5 is outside" in result.stderr


def test_the_best_trial_is_promoted_once_and_served(katib_run, tmp_path: Path) -> None:
    from serving.settings import Settings
    from tests.support.serving import ServerThread, http_call, wait_serving

    trials_dir = katib_run["claim"] / "katib" / "mnist-seed"
    output = tmp_path / "run"
    env = {**katib_run["env"], "TUNE_OUTPUT": str(output)}
    experiment_status = tmp_path / "experiment.json"
    experiment_status.write_text(
        json.dumps(
            {
                "apiVersion": "kubeflow.org/v1beta1",
                "kind": "Experiment",
                "spec": {"algorithm": {"algorithmName": "random"}},
                "status": {"currentOptimalTrial": {"bestTrialName": "mnist-seed-good0001"}},
            }
        )
    )
    command = [sys.executable, "-m", "jobs.promote", f"--trials-dir={trials_dir}"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert first.returncode == 0, first.stderr[-3000:]
    models = output / "models"
    assert modelrepo.list_versions(models, "mnist") == [1]
    meta = modelrepo.read_metadata(modelrepo.version_dir(models, "mnist", 1))
    records = {n: json.loads((r["dir"] / "trial.json").read_text()) for n, r in katib_run["runs"].items()}
    best = max(records, key=lambda n: records[n]["val_accuracy"])
    assert best == "mnist-seed-good0001"
    assert meta.final_model_note.startswith(f"katib trial {best} (mnist-seed)")
    assert meta.hyperparameters == records[best]["hyperparameters"]
    assert meta.val_accuracy == records[best]["val_accuracy"]
    assert meta.test_accuracy is not None and meta.test_accuracy > 0.5
    assert len(meta.trials) == 2

    # Again, and from the Experiment's own status: the same trial, nothing new.
    again = subprocess.run(
        [*command, f"--experiment={experiment_status}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to publish" in again.stderr
    assert modelrepo.list_versions(models, "mnist") == [1]

    server = ServerThread(
        Settings(
            model_root=models,
            host="127.0.0.1",
            port=0,
            http_port=0,
            metrics_host="127.0.0.1",
            metrics_port=0,
        )
    )
    try:
        wait_serving(server.target)
        from jobs.data import load_mnist

        mnist = load_mnist(katib_run["data"])
        images = mnist.x_test[:50].astype(np.float32)
        status, body, _ = http_call(
            f"{server.base_url}/v2/models/mnist/infer",
            {
                "inputs": [
                    {
                        "name": "images",
                        "datatype": "FP32",
                        "shape": [50, 28, 28],
                        "data": images.ravel().tolist(),
                    }
                ]
            },
        )
        assert status == 200, body
        assert body["model_version"] == "1"
        outputs = {o["name"]: o for o in body["outputs"]}
        probabilities = np.array(outputs["probabilities"]["data"]).reshape(50, 10)
        accuracy = float(np.mean(np.argmax(probabilities, axis=-1) == mnist.y_test[:50]))
        assert abs(accuracy - meta.test_accuracy) < 0.2  # the promoted model, not a random one
        assert accuracy > 0.5
    finally:
        server.stop()


def test_promote_without_trials_or_optimal_trial_fails_clearly(tmp_path: Path) -> None:
    from jobs.errors import EXIT_SEARCH

    (tmp_path / "trials").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "jobs.promote", f"--trials-dir={tmp_path / 'trials'}", f"--output={tmp_path}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == EXIT_SEARCH and "no finished trial" in result.stderr
    status = tmp_path / "experiment.yaml"
    status.write_text(yaml.safe_dump({"kind": "Experiment", "status": {}}))
    result = subprocess.run(
        [*result.args, f"--experiment={status}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == EXIT_CONFIG and "bestTrialName is empty" in result.stderr
