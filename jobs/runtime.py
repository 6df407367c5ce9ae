"""Where the job writes (the output folder, the search's export record) and how TensorFlow is set up
(imported only inside :func:`setup_runtime`)."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.config import JobConfig

log = logging.getLogger(__name__)

TUNER_DIR = "tuner"  # <output>/tuner: Keras Tuner's project (resume state)
MODELS_DIR = "models"  # <output>/models: the model repository
REPORT_DIR = "report"
EXPORT_RECORD = "export.json"  # in the tuner directory: the version this search published


@dataclass(frozen=True)
class OutputPaths:
    """The output folder's layout (docs/tuning.md, "Output folder")."""

    root: Path
    tuner: Path
    models: Path
    report: Path

    @property
    def export_record(self) -> Path:
        return self.tuner / EXPORT_RECORD


def output_paths(config: JobConfig) -> OutputPaths:
    root = Path(config.output.dir)
    return OutputPaths(root, root / TUNER_DIR, root / MODELS_DIR, root / REPORT_DIR)


@dataclass(frozen=True)
class ExportRecord:
    """Which version of which model this search published (one export per search)."""

    model_name: str
    version: int
    path: str
    time: float


def read_export_record(paths: OutputPaths) -> ExportRecord | None:
    """The search's own export, if it made one that is still in the repository."""
    try:
        raw = json.loads(paths.export_record.read_text())
        record = ExportRecord(
            str(raw["model_name"]), int(raw["version"]), str(raw["path"]), float(raw["time"])
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable %s: %s", paths.export_record, exc)
        return None
    if not Path(record.path).is_dir():
        log.warning(
            "this search exported %s version %d to %s, which is gone: exporting again",
            record.model_name,
            record.version,
            record.path,
        )
        return None
    return record


def write_export_record(paths: OutputPaths, model_name: str, version: int, path: Path) -> ExportRecord:
    record = ExportRecord(model_name, version, str(path), time.time())
    tmp = paths.export_record.with_name(f".{EXPORT_RECORD}.tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(record.__dict__))
    os.replace(tmp, paths.export_record)  # atomic: a rerun never reads half a record
    return record


def setup_runtime(config: JobConfig) -> None:
    """Seeds, GPU memory growth and the precision policy; works the same without a GPU."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        if config.runtime.gpu_memory_growth:
            tf.config.experimental.set_memory_growth(gpu, True)
    if config.runtime.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
        if not gpus:
            log.warning("mixed precision is on but TensorFlow sees no GPU: training will be slower")
    log.info("devices: %d GPU(s); precision policy %s", len(gpus), keras.mixed_precision.global_policy().name)


def library_versions() -> dict[str, Any]:
    """Versions recorded in the model's metadata."""
    from importlib.metadata import version

    versions = {"python": platform.python_version()}
    for package in ("tensorflow", "keras", "keras-tuner", "numpy", "pydantic"):
        versions[package] = version(package)
    return versions
