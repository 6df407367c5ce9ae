"""MNIST loading: the four IDX files (gzipped or not), a Keras ``mnist.npz``, or the Keras download.

Every file is checked (magic number, dimensions, exact size, label range); a bad one raises
:class:`DataError` naming it. The validation split is taken from the 60k training images with a
permutation fixed by the seed; the official 10k test set is kept apart for the final score.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from jobs.errors import DataError

if TYPE_CHECKING:
    from jobs.config import JobConfig

log = logging.getLogger(__name__)

IMAGE_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
LABEL_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension
ROWS = COLS = 28
NUM_CLASSES = 10
TRAIN_SIZE = 60000
TEST_SIZE = 10000
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
NPZ_FILE = "mnist.npz"
KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
KERAS_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"


@dataclass
class Mnist:
    """Raw MNIST: uint8 images [N, 28, 28] and uint8 labels [N], plus the source files' checksums."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    checksums: dict[str, str] = field(default_factory=dict)
    source: str = ""


@dataclass
class Splits:
    """float32 pixels 0..255 (the model normalises) and int32 labels, split for the search."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def subset(self, n: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` training examples (the split is already shuffled), or all of them."""
        if n is None:
            return self.x_train, self.y_train
        return self.x_train[:n], self.y_train[:n]

    def train_and_val(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate([self.x_train, self.x_val]), np.concatenate([self.y_train, self.y_val])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from exc
    if raw[:2] == b"\x1f\x8b":  # gzip magic: decompress whatever the file name says
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    return raw


def parse_idx_images(raw: bytes, name: str) -> np.ndarray:
    """Parse an IDX3 image file into uint8 [N, 28, 28]."""
    if len(raw) < 16:
        raise DataError(f"{name}: truncated: {len(raw)} bytes is shorter than the 16-byte IDX3 header")
    magic, count, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != IMAGE_MAGIC:
        raise DataError(f"{name}: magic number {magic:#010x} is not an IDX3 image file ({IMAGE_MAGIC:#010x})")
    if (rows, cols) != (ROWS, COLS):
        raise DataError(f"{name}: images are {rows}x{cols}, expected {ROWS}x{COLS}")
    expected = 16 + count * rows * cols
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(
            f"{name}: {kind}: {len(raw)} bytes, header announces {count} images = {expected} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, rows, cols)


def parse_idx_labels(raw: bytes, name: str) -> np.ndarray:
    """Parse an IDX1 label file into uint8 [N] and check every label is 0..9."""
    if len(raw) < 8:
        raise DataError(f"{name}: truncated: {len(raw)} bytes is shorter than the 8-byte IDX1 header")
    magic, count = struct.unpack(">II", raw[:8])
    if magic != LABEL_MAGIC:
        raise DataError(f"{name}: magic number {magic:#010x} is not an IDX1 label file ({LABEL_MAGIC:#010x})")
    if len(raw) != 8 + count:
        kind = "truncated" if len(raw) < 8 + count else "has trailing bytes"
        raise DataError(
            f"{name}: {kind}: {len(raw)} bytes, header announces {count} labels = {8 + count} bytes"
        )
    labels = np.frombuffer(raw, dtype=np.uint8, offset=8)
    _check_labels(labels, name)
    return labels


def _check_labels(labels: np.ndarray, name: str) -> None:
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataError(f"{name}: label {int(labels[bad])} at index {bad} is outside 0..{NUM_CLASSES - 1}")


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_idx_dir(directory: Path) -> Mnist:
    """Load the four IDX files from ``directory`` (each may be gzipped)."""
    arrays: dict[str, np.ndarray] = {}
    checksums: dict[str, str] = {}
    for key, stem in IDX_FILES.items():
        path = _find(directory, stem)
        if path is None:
            raise DataError(f"{directory}: missing {stem} (or {stem}.gz)")
        raw = _read_bytes(path)
        parse = parse_idx_images if key.endswith("images") else parse_idx_labels
        arrays[key] = parse(raw, str(path))
        checksums[path.name] = sha256_file(path)
    mnist = Mnist(
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
        checksums,
        str(directory),
    )
    _check_counts(mnist, str(directory))
    return mnist


def load_npz(path: Path) -> Mnist:
    """Load a Keras-style ``mnist.npz`` (x_train, y_train, x_test, y_test)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(archive.files)
            if missing:
                raise DataError(f"{path}: missing arrays {sorted(missing)}")
            arrays = {key: archive[key] for key in ("x_train", "y_train", "x_test", "y_test")}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from exc
    for key in ("x_train", "x_test"):
        array = arrays[key]
        if array.ndim != 3 or array.shape[1:] != (ROWS, COLS) or array.dtype != np.uint8:
            raise DataError(
                f"{path}: {key} is {array.dtype} {array.shape}, expected uint8 [N, {ROWS}, {COLS}]"
            )
    for key in ("y_train", "y_test"):
        array = arrays[key]
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise DataError(f"{path}: {key} is {array.dtype} {array.shape}, expected integer labels [N]")
        if array.size and int(array.min()) < 0:
            raise DataError(f"{path}: {key} holds negative labels")
        _check_labels(array, f"{path}:{key}")
    mnist = Mnist(
        arrays["x_train"],
        arrays["y_train"].astype(np.uint8),
        arrays["x_test"],
        arrays["y_test"].astype(np.uint8),
        {path.name: sha256_file(path)},
        str(path),
    )
    _check_counts(mnist, str(path))
    return mnist


def _check_counts(mnist: Mnist, name: str) -> None:
    if len(mnist.x_train) != len(mnist.y_train):
        raise DataError(f"{name}: {len(mnist.x_train)} training images but {len(mnist.y_train)} labels")
    if len(mnist.x_test) != len(mnist.y_test):
        raise DataError(f"{name}: {len(mnist.x_test)} test images but {len(mnist.y_test)} labels")
    if len(mnist.x_train) == 0 or len(mnist.x_test) == 0:
        raise DataError(f"{name}: the training or test set is empty")


def download(cache_dir: str | None) -> Path:
    """Fetch ``mnist.npz`` through Keras (checked against its published SHA-256) into ``cache_dir``."""
    import keras

    try:
        return Path(
            keras.utils.get_file(
                fname=NPZ_FILE, origin=KERAS_ORIGIN, file_hash=KERAS_SHA256, cache_dir=cache_dir
            )
        )
    except Exception as exc:  # network errors come in many types; all mean "no data"
        raise DataError(
            f"downloading {KERAS_ORIGIN} into {cache_dir or '~/.keras'} failed: {exc}; "
            "to use local files, set MNIST_DATA_DIR or --data-dir"
        ) from exc


def load_mnist(directory: str | Path | None, cache_dir: str | None = None) -> Mnist:
    """MNIST from ``directory`` (IDX files or mnist.npz), else downloaded through Keras."""
    if directory is None:
        path = download(cache_dir)
        log.info("using downloaded %s", path)
        return load_npz(path)
    if not str(directory).strip():
        raise DataError("the data directory is an empty string; unset it to download MNIST through Keras")
    directory = Path(directory)
    if directory.is_file():
        return load_npz(directory)
    if not directory.is_dir():
        # Never a silent download: a folder that was named but is missing is a mistake to report.
        raise DataError(
            f"{directory}: no such data directory (from --data-dir, MNIST_DATA_DIR or data.dir; "
            "leave all three unset to download MNIST through Keras)"
        )
    if _find(directory, IDX_FILES["train_images"]) is None and (directory / NPZ_FILE).is_file():
        return load_npz(directory / NPZ_FILE)
    return load_idx_dir(directory)


def split(mnist: Mnist, validation_size: int, seed: int) -> Splits:
    """Shuffle the training set with ``seed`` and hold out ``validation_size`` examples."""
    if validation_size >= len(mnist.x_train):
        raise DataError(
            f"{mnist.source}: validation_size {validation_size} leaves no training data "
            f"({len(mnist.x_train)} training images)"
        )
    order = np.random.default_rng(seed).permutation(len(mnist.x_train))
    val, train = order[:validation_size], order[validation_size:]
    x = mnist.x_train.astype(np.float32)
    y = mnist.y_train.astype(np.int32)
    return Splits(
        x_train=x[train],
        y_train=y[train],
        x_val=x[val],
        y_val=y[val],
        x_test=mnist.x_test.astype(np.float32),
        y_test=mnist.y_test.astype(np.int32),
    )


def load_data(config: JobConfig) -> tuple[Mnist, Splits]:
    """MNIST from ``config.data`` and its splits; checks ``search.train_subset`` against the real size."""
    mnist = load_mnist(config.data.dir, config.data.cache_dir)
    splits = split(mnist, config.data.validation_size, config.seed)
    subset = config.search.train_subset
    if subset is not None and subset > len(splits.x_train):
        raise DataError(
            f"{mnist.source}: search.train_subset {subset} exceeds the "
            f"{len(splits.x_train)} training examples"
        )
    log.info(
        "data from %s: %d train (%s used by trials), %d validation, %d test",
        mnist.source,
        len(splits.x_train),
        subset or "all",
        len(splits.x_val),
        len(splits.x_test),
    )
    return mnist, splits
