"""The model repository contract: the one thing the tuning job writes and the prediction service reads.

Layout (TensorFlow Serving's): ``<root>/<model_name>/<version>/`` holding a SavedModel
(``saved_model.pb``, ``variables/``) and ``metadata.json`` (schema: :class:`ModelMetadata`).
Versions are increasing positive integers. A version appears atomically: it is written to a hidden
staging directory beside the versions (same volume) and renamed into place, so a reader never sees half
of one. Readers ignore every entry whose name is not a positive integer (TF Serving does the same).
Every publish first deletes staging directories untouched for :data:`STALE_STAGING_SECONDS` (left by a
writer that crashed mid-publish); a younger one may be a concurrent writer's and stays.

This module must stay importable without TensorFlow or keras-tuner: the serving image imports it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
METADATA_FILE = "metadata.json"
SAVED_MODEL_FILE = "saved_model.pb"
STAGING_PREFIX = ".staging-"
# A staging directory whose modification time is older than this belongs to a writer that crashed: a
# publish writes its payload and renames it within seconds to minutes. One hour leaves room for a slow
# volume and for clock skew between the nodes that share it.
STALE_STAGING_SECONDS = 3600.0
DEFAULT_MODEL_NAME = "mnist"

# The serving signature's input contract: raw pixels, the model normalises them itself.
SIGNATURE_NAME = "serving_default"
INPUT_KEY = "images"
INPUT_DTYPE = "float32"
IMAGE_SHAPE = (28, 28)
PIXEL_MIN = 0.0
PIXEL_MAX = 255.0
OUTPUT_PROBABILITIES = "probabilities"  # float32 [N, 10], softmax
OUTPUT_CLASSES = "classes"  # int64 [N], argmax of probabilities
NUM_CLASSES = 10

_VERSION_RE = re.compile(r"^[1-9][0-9]*$")
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ModelRepositoryError(Exception):
    """A model repository or one of its versions is not what the contract says."""


class InputContract(BaseModel):
    """What a client sends: a batch of raw 28x28 grayscale pixel arrays."""

    model_config = ConfigDict(frozen=True)

    signature_name: str = SIGNATURE_NAME
    key: str = INPUT_KEY
    dtype: str = INPUT_DTYPE
    shape: list[int | None] = Field(default_factory=lambda: [None, *IMAGE_SHAPE])
    value_range: tuple[float, float] = (PIXEL_MIN, PIXEL_MAX)
    outputs: dict[str, str] = Field(
        default_factory=lambda: {
            OUTPUT_PROBABILITIES: "float32 [N, 10] softmax probabilities",
            OUTPUT_CLASSES: "int64 [N] predicted digit",
        }
    )
    description: str = (
        "Raw MNIST pixels, 0 = background, 255 = ink, row-major 28x28; no normalisation by the client."
    )


class TrialSummary(BaseModel):
    """One Keras Tuner trial, as recorded in the metadata and the trials table."""

    trial_id: str
    status: str
    hyperparameters: dict[str, Any]
    val_accuracy: float | None = None
    best_epoch: int | None = None
    epochs_run: int | None = None
    seconds: float | None = None


class ModelMetadata(BaseModel):
    """``metadata.json`` of one exported version. Readers ignore fields they do not know."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    schema_version: int = SCHEMA_VERSION
    model_name: str
    version: int = 0  # set by publish()
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    input: InputContract = Field(default_factory=InputContract)
    tuner: str
    final_model: Literal["retrain", "best_trial"]
    final_model_note: str = ""
    hyperparameters: dict[str, Any]
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    history: dict[str, list[float]] = Field(default_factory=dict)
    trials: list[TrialSummary] = Field(default_factory=list)
    data_checksums: dict[str, str] = Field(default_factory=dict)
    library_versions: dict[str, str] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    search_seconds: float | None = None
    total_seconds: float | None = None


def validate_model_name(name: str) -> str:
    if not _MODEL_NAME_RE.match(name):
        raise ModelRepositoryError(
            f"model name {name!r} is not a valid folder name (letters, digits, '_', '.', '-')"
        )
    return name


