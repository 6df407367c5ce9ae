"""Katib for the tests: its Experiment webhook rules for what we ship, its trial template substitution,
the StdOut metrics collector's command rewrite and its log filter.

Restated from kubeflow/katib at 33c8ff4: ``pkg/webhook/v1beta1/experiment/validator/validator.go``
(the rules), ``pkg/controller.v1beta1/consts/const.go`` (substitution formats),
``pkg/webhook/v1beta1/pod/utils.go`` (``wrapWorkerContainer``), ``pkg/metricscollector/v1beta1/common``
(the default filter) and ``file-metricscollector.go`` (``parseLogsInTextFormat``). The Experiment CRD has
no schema; the types are checked against Katib's OpenAPI document (:mod:`tests.support.crds`).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import kubernetes_validate

NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?")  # as in the webhook: no "$", only the start must match
PARAM_FORMAT = "${{trialParameters.{}}}"
PARAM_REGEX = re.compile(r"\$\{trialParameters\..+?\}")
META_REGEX = re.compile(r"\$\{trialSpec\.(.+?)\}")
META_KEYS = ("Name", "Namespace", "Kind", "APIVersion", "Annotations", "Labels")
PARAMETER_TYPES = {"int", "double", "categorical", "discrete", "unknown"}
DISTRIBUTIONS = {"uniform", "logUniform", "normal", "logNormal", "unknown"}
RESUME_POLICIES = {"", "Never", "LongRunning", "FromVolume"}
# Suggestion algorithms of Katib's default katib-config (manifests/v1beta1/installs/*/katib-config.yaml)
ALGORITHMS = {
    "random",
    "tpe",
    "grid",
    "hyperband",
    "bayesianoptimization",
    "cmaes",
    "sobol",
    "multivariate-tpe",
    "enas",
    "darts",
    "pbt",
}
COLLECTORS = {"StdOut", "File", "TensorFlowEvent", "PrometheusMetric", "Custom", "None", "Push"}
# The StdOut collector's file and the filter it parses it with (DefaultFilter; Go's \w and \d are ASCII).
METRICS_FILE = "/var/log/katib/metrics.log"
DEFAULT_FILTER = re.compile(r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)", re.ASCII)
K8S_VERSION = "1.30.0"


def _is_meta(reference: str) -> bool:
    match = META_REGEX.match(reference)
    if not match:
        return False
    key = match[1]
    sub = re.match(r"(.+)\[(.+)]", key)
    return key in META_KEYS or (sub is not None and sub[1] in META_KEYS)


def webhook_errors(experiment: dict[str, Any]) -> list[str]:
    """What Katib's Experiment validating webhook rejects (creation; empty: admitted)."""
    errors: list[str] = []
    name = experiment["metadata"].get("name", "")
    spec = experiment.get("spec", {})
    if not NAME.match(name) or len(name) > 40:
        errors.append(f"metadata.name {name!r}: lower case, start with a letter, at most 40 characters")
    counts = {key: spec.get(key) for key in ("maxFailedTrialCount", "maxTrialCount", "parallelTrialCount")}
    if counts["maxFailedTrialCount"] is not None and counts["maxFailedTrialCount"] < 0:
        errors.append("spec.maxFailedTrialCount: should not be less than 0")
    for key in ("maxTrialCount", "parallelTrialCount"):
        if counts[key] is not None and counts[key] <= 0:
            errors.append(f"spec.{key}: must be greater than 0")
    if counts["maxTrialCount"] is not None:
        for key in ("maxFailedTrialCount", "parallelTrialCount"):
            if counts[key] is not None and counts[key] > counts["maxTrialCount"]:
                errors.append(f"spec.{key}: should be less than or equal to spec.maxTrialCount")
    objective = spec.get("objective")
    if objective is None:
        return [*errors, "spec.objective: must be specified"]
    if objective.get("type") not in ("minimize", "maximize"):
        errors.append(f"spec.objective.type {objective.get('type')!r}: must be minimize or maximize")
    if not objective.get("objectiveMetricName"):
        errors.append("spec.objective.objectiveMetricName: must be specified")
    if objective.get("objectiveMetricName") in objective.get("additionalMetricNames", []):
        errors.append("spec.objective.additionalMetricNames: should not contain the objective metric")
    algorithm = spec.get("algorithm")
    if algorithm is None:
        errors.append("spec.algorithm: must be specified")
    elif algorithm.get("algorithmName") not in ALGORITHMS:
        errors.append(
            f"spec.algorithm.algorithmName {algorithm.get('algorithmName')!r}: no suggestion config"
        )
    if spec.get("resumePolicy", "") not in RESUME_POLICIES:
        errors.append(f"spec.resumePolicy {spec.get('resumePolicy')!r}: invalid ResumePolicyType")
    errors.extend(_template_errors(spec))
    parameters = spec.get("parameters", [])
    if not parameters and spec.get("nasConfig") is None:
        errors.append("spec.parameters or spec.nasConfig must be specified")
    errors.extend(_parameter_errors(parameters))
    kind = spec.get("metricsCollectorSpec", {}).get("collector", {}).get("kind", "StdOut")
    if kind not in COLLECTORS:
        errors.append(f"spec.metricsCollectorSpec.collector.kind {kind!r}: invalid metrics collector kind")
    for pattern in (
        spec.get("metricsCollectorSpec", {}).get("source", {}).get("filter", {}).get("metricsFormat", [])
    ):
        if not re.match(r".*\(.*\).*\(.*\).*", pattern):
            errors.append(f"metricsFormat {pattern!r}: two top subexpressions are required")
    return errors


