"""Loads model versions from the repository, keeps the newest ones, and swaps new versions in.

A version that fails to load (missing or corrupt files, wrong signature, metadata that fails the schema)
is logged, counted and remembered so it is not retried until its files change; the versions already
loaded keep serving. Readers get a :class:`LoadedModel` reference, so a swap never pulls a model out
from under a request that is using it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import modelrepo

from .errors import ModelNotFound, ModelUnavailable
from .metrics import ServingMetrics
from .wire import shown

log = logging.getLogger(__name__)

IMAGE_SHAPE = tuple(modelrepo.IMAGE_SHAPE)


@dataclass(eq=False)
class LoadedModel:
    """One loaded version; holding a reference keeps its variables alive."""

    name: str
    version: int
    path: Path
    metadata: modelrepo.ModelMetadata
    module: Any = field(repr=False)  # the restored object; its variables back the signature function
    function: Any = field(repr=False)
    signature_def: Any = field(repr=False)  # the SignatureDef proto, as TF Serving reports it

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the serving signature on float32 [N, 28, 28]; returns probabilities [N, 10], classes [N]."""
        outputs = self.function(**{modelrepo.INPUT_KEY: tf.convert_to_tensor(images)})
        return (
            outputs[modelrepo.OUTPUT_PROBABILITIES].numpy(),
            outputs[modelrepo.OUTPUT_CLASSES].numpy(),
        )


class LoadError(Exception):
    """A version directory is not a servable model; the message says why."""


def load_version(name: str, version: int, path: Path) -> LoadedModel:
    """Load and check one version: metadata schema, signature contract, and one warm-up call."""
    try:
        metadata = modelrepo.read_metadata(path)
    except modelrepo.ModelRepositoryError as exc:
        raise LoadError(str(exc)) from exc
    if not (path / modelrepo.SAVED_MODEL_FILE).is_file():
        raise LoadError(f"{path / modelrepo.SAVED_MODEL_FILE} is missing")
    try:
        module = tf.saved_model.load(str(path))
    except Exception as exc:  # TensorFlow raises many types for unreadable files
        raise LoadError(f"tf.saved_model.load failed: {type(exc).__name__}: {exc}") from exc
    function = module.signatures.get(modelrepo.SIGNATURE_NAME)
    if function is None:
        raise LoadError(f"no {modelrepo.SIGNATURE_NAME!r} signature (has {sorted(module.signatures)})")
    _, input_specs = function.structured_input_signature
    spec = input_specs.get(modelrepo.INPUT_KEY)
    expected = tf.TensorSpec([None, *IMAGE_SHAPE], tf.as_dtype(modelrepo.INPUT_DTYPE))
    if spec is None or len(input_specs) != 1:
        raise LoadError(f"signature inputs are {sorted(input_specs)}, expected [{modelrepo.INPUT_KEY!r}]")
    if spec.dtype != expected.dtype or not spec.shape.is_compatible_with(expected.shape):
        raise LoadError(f"signature input is {spec}, expected {expected}")
    try:
        saved_model = saved_model_pb2.SavedModel.FromString((path / modelrepo.SAVED_MODEL_FILE).read_bytes())
        signature_def = saved_model.meta_graphs[0].signature_def[modelrepo.SIGNATURE_NAME]
    except Exception as exc:
        raise LoadError(f"cannot read the SignatureDef: {type(exc).__name__}: {exc}") from exc
    loaded = LoadedModel(name, version, path, metadata, module, function, signature_def)
    try:
        probabilities, classes = loaded.predict(np.zeros((2, *IMAGE_SHAPE), np.float32))
    except Exception as exc:
        raise LoadError(f"warm-up call failed: {type(exc).__name__}: {exc}") from exc
    if probabilities.shape != (2, modelrepo.NUM_CLASSES) or classes.shape != (2,):
        raise LoadError(
            f"warm-up outputs have shapes {probabilities.shape} and {classes.shape}, "
            f"expected (2, {modelrepo.NUM_CLASSES}) and (2,)"
        )
    if metadata.model_name != name or metadata.version != version:
        log.warning(
            "%s: metadata says %s version %d; serving it as %s version %d (the folder names win)",
            path,
            metadata.model_name,
            metadata.version,
            name,
            version,
        )
    return loaded


def configure_tensorflow_threads(intra_op: int, inter_op: int) -> None:
    """Set TensorFlow's thread pools; possible only before TensorFlow runs its first op."""
    current = (
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )
    if current == (intra_op, inter_op):
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:  # already initialised (e.g. a second server in one process)
        log.warning("TensorFlow already runs with (intra, inter) op threads %s; keeping them", current)