def model_dir(root: Path | str, name: str) -> Path:
    return Path(root) / validate_model_name(name)


def version_dir(root: Path | str, name: str, version: int) -> Path:
    return model_dir(root, name) / str(version)


def list_versions(root: Path | str, name: str) -> list[int]:
    """Published versions of a model, ascending. Staging and other entries are ignored."""
    directory = model_dir(root, name)
    if not directory.is_dir():
        return []
    return sorted(
        int(entry.name) for entry in directory.iterdir() if _VERSION_RE.match(entry.name) and entry.is_dir()
    )


def list_models(root: Path | str) -> list[str]:
    """Model names (folders) under a repository root that hold at least one version."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        entry.name
        for entry in root.iterdir()
        if entry.is_dir() and _MODEL_NAME_RE.match(entry.name) and list_versions(root, entry.name)
    )


def read_metadata(path: Path | str) -> ModelMetadata:
    """Read and validate ``metadata.json`` of a version directory."""
    file = Path(path) / METADATA_FILE
    try:
        return ModelMetadata.model_validate_json(file.read_bytes())
    except FileNotFoundError as exc:
        raise ModelRepositoryError(f"{file} is missing") from exc
    except ValueError as exc:
        raise ModelRepositoryError(f"{file} does not match the metadata schema: {exc}") from exc


def _fsync_tree(path: Path) -> None:
    """Flush a directory tree to disk so a rename never publishes data still in the page cache."""
    for dirpath, _, filenames in os.walk(path):
        for filename in filenames:
            with open(os.path.join(dirpath, filename), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(
    root: Path | str,
    metadata: ModelMetadata,
    write_payload: Callable[[Path], None],
) -> tuple[int, Path]:
    """Publish a new version atomically and return ``(version, path)``.

    ``write_payload(staging_dir)`` writes the SavedModel into an empty staging directory on the same
    volume; ``metadata.json`` is written here with the version filled in. If anything fails, the
    staging directory is removed and no version becomes visible. Staging directories that crashed
    writers left behind (:data:`STALE_STAGING_SECONDS`) are removed first.
    """
    directory = model_dir(root, metadata.model_name)
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(root, metadata.model_name)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=directory))
    try:
        # mkdtemp makes the directory private (0700); a published version must be readable by a
        # reader running as another user (a serving container, TF Serving).
        staging.chmod(0o755)
        write_payload(staging)
        if not (staging / SAVED_MODEL_FILE).is_file():
            raise ModelRepositoryError(f"the payload writer left no {SAVED_MODEL_FILE} in {staging}")
        for _ in range(100):  # another writer may take the same number; take the next one
            version = max(list_versions(root, metadata.model_name), default=0) + 1
            stamped = metadata.model_copy(update={"version": version})
            (staging / METADATA_FILE).write_text(stamped.model_dump_json(indent=2))
            _fsync_tree(staging)
            target = directory / str(version)
            try:
                os.rename(staging, target)  # atomic; fails if another writer took the number
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue
                raise
            _fsync_dir(directory)
            return version, target
        raise ModelRepositoryError(f"could not claim a version number in {directory}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def remove_stale_staging(
    root: Path | str, name: str, older_than_seconds: float = STALE_STAGING_SECONDS
) -> list[Path]:
    """Delete staging directories left by writers that crashed (not modified for ``older_than_seconds``);
    returns what was removed. Called by :func:`publish`; safe to run from several writers at once."""
    directory = model_dir(root, name)
    if not directory.is_dir():
        return []
    removed = []
    now = time.time()
    for entry in directory.iterdir():
        if not entry.name.startswith(STAGING_PREFIX):
            continue
        try:
            age = now - entry.stat().st_mtime
        except FileNotFoundError:  # another writer removed it, or renamed it into a version
            continue
        if age > older_than_seconds:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def to_jsonable(value: Any) -> Any:
    """Round-trip a value through JSON (numpy scalars and paths become plain values)."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