def _parameter_errors(parameters: list[dict[str, Any]]) -> list[str]:
    errors = []
    for i, parameter in enumerate(parameters):
        where = f"spec.parameters[{i}]"
        kind = parameter.get("parameterType")
        space = parameter.get("feasibleSpace") or {}
        if kind not in PARAMETER_TYPES:
            errors.append(f"{where}.parameterType: {kind} is not supported")
        if space.get("distribution", "") not in DISTRIBUTIONS | {""}:
            errors.append(f"{where}.feasibleSpace.distribution: {space['distribution']} is not supported")
        if not space:
            errors.append(f"{where}.feasibleSpace: must be specified")
        elif kind in ("int", "double"):
            if space.get("list"):
                errors.append(f"{where}.feasibleSpace.list is not supported for parameterType {kind}")
            if not space.get("min") or not space.get("max"):
                errors.append(f"{where}.feasibleSpace.max or min must be specified for parameterType {kind}")
        elif kind in ("categorical", "discrete") and any(space.get(k) for k in ("min", "max", "step")):
            errors.append(f"{where}.feasibleSpace: .max, .min and .step are not supported for {kind}")
    return errors


def _template_errors(spec: dict[str, Any]) -> list[str]:
    template = spec.get("trialTemplate")
    if template is None:
        return ["spec.trialTemplate: must be specified"]
    errors = []
    if not template.get("primaryContainerName"):
        errors.append("spec.trialTemplate.primaryContainerName: must be specified")
    if not template.get("successCondition") or not template.get("failureCondition"):
        errors.append("spec.trialTemplate: successCondition and failureCondition must be specified")
    if template.get("trialParameters") is None:
        return [*errors, "spec.trialTemplate.trialParameters: must be specified"]
    if ("trialSpec" in template) == ("configMap" in template):
        return [*errors, "spec.trialTemplate: exactly one of trialSpec and configMap"]
    text = json.dumps(template["trialSpec"])
    names: set[str] = set()
    references: set[str] = set()
    experiment_parameters = {p["name"] for p in spec.get("parameters", [])}
    for i, parameter in enumerate(template["trialParameters"]):
        where = f"spec.trialTemplate.trialParameters[{i}]"
        name, reference = parameter.get("name", ""), parameter.get("reference", "")
        if not name or not reference or "{" in name or "}" in name:
            errors.append(f"{where}: name and reference must be specified and name must not contain braces")
            continue
        if name in names:
            errors.append(f"{where}.name {name}: duplicated")
            continue
        if reference in references:
            errors.append(f"{where}.reference {reference}: duplicated")
            continue
        names.add(name)
        references.add(reference)
        if experiment_parameters and not _is_meta(reference) and reference not in experiment_parameters:
            errors.append(f"{where}.reference {reference}: does not exist in spec.parameters")
        placeholder = PARAM_FORMAT.format(name)
        if placeholder not in text:
            return [*errors, f"{where}.name {name}: not found in spec.trialTemplate"]
        text = text.replace(placeholder, "test-value")
    left = PARAM_REGEX.findall(text)
    if left:
        errors.append(
            f"spec.trialTemplate: parameters {left} not found in spec.trialTemplate.trialParameters"
        )
    run_spec = json.loads(text)
    if run_spec.get("metadata", {}).get("name") or run_spec.get("metadata", {}).get("namespace"):
        errors.append("spec.trialTemplate: metadata.name and metadata.namespace must be omitted")
    if not run_spec.get("apiVersion") or not run_spec.get("kind"):
        errors.append("spec.trialTemplate: APIVersion and Kind must be specified")
    if (run_spec.get("apiVersion"), run_spec.get("kind")) == ("batch/v1", "Job"):
        errors.extend(job_errors(run_spec))
        pod = run_spec.get("spec", {}).get("template", {}).get("spec", {})
        containers = [c["name"] for c in pod.get("containers", [])]
        primary = template.get("primaryContainerName")
        if primary and primary not in containers:
            errors.append(f"primary container {primary!r} not in the trial's containers {containers}")
    return errors


def job_errors(job: dict[str, Any], version: str = K8S_VERSION) -> list[str]:
    """The trial template as a strict batch/v1 Job (the webhook converts it to one)."""
    candidate = copy.deepcopy(job)
    candidate.setdefault("metadata", {})["name"] = "trial-template"
    try:
        kubernetes_validate.validate(candidate, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"spec.trialTemplate.trialSpec is not a valid batch/v1 Job: {exc.message}"]
    return []