def _fingerprint(path: Path) -> tuple[int, int]:
    """Newest mtime and file count under ``path``: changes when a version's files are rewritten."""
    newest, count = 0, 0
    for dirpath, _, filenames in os.walk(path):
        newest = max(newest, os.stat(dirpath).st_mtime_ns)
        for filename in filenames:
            try:
                newest = max(newest, os.stat(os.path.join(dirpath, filename)).st_mtime_ns)
            except FileNotFoundError:
                continue
            count += 1
    return newest, count


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the store serves at one moment; never changed, only replaced whole."""

    models: Mapping[str, Mapping[int, LoadedModel]]
    latest: Mapping[str, LoadedModel]
    unloadable: frozenset[str]  # on disk, but no version loaded (yet)

    @staticmethod
    def of(models: dict[str, dict[int, LoadedModel]], unloadable: frozenset[str]) -> Snapshot:
        return Snapshot(
            models=MappingProxyType({name: MappingProxyType(dict(found)) for name, found in models.items()}),
            latest=MappingProxyType({name: found[max(found)] for name, found in models.items() if found}),
            unloadable=unloadable,
        )


EMPTY = Snapshot.of({}, frozenset())


class ModelStore:
    """The loaded versions of every model under a repository root.

    Readers (the event loop) take ``self._snapshot`` once per call; ``refresh`` (the loader thread)
    builds a new frozen :class:`Snapshot` and swaps it in with one assignment, so a reader never sees
    new versions next to an old "latest".
    """

    def __init__(self, root: Path, metrics: ServingMetrics, max_loaded_versions: int = 2) -> None:
        self.root = Path(root)
        self._metrics = metrics
        self._max_loaded = max_loaded_versions
        self._snapshot = EMPTY
        self._failed: dict[tuple[str, int], tuple[int, int]] = {}  # only the refreshing thread uses it
        self._refresh_lock = threading.Lock()

    def get(self, name: str, version: int | None = None) -> LoadedModel:
        """The newest loaded version of ``name`` (or that exact version)."""
        snapshot = self._snapshot
        if version is None:
            latest = snapshot.latest.get(name)
            if latest is not None:
                return latest
        else:
            found = snapshot.models.get(name)
            loaded = found.get(version) if found is not None else None
            if loaded is not None:
                return loaded
        if name not in snapshot.models:
            if not snapshot.models:
                raise ModelUnavailable("no model is loaded yet; retry shortly")
            if name in snapshot.unloadable:  # never touch the file system with a client's string
                raise ModelUnavailable(f"model {shown(name)} has no loaded version yet; retry shortly")
            serving = ", ".join(sorted(snapshot.models))
            raise ModelNotFound(f"model {shown(name)} not found (serving: {serving})")
        versions = ", ".join(str(v) for v in sorted(snapshot.models[name], reverse=True))
        raise ModelNotFound(f"version {version} of model {shown(name)} is not loaded (loaded: {versions})")

    def versions(self, name: str) -> list[LoadedModel]:
        """Loaded versions of ``name``, newest first (empty if none)."""
        found = self._snapshot.models.get(name, {})
        return [loaded for _, loaded in sorted(found.items(), reverse=True)]

    def ready(self) -> bool:
        return bool(self._snapshot.latest)

    def refresh(self) -> bool:
        """Scan the repository once, load new versions, unload old ones; True if anything changed.

        Blocking (TensorFlow loads on this thread): call it from a worker thread.
        """
        with self._refresh_lock:
            current_snapshot = self._snapshot
            models = {name: dict(versions) for name, versions in current_snapshot.models.items()}
            changed = False
            on_disk = set(modelrepo.list_models(self.root))
            for name in sorted(on_disk | set(models)):
                current = models.get(name, {})
                keep = self._wanted_versions(name, current)
                if not keep:
                    if current:  # the repository lost every version: keep serving what we have
                        log.warning("model %s: no loadable version on disk; keeping the loaded ones", name)
                    continue
                if set(keep) != set(current):
                    for version in sorted(set(current) - set(keep)):
                        log.info("unloading %s version %d", name, version)
                    models[name] = keep
                    changed = True
            unloadable = frozenset(on_disk - set(models))
            if changed or unloadable != current_snapshot.unloadable:
                snapshot = Snapshot.of(models, unloadable)
                self._snapshot = snapshot  # the one assignment readers can observe
                for name, latest in snapshot.latest.items():
                    self._metrics.loaded_version.labels(model=name).set(latest.version)
            return changed

    def _wanted_versions(self, name: str, current: dict[int, LoadedModel]) -> dict[int, LoadedModel]:
        keep: dict[int, LoadedModel] = {}
        for version in reversed(modelrepo.list_versions(self.root, name)):
            if len(keep) >= self._max_loaded:
                break
            if version in current:
                keep[version] = current[version]
                continue
            path = modelrepo.version_dir(self.root, name, version)
            try:
                fingerprint = _fingerprint(path)
            except FileNotFoundError:  # removed while we looked
                continue
            if self._failed.get((name, version)) == fingerprint:
                continue
            started = time.perf_counter()
            try:
                keep[version] = load_version(name, version, path)
            except LoadError as exc:
                self._failed[(name, version)] = fingerprint
                self._metrics.model_loads.labels(model=name, outcome="failure").inc()
                log.error("skipping %s version %d (%s): %s", name, version, path, exc)
                continue
            self._failed.pop((name, version), None)
            self._metrics.model_loads.labels(model=name, outcome="success").inc()
            seconds = time.perf_counter() - started
            log.info("loaded %s version %d from %s in %.2f s", name, version, path, seconds)
        return keep
