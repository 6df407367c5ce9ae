"""Play Kubernetes workloads with ``podman kube play``: the one place where ``pytest -m k8s`` differs from a
cluster (docs/deployment.md, "The manifests, played").

Three steps, each usable on its own (KServe predictor and Katib trial pod specs go through the same ones):

1. :func:`render` runs ``kubectl kustomize`` on a folder, with the images pointed at local builds, and
   returns the documents a user's ``kubectl apply -k`` would send.
2. :func:`pods_for` turns a workload into the Pods its controller would create: a ``Job`` (Indexed or not,
   as the Job controller names, labels and annotates them and injects ``JOB_COMPLETION_INDEX``), a
   ``Deployment`` (``replicas`` Pods of its template), or a ``Pod`` (unchanged). Nothing is adapted here.
3. :func:`for_podman` makes every change podman forces, and only those, from one :class:`Deviations`
   (plus what a test chooses, e.g. a smaller preset): it returns the Pod document and one line per change,
   which the tests print. :class:`Cluster` plays such Pods on one podman network with fixed addresses,
   plays ``PersistentVolumeClaim`` documents as named volumes, runs the probes a kubelet would
   (:func:`probe`), and tears everything down (``podman kube down``, the claims' volumes, the network).
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

INDEX_KEY = "batch.kubernetes.io/job-completion-index"
INDEX_ENV = "JOB_COMPLETION_INDEX"
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_KUBE_NETWORK = "podman-default-kube-network"  # what kube play creates without --network
_DEPENDENT_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


# The k8s suites' own choices (docs/deployment.md, "The manifests, played"): the official files from a
# host folder (no internet here) where Dockerfile.train expects host data, and the smoke preset (the
# default one takes an hour of this CPU).
DATA_IN_POD = "/data/mnist"
TEST_ENV = {"MNIST_DATA_DIR": DATA_IN_POD, "TUNE_PRESET": "smoke"}
ACCURACY_TOLERANCE = 0.001  # as the e2e suite: float differences between the job's evaluate and serving


# --- 1. render -------------------------------------------------------------------------------------------


def render(directory: Path, images: Mapping[str, str], workdir: Path) -> list[dict]:
    """``kubectl kustomize`` of ``directory`` through an overlay that only sets ``images`` (name -> image).

    The overlay is what a user writes (``images: [{name, newName, newTag}]``); the folder is not touched.
    """
    overlay = workdir / "kustomize-overlay"
    overlay.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, image in images.items():
        repository, _, tag = image.rpartition(":")
        entries.append({"name": name, "newName": repository, "newTag": tag})
    resources = [os.path.relpath(Path(directory).resolve(), overlay.resolve())]  # kustomize: relative
    kustomization = {"resources": resources, "images": entries}
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    result = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay} failed: {result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(documents: list[dict], kind: str, name: str) -> dict:
    """The one document of ``kind`` named ``name``."""
    found = [d for d in documents if d.get("kind") == kind and d["metadata"]["name"] == name]
    if len(found) != 1:
        raise LookupError(f"{len(found)} documents of kind {kind} named {name}")
    return copy.deepcopy(found[0])


# --- 2. what the controllers create ---------------------------------------------------------------------


def _pod(name: str, template: dict, labels: dict, annotations: dict) -> dict:
    meta = copy.deepcopy(template.get("metadata") or {})
    meta["name"] = name
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    meta["annotations"] = {**(meta.get("annotations") or {}), **annotations}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": copy.deepcopy(template["spec"])}


def job_pods(job: dict, *, uid: str, indexes: list[int] | None = None) -> list[dict]:
    """The Pods the Job controller creates for ``job`` (``uid`` plays the Job's ``metadata.uid``).

    Indexed: one Pod per index (all ``completions`` unless ``indexes`` picks some, e.g. a replacement),
    named ``<job>-<index>``, with the completion-index annotation and label, ``hostname`` ``<job>-<index>``
    (the template's ``subdomain`` stays), and ``JOB_COMPLETION_INDEX`` in every container, read from the
    annotation as the controller writes it. NonIndexed: ``parallelism`` Pods ``<job>-<suffix>``. Both get
    the controller's labels (``batch.kubernetes.io/controller-uid``, ``batch.kubernetes.io/job-name`` and
    their legacy twins). ``restartPolicy`` and everything else stay as written.
    """
    name, spec = job["metadata"]["name"], job["spec"]
    labels = {
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": uid,
        "job-name": name,
    }
    if spec.get("completionMode", "NonIndexed") != "Indexed":
        count = spec.get("parallelism", 1)
        suffixes = [hashlib.sha256(f"{uid}-{i}".encode()).hexdigest()[:5] for i in range(count)]
        return [_pod(f"{name}-{suffix}", spec["template"], labels, {}) for suffix in suffixes]
    pods = []
    for index in range(spec["completions"]) if indexes is None else indexes:
        pod = _pod(
            f"{name}-{index}",
            spec["template"],
            {**labels, INDEX_KEY: str(index)},
            {INDEX_KEY: str(index)},
        )
        pod["spec"]["hostname"] = f"{name}-{index}"
        index_env = {
            "name": INDEX_ENV,
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_KEY}']"}},
        }
        for container in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
            if not any(var["name"] == INDEX_ENV for var in container.get("env", [])):
                container["env"] = [*container.get("env", []), copy.deepcopy(index_env)]
        pods.append(pod)
    return pods


def deployment_pods(deployment: dict, replicas: int | None = None) -> list[dict]:
    """``replicas`` Pods (default: the Deployment's) of its template, named ``<deployment>-<hash>-<n>``."""
    spec = deployment["spec"]
    template_hash = hashlib.sha256(json.dumps(spec["template"], sort_keys=True).encode()).hexdigest()[:10]
    count = spec.get("replicas", 1) if replicas is None else replicas
    name = deployment["metadata"]["name"]
    labels = {"pod-template-hash": template_hash}
    return [_pod(f"{name}-{template_hash}-{n}", spec["template"], labels, {}) for n in range(count)]


def pods_for(document: dict, **options: Any) -> list[dict]:
    """The Pods a controller would create for a ``Job``, ``Deployment`` or ``Pod`` document (see above)."""
    kind = document.get("kind")
    if kind == "Job":
        return job_pods(document, **options)
    if kind == "Deployment":
        return deployment_pods(document, **options)
    if kind == "Pod":
        return [copy.deepcopy(document)]
    raise ValueError(f"no controller for kind {kind!r} here (Job, Deployment, Pod)")


# --- 3. what podman forces ------------------------------------------------------------------------------


@dataclass
class Deviations:
    """Every change from what a kubelet would run, besides what the controllers add (step 2).

    ``addresses`` (pod name -> IP) and ``env``/``host_paths`` are the test's; the rest is fixed below in
    :func:`for_podman`, with the reason for each.
    """

    addresses: Mapping[str, str] = field(default_factory=dict)  # the subdomain's pods -> their fixed IPs
    env: Mapping[str, str] = field(default_factory=dict)  # set (or replaced) in every container
    host_paths: Mapping[str, str] = field(default_factory=dict)  # container path -> host folder, read-only
    claims: Mapping[str, str] = field(default_factory=dict)  # claim name -> its folder (Cluster.claim)


def _expand(value: str, known: Mapping[str, str]) -> str:
    # The kubelet's rule: $(VAR) of a variable defined earlier in the list is replaced, others stay.
    return _DEPENDENT_VAR.sub(lambda m: known.get(m.group(1), m.group(0)), value)


def _kubelet_expand(value: str, known: Mapping[str, str]) -> str:
    # The kubelet's expansion of command and args: `$$` -> `$`, `$(VAR)` of a known variable -> its value.
    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return known.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", one, value)


def _field(pod: dict, path: str) -> str | None:
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return (pod["metadata"].get(match.group(1)) or {}).get(match.group(2))
    return {"metadata.name": pod["metadata"]["name"]}.get(path)


def for_podman(pod: dict, deviations: Deviations) -> tuple[dict, list[str]]:
    """The Pod as ``podman kube play`` (4.3) must get it to behave like the kubelet; one line per change.

    Everything else in the spec (command, env, fieldRefs, securityContext, resources, volumes,
    restartPolicy, probes) is played as written.
    """
    pod = copy.deepcopy(pod)
    name, spec = pod["metadata"]["name"], pod["spec"]
    changes: list[str] = []
    containers = spec.get("initContainers", []) + spec["containers"]

    # kube play publishes every containerPort on the host (a kubelet publishes none): three tune pods
    # declaring 8470 collide. Pods are reached at their own IP on the network, as in a cluster.
    for container in containers:
        if container.pop("ports", None):
            changes.append(
                f"{name}/{container['name']}: ports removed (kube play would publish them on the host)"
            )

    # No GPU and no scheduler here: GPU requests, node selector and tolerations cannot be honoured.
    for container in containers:
        for section in ("requests", "limits"):
            resources = container.get("resources", {}).get(section, {})
            if resources.pop(GPU_RESOURCE, None) is not None:
                changes.append(f"{name}/{container['name']}: {section}[{GPU_RESOURCE}] removed (no GPU)")
    for key in ("nodeSelector", "tolerations"):
        if spec.pop(key, None) is not None:
            changes.append(f"{name}: {key} removed (no scheduler, no GPU node)")

    # No Service DNS: `<hostname>.<subdomain>` (a headless Service's pod names) would not resolve. Every
    # pod of the same subdomain gets /etc/hosts entries for all of them, at their fixed addresses.
    subdomain = spec.get("subdomain")
    if subdomain:
        aliases = [
            {"ip": ip, "hostnames": [f"{other}.{subdomain}"]}
            for other, ip in sorted(deviations.addresses.items())
        ]
        if aliases:
            spec["hostAliases"] = [*spec.get("hostAliases", []), *aliases]
            listed = ", ".join(f"{a['hostnames'][0]}={a['ip']}" for a in aliases)
            changes.append(f"{name}: hostAliases {listed} (no headless Service DNS)")

    # The test's environment (a data source without internet, a smaller preset, short waits).
    for container in containers:
        env = container.setdefault("env", [])
        for key, value in deviations.env.items():
            env[:] = [var for var in env if var["name"] != key] + [{"name": key, "value": value}]
            changes.append(f"{name}/{container['name']}: env {key}={value}")

    # podman 4.3 leaves `$(VAR)` in env values as it is; the kubelet expands variables defined earlier
    # (TUNE_DATA_CACHE=/workspace/.cache/mnist-$(POD_INDEX)). Expanded here from the fieldRefs' values.
    for container in containers:
        known: dict[str, str] = {}
        for var in container.get("env", []):
            ref = (var.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath")
            if ref is not None:
                known[var["name"]] = _field(pod, ref) or ""
            elif "value" in var:
                expanded = _expand(str(var["value"]), known)
                if expanded != var["value"]:
                    changes.append(
                        f"{name}/{container['name']}: env {var['name']}={expanded} (expanded $(...))"
                    )
                    var["value"] = expanded
                known[var["name"]] = expanded

    # podman 4.3 ignores `subPath` on a claim's mount and mounts the whole claim (KServe mounts
    # `pvc://<claim>/<path>` at /mnt/models with subPath <path>): such a mount becomes a hostPath of the
    # claim's folder at the subPath, with the mount's readOnly as written.
    claim_volumes = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in spec.get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    for container in containers:
        for mount in container.get("volumeMounts", []):
            claim = claim_volumes.get(mount["name"])
            if claim is None or not mount.get("subPath"):
                continue
            if claim not in deviations.claims:
                raise LookupError(f"{name}: mount {mount['name']} has a subPath of claim {claim}, not played")
            host = Path(deviations.claims[claim]) / mount.pop("subPath")
            volume = f"{mount['name']}-subpath-{len(spec['volumes'])}"
            spec["volumes"].append({"name": volume, "hostPath": {"path": str(host), "type": "Directory"}})
            changes.append(
                f"{name}/{container['name']}: claim {claim} subPath mounted at {mount['mountPath']} as "
                f"hostPath {host} (podman ignores subPath on a claim)"
            )
            mount["name"] = volume

    # podman 4.3 passes command and args as written; the kubelet unescapes `$$` to `$` and expands
    # `$(VAR)` of the container's variables there (Katib's collector writes `echo completed > .../$$$$.pid`
    # for the shell to see `$$.pid`). Done here as the kubelet does.
    for container in containers:
        known = {var["name"]: str(var["value"]) for var in container.get("env", []) if "value" in var}
        for key in ("command", "args"):
            words = container.get(key) or []
            expanded = [_kubelet_expand(word, known) for word in words]
            if expanded != words:
                container[key] = expanded
                changes.append(f"{name}/{container['name']}: {key} $$ and $(VAR) expanded (as the kubelet)")

    # Host folders (the official MNIST, no download here), read-only.
    for number, (mount, host) in enumerate(sorted(deviations.host_paths.items())):
        volume = f"host-{number}"
        spec.setdefault("volumes", []).append(
            {"name": volume, "hostPath": {"path": str(host), "type": "Directory"}}
        )
        for container in containers:
            mounts = container.setdefault("volumeMounts", [])
            mounts.append({"name": volume, "mountPath": mount, "readOnly": True})
        changes.append(f"{name}: hostPath {host} mounted read-only at {mount}")
    return pod, changes


# --- playing ---------------------------------------------------------------------------------------------


class Cluster:
    """Pods and claims played with podman on one network of fixed addresses (``podman`` as root)."""

    def __init__(self, name: str, subnet: str, env: dict[str, str], workdir: Path) -> None:
        self.name, self.env, self.workdir = name, env, workdir
        self.network = ipaddress.ip_network(subnet)
        self._hosts = self.network.hosts()
        next(self._hosts)  # the gateway
        self.addresses: dict[str, str] = {}
        self.files: dict[str, Path] = {}  # played pod name -> its file (for kube down)
        self.claims: list[str] = []
        self.default_network_existed = False

    def podman(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["podman", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)} exited {result.returncode}: {result.stderr[-3000:]}")
        return result

    def create(self) -> None:
        networks = self.podman("network", "ls", "--format", "{{.Name}}").stdout.split()
        self.default_network_existed = DEFAULT_KUBE_NETWORK in networks
        self.podman("network", "create", "--subnet", str(self.network), self.name)

    def address(self, pod_name: str) -> str:
        """The pod's fixed IP (the same for a replacement with the same name)."""
        if pod_name not in self.addresses:
            self.addresses[pod_name] = str(next(self._hosts))
        return self.addresses[pod_name]

    def claim(self, pvc: dict) -> Path:
        """Play a ``PersistentVolumeClaim`` (a named volume); returns its folder on the host."""
        path = self.workdir / f"pvc-{pvc['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(pvc))
        # --network: otherwise kube play creates (and leaves) podman-default-kube-network for it.
        self.podman("kube", "play", "--network", self.name, str(path))
        self.claims.append(pvc["metadata"]["name"])
        mountpoint = self.podman("volume", "inspect", "-f", "{{.Mountpoint}}", pvc["metadata"]["name"])
        return Path(mountpoint.stdout.strip())

    def play(self, pod: dict) -> None:
        """``podman kube play`` one Pod document (already :func:`for_podman`'d) at its fixed address."""
        name = pod["metadata"]["name"]
        path = self.workdir / f"pod-{name}-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(pod, sort_keys=False))
        self.files[name] = path
        self.podman(
            "kube", "play", "--network", self.name, "--ip", self.address(name), str(path), timeout=600
        )

    def down(self, pod_name: str) -> None:
        """``podman kube down`` of one played Pod (the pod and its containers go)."""
        self.podman("kube", "down", str(self.files.pop(pod_name)))

    def container(self, pod_name: str, container: str) -> dict:
        """``podman inspect`` of a pod's container (kube play names it ``<pod>-<container>``)."""
        return json.loads(self.podman("container", "inspect", f"{pod_name}-{container}").stdout)[0]

    def logs(self, pod_name: str, container: str, tail: int = 40) -> str:
        result = self.podman("logs", "--tail", str(tail), f"{pod_name}-{container}", check=False)
        return result.stdout + result.stderr

    def kill(self, pod_name: str, container: str) -> None:
        self.podman("kill", "--signal", "KILL", f"{pod_name}-{container}")

    def leftovers(self) -> dict[str, list[str]]:
        """What of this cluster podman still has: pods, containers, volumes, the network."""

        def names(*args: str) -> list[str]:
            return self.podman(*args, "--format", "{{.Name}}", check=False).stdout.split()

        ours = {*self.files, *self.addresses}
        pods = [p for p in names("pod", "ps") if p in ours]
        listed = self.podman("ps", "-a", "--pod", "--format", "{{.Names}} {{.PodName}}", check=False).stdout
        containers = []
        for line in listed.splitlines():  # a pod's infra container is named after its id, not its name
            container, _, pod = line.partition(" ")
            if pod.strip() in ours or any(container.startswith(f"{p}-") for p in ours):
                containers.append(container)
        volumes = [v for v in names("volume", "ls") if v in self.claims]
        ours_networks = {self.name} | (set() if self.default_network_existed else {DEFAULT_KUBE_NETWORK})
        networks = [n for n in names("network", "ls") if n in ours_networks]
        return {"pods": pods, "containers": containers, "volumes": volumes, "networks": networks}

    def teardown(self, force: bool = False) -> None:
        """``podman kube down`` every played Pod, then remove the claims' volumes and the network.

        Without ``force`` nothing is removed that ``kube down`` should have removed: a volume still in use
        or a network with containers stays, and :meth:`leftovers` shows it. ``force`` also removes this
        cluster's pods, volumes and network whatever their state (after a failed test).
        """
        for pod_name in list(self.files):
            self.podman("kube", "down", str(self.files.pop(pod_name)), check=False)
        if force:
            for pod_name in self.addresses:
                self.podman("pod", "rm", "--force", pod_name, check=False)
        for claim in self.claims:
            # podman 4.3's `kube down` leaves a PVC's volume: removed as a cluster deletes the claim.
            self.podman("volume", "rm", *(["--force"] if force else []), claim, check=False)
        self.podman("network", "rm", *(["--force"] if force else []), self.name, check=False)


@contextmanager
def cluster(name: str, subnet: str, env: dict[str, str], keep: bool = False) -> Iterator[Cluster]:
    """A :class:`Cluster` torn down on exit (unless ``keep``: for debugging a failure)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    played = Cluster(name, subnet, env, workdir)
    played.podman("network", "rm", "--force", name, check=False)  # a leftover of an interrupted run
    played.create()
    try:
        yield played
    finally:
        if not keep:
            played.teardown(force=True)
            shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def played_cluster(
    name: str, subnet: str, env: dict[str, str], report: Callable[[str], None]
) -> Iterator[Cluster]:
    """:func:`cluster` for a test: after a passing test, ``kube down`` must leave no pod, container, claim
    volume or network behind; ``K8S_KEEP=1`` leaves a failing test's pods up for debugging."""
    with cluster(name, subnet, env, keep=os.environ.get("K8S_KEEP") == "1") as played:
        yield played
        played.teardown()
        left = played.leftovers()
        assert not any(left.values()), f"left behind after kube down: {left}"
        report("kube down: no pod, container, volume or network left")


def play(played: Cluster, pod: dict, deviations: Deviations, report: Callable[[str], None]) -> None:
    """Adapt ``pod`` for podman (:func:`for_podman`), ``report`` each deviation, and play it."""
    adapted, changes = for_podman(pod, deviations)
    for change in changes:
        report(f"deviation: {change}")
    played.play(adapted)


# --- probes, as a kubelet runs them -------------------------------------------------------------------


def _port(value: int | str, container: dict) -> int:
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    for port in container.get("ports", []):
        if port.get("name") == value:
            return int(port["containerPort"])
    raise LookupError(f"container {container['name']} has no port named {value!r}")


def probe(cluster_: Cluster, pod_name: str, container: dict, spec: dict) -> bool:  # noqa: PLR0911
    """One run of a probe (``grpc``, ``httpGet``, ``tcpSocket`` or ``exec``) against the pod, as the kubelet.

    ``container`` is the container as written (named ports resolve against it); the probe's
    ``timeoutSeconds`` (default 1) bounds it. True means success.
    """
    ip = cluster_.addresses[pod_name]
    timeout = float(spec.get("timeoutSeconds", 1))
    if "grpc" in spec:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        target = f"{ip}:{_port(spec['grpc']['port'], container)}"
        with grpc.insecure_channel(target) as channel:
            try:
                request = health_pb2.HealthCheckRequest(service=spec["grpc"].get("service", ""))
                reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout)
            except grpc.RpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING
    if "httpGet" in spec:
        get = spec["httpGet"]
        port = _port(get["port"], container)
        url = f"{get.get('scheme', 'HTTP').lower()}://{ip}:{port}{get.get('path', '/')}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return 200 <= response.status < 400
        except OSError:
            return False
    if "tcpSocket" in spec:
        try:
            socket.create_connection(
                (ip, _port(spec["tcpSocket"]["port"], container)), timeout=timeout
            ).close()
        except OSError:
            return False
        return True
    if "exec" in spec:
        name = f"{pod_name}-{container['name']}"
        result = cluster_.podman("exec", name, *spec["exec"]["command"], check=False, timeout=timeout + 5)
        return result.returncode == 0
    raise ValueError(f"unknown probe handler in {spec}")


def declared_probes(container: dict) -> dict[str, dict]:
    """The probes a container declares: ``startupProbe``, ``readinessProbe``, ``livenessProbe``."""
    kinds = ("startupProbe", "readinessProbe", "livenessProbe")
    return {kind: container[kind] for kind in kinds if kind in container}


def job_outcome(job: dict, exit_codes: Mapping[int, int]) -> str:
    """What the Job controller decides from the pods' exit codes (index -> code; Indexed Jobs).

    ``FailJob`` when a ``podFailurePolicy`` rule with action FailJob matches a code; ``Complete`` when the
    ``successPolicy`` (or, without one, every index) has succeeded; else ``replace <indexes>`` for the
    failed indexes (counted against ``backoffLimit``) or ``running``.
    """
    spec = job["spec"]
    for rule in (spec.get("podFailurePolicy") or {}).get("rules", []):
        codes = rule.get("onExitCodes")
        if not codes:
            continue
        for code in exit_codes.values():
            matched = code in codes["values"] if codes["operator"] == "In" else code not in codes["values"]
            if code != 0 and matched and rule["action"] == "FailJob":
                return "FailJob"
    succeeded = {index for index, code in exit_codes.items() if code == 0}
    rules = (spec.get("successPolicy") or {}).get("rules")
    if rules:
        for rule in rules:
            wanted = set()
            for part in str(rule["succeededIndexes"]).split(","):
                first, _, last = part.partition("-")
                wanted |= set(range(int(first), int(last or first) + 1))
            if wanted <= succeeded:
                return "Complete"
    elif succeeded == set(range(spec["completions"])):
        return "Complete"
    failed = sorted(index for index, code in exit_codes.items() if code != 0)
    return f"replace {failed}" if failed else "running"
