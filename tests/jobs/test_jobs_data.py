"""MNIST file parsing: IDX (plain and gzip), npz, and every way a file can be wrong."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from jobs import data
from jobs.data import DataError
from tests.support.mnist import synthetic_arrays, write_idx


@pytest.fixture
def arrays() -> dict[str, np.ndarray]:
    return synthetic_arrays(50, 20, seed=1)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path: Path, arrays: dict, compress: bool) -> None:
    write_idx(tmp_path, arrays, compress=compress)
    mnist = data.load_mnist(tmp_path)
    np.testing.assert_array_equal(mnist.x_train, arrays["train_images"])
    np.testing.assert_array_equal(mnist.y_test, arrays["test_labels"])
    suffix = ".gz" if compress else ""
    assert set(mnist.checksums) == {f"{stem}{suffix}" for stem in data.IDX_FILES.values()}
    assert all(len(digest) == 64 for digest in mnist.checksums.values())


def test_npz(tmp_path: Path, arrays: dict) -> None:
    path = tmp_path / "mnist.npz"
    np.savez(
        path,
        x_train=arrays["train_images"],
        y_train=arrays["train_labels"].astype(np.int64),
        x_test=arrays["test_images"],
        y_test=arrays["test_labels"],
    )
    for source in (tmp_path, path):  # a directory holding mnist.npz, or the file itself
        mnist = data.load_mnist(source)
        np.testing.assert_array_equal(mnist.y_train, arrays["train_labels"])
        assert mnist.y_train.dtype == np.uint8


def _image_file(count: int, rows: int = 28, cols: int = 28, magic: int = data.IMAGE_MAGIC) -> bytes:
    return struct.pack(">IIII", magic, count, rows, cols) + bytes(count * rows * cols)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_image_file(3)[:-5], "truncated: 2363 bytes, header announces 3 images = 2368 bytes"),
        (_image_file(3) + b"\0", "has trailing bytes"),
        (_image_file(3)[:10], "shorter than the 16-byte IDX3 header"),
        (_image_file(3, magic=data.LABEL_MAGIC), "magic number 0x00000801 is not an IDX3 image file"),
        (_image_file(2, rows=32, cols=32), "images are 32x32, expected 28x28"),
    ],
)
def test_bad_image_files(raw: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        data.parse_idx_images(raw, "train-images-idx3-ubyte")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (struct.pack(">II", data.LABEL_MAGIC, 4) + bytes([1, 2, 3]), "truncated"),
        (struct.pack(">II", data.IMAGE_MAGIC, 1) + bytes([1]), "not an IDX1 label file"),
        (struct.pack(">II", data.LABEL_MAGIC, 3) + bytes([1, 12, 3]), "label 12 at index 1 is outside 0..9"),
        (b"\0\0\x08", "shorter than the 8-byte IDX1 header"),
    ],
)
def test_bad_label_files(raw: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        data.parse_idx_labels(raw, "labels")


def test_truncated_gzip_names_the_file(tmp_path: Path, arrays: dict) -> None:
    write_idx(tmp_path, arrays, compress=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: corrupt or truncated gzip"):
        data.load_mnist(tmp_path)


def test_corrupt_gzip_names_the_file(tmp_path: Path, arrays: dict) -> None:
    write_idx(tmp_path, arrays, compress=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[12:20] = b"\xff" * 8  # damage the deflate stream behind the gzip header
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz"):
        data.load_mnist(tmp_path)


def test_gzip_of_a_truncated_idx_file(tmp_path: Path, arrays: dict) -> None:
    write_idx(tmp_path, arrays, compress=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: truncated"):
        data.load_mnist(tmp_path)


def test_missing_file_and_count_mismatch(tmp_path: Path, arrays: dict) -> None:
    write_idx(tmp_path, arrays)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        data.load_mnist(tmp_path)
    arrays["train_labels"] = arrays["train_labels"][:-1]
    write_idx(tmp_path, arrays)
    with pytest.raises(DataError, match="50 training images but 49 labels"):
        data.load_mnist(tmp_path)
    with pytest.raises(DataError, match="no such data directory"):
        data.load_mnist(tmp_path / "nope")


def test_bad_npz(tmp_path: Path, arrays: dict) -> None:
    path = tmp_path / "mnist.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        data.load_mnist(path)
    np.savez(path, x_train=arrays["train_images"], y_train=arrays["train_labels"])
    with pytest.raises(DataError, match="missing arrays"):
        data.load_mnist(path)
    np.savez(
        path,
        x_train=arrays["train_images"].astype(np.float32),
        y_train=arrays["train_labels"],
        x_test=arrays["test_images"],
        y_test=arrays["test_labels"],
    )
    with pytest.raises(DataError, match="x_train is float32"):
        data.load_mnist(path)
    labels = arrays["train_labels"].astype(np.int64)
    labels[3] = 10
    np.savez(
        path,
        x_train=arrays["train_images"],
        y_train=labels,
        x_test=arrays["test_images"],
        y_test=arrays["test_labels"],
    )
    with pytest.raises(DataError, match="label 10 at index 3"):
        data.load_mnist(path)


def test_split_is_deterministic_disjoint_and_complete(tmp_path: Path, arrays: dict) -> None:
    write_idx(tmp_path, arrays)
    mnist = data.load_mnist(tmp_path)
    first, again, other = (data.split(mnist, 10, seed) for seed in (5, 5, 6))
    np.testing.assert_array_equal(first.x_val, again.x_val)
    assert not np.array_equal(first.y_val, other.y_val) or not np.array_equal(first.x_val, other.x_val)
    assert len(first.x_val) == 10 and len(first.x_train) == 40
    assert first.x_train.dtype == np.float32 and first.x_train.max() == 255.0  # raw pixels, not normalised
    everything = np.concatenate([first.x_train, first.x_val]).reshape(50, -1)
    original = mnist.x_train.reshape(50, -1).astype(np.float32)
    assert sorted(map(bytes, everything)) == sorted(map(bytes, original))
    assert len(first.subset(7)[0]) == 7 and len(first.train_and_val()[0]) == 50
    with pytest.raises(DataError, match="leaves no training data"):
        data.split(mnist, 50, 0)