def substitute(experiment: dict[str, Any], assignments: dict[str, str], trial_name: str) -> dict[str, Any]:
    """The trial's Job as Katib makes it: ``${trialParameters.X}`` -> the value assigned to the parameter X
    refers to, ``${trialSpec.Name}`` -> the trial's name (``Namespace``: default)."""
    template = experiment["spec"]["trialTemplate"]
    text = json.dumps(template["trialSpec"])
    for parameter in template["trialParameters"]:
        reference = parameter["reference"]
        value = trial_name if reference == "${trialSpec.Name}" else assignments[reference]
        text = text.replace(PARAM_FORMAT.format(parameter["name"]), value)
    text = text.replace("${trialSpec.Name}", trial_name).replace("${trialSpec.Namespace}", "default")
    job = json.loads(text)
    job.setdefault("metadata", {})["name"] = trial_name
    return job


def stdout_collector_script(container: dict[str, Any], metrics_file: str = METRICS_FILE) -> str:
    """The primary container's ``sh -c`` argument after Katib's StdOut collector rewrote it
    (wrapWorkerContainer, no early stopping): the words joined by spaces, output to the metrics file,
    then the completion mark, with Kubernetes' ``$$`` -> ``$`` expansion of container arguments applied."""
    words = [*container.get("command", []), *container.get("args", [])]
    if words[:2] in (["sh", "-c"], ["bash", "-c"]):
        words = words[2:]
    directory = metrics_file.rsplit("/", 1)[0]
    words += [f"1>{metrics_file} 2>&1", "&&", f"echo completed > {directory}/$$$$.pid"]
    return expand_args(" ".join(words))


def expand_args(text: str) -> str:
    """Kubernetes' expansion of container args without variables defined: ``$$`` -> ``$``, others kept."""
    return re.sub(r"\$\$", "$", text)


ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's time.Time{} in RFC 3339: what a line without a time gets
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


def parse_metrics(log: str, metric_names: list[str]) -> list[tuple[str, float, str]]:
    """(name, value, timestamp) in log order, as parseLogsInTextFormat reads the StdOut collector's file:
    the timestamp is the line's first word if it is RFC 3339 (time.RFC3339Nano), else the zero time."""
    found = []
    for line in log.split("\n"):
        if not any(name in line for name in metric_names):
            continue
        first = line.split(" ", 1)[0]
        stamp = first if " " in line and RFC3339.match(first) else ZERO_TIME
        for match in DEFAULT_FILTER.finditer(line):
            name, value = match[1].strip(), match[2].strip()
            if name in metric_names and value:  # an empty value is Katib's "unavailable"
                found.append((name, float(value), stamp))
    return found


METRICS_VOLUME = "metrics-volume"  # common.MetricsVolume


def katib_trial_pod(
    experiment: dict[str, Any], assignments: dict[str, str], trial_name: str, uid: str
) -> dict[str, Any]:
    """The Pod of one trial as Katib (33c8ff4) runs it, before its collector sidecar (not played):

    1. the trial's Job: ``trialSpec`` with the trial's parameters and name substituted (:func:`substitute`,
       the trial controller), labelled ``katib.kubeflow.org/experiment`` and ``katib.kubeflow.org/trial``;
    2. its one Pod, as the Job controller makes it (``tests.support.kube.pods_for``, ``uid`` the Job's);
    3. the StdOut collector's pod webhook (``inject_webhook.go``): the primary container's command becomes
       ``sh -c "<command and args> 1>/var/log/katib/metrics.log 2>&1 && echo completed >
       /var/log/katib/$$$$.pid"`` (wrapWorkerContainer; the ``$$$$`` as Katib writes it, for the kubelet to
       unescape), and an ``emptyDir`` ``metrics-volume`` is mounted at ``/var/log/katib``
       (mutatePodMetricsVolume).
    """
    from tests.support.kube import pods_for

    job = substitute(experiment, assignments, trial_name)
    labels = {
        "katib.kubeflow.org/experiment": experiment["metadata"]["name"],
        "katib.kubeflow.org/trial": trial_name,
    }
    template_meta = job["spec"]["template"].setdefault("metadata", {})
    template_meta["labels"] = {**template_meta.get("labels", {}), **labels}
    (pod,) = pods_for(job, uid=uid)
    primary = experiment["spec"]["trialTemplate"]["primaryContainerName"]
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == primary]
    words = [*container.get("command", []), *container.pop("args", [])]
    directory = METRICS_FILE.rsplit("/", 1)[0]
    script = " ".join([*words, f"1>{METRICS_FILE} 2>&1", "&&", f"echo completed > {directory}/$$$$.pid"])
    container["command"], container["args"] = ["sh", "-c"], [script]
    container["volumeMounts"] = [
        *container.get("volumeMounts", []),
        {"name": METRICS_VOLUME, "mountPath": directory},
    ]
    pod["spec"]["volumes"] = [*pod["spec"].get("volumes", []), {"name": METRICS_VOLUME, "emptyDir": {}}]
    return pod
