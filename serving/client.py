"""Classify digit images with a running server: PNG files, .npy arrays, or images from an MNIST IDX file.

Examples::

    python -m serving.client --target localhost:8500 three.png seven.png batch.npy
    python -m serving.client --target localhost:8500 --idx t10k-images-idx3-ubyte.gz --count 20 \\
        --labels t10k-labels-idx1-ubyte.gz

Prints one line per image: source, predicted digit, confidence (and the true label when known).
PNG files are converted to 8-bit grayscale (white digit on black, like MNIST; ``--invert`` for black on
white) and resized to 28x28 if needed. ``.npy`` files hold one [28, 28] or a batch [N, 28, 28] of raw
pixels 0..255 (uint8 arrays are sent as bytes, other dtypes as floats). Exit status: 0 done, 1 the
server refused the request (status code printed), 2 an input file is unusable.
"""

from __future__ import annotations

import argparse
import gzip
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

from digits.v1 import digits_pb2, digits_pb2_grpc

ROWS = COLS = 28
CHUNK = 256  # images per request
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class InputFileError(Exception):
    """An input file cannot be turned into 28x28 images."""


def read_idx(path: Path | str) -> np.ndarray:
    """Read an IDX file (MNIST's format), gzip-compressed or not."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise InputFileError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    expected = int(np.prod(shape)) * dtype.itemsize
    data = raw[4 + 4 * ndim :]
    if len(data) != expected:
        raise InputFileError(
            f"{path}: header says shape {shape} ({expected} bytes) but has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype).reshape(shape)


def load_png(path: Path, invert: bool = False) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            gray = image.convert("L")
            if gray.size != (COLS, ROWS):
                gray = gray.resize((COLS, ROWS), Image.Resampling.LANCZOS)
            pixels = np.asarray(gray, np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise InputFileError(f"{path}: cannot read as an image ({exc})") from exc
    return 255 - pixels if invert else pixels


def load_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{path}: cannot read as a .npy array ({exc})") from exc
    if array.shape == (ROWS, COLS):
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (ROWS, COLS):
        raise InputFileError(f"{path}: shape {array.shape}; expected [28, 28] or [N, 28, 28]")
    return array


def collect(args: argparse.Namespace) -> Iterator[tuple[str, np.ndarray, int | None]]:
    """(name for printing, image, true label if known) from every source on the command line."""
    for name in args.files:
        path = Path(name)
        if path.suffix.lower() == ".npy":
            batch = load_npy(path)
            for index, image in enumerate(batch):
                yield (f"{path}[{index}]" if len(batch) > 1 else str(path)), image, None
        else:
            yield str(path), load_png(path, args.invert), None
    if args.idx is not None:
        images = read_idx(args.idx)
        if images.ndim != 3 or images.shape[1:] != (ROWS, COLS):
            raise InputFileError(f"{args.idx}: shape {images.shape}; expected [N, 28, 28]")
        labels = None if args.labels is None else read_idx(args.labels)
        if labels is not None and len(labels) != len(images):
            raise InputFileError(f"{args.labels} has {len(labels)} labels for {len(images)} images")
        end = len(images) if args.count is None else min(len(images), args.offset + args.count)
        for index in range(args.offset, end):
            label = None if labels is None else int(labels[index])
            yield f"{Path(args.idx).name}[{index}]", images[index], label


def request_for(images: np.ndarray, model: str, version: int) -> digits_pb2.PredictRequest:
    request = digits_pb2.PredictRequest(model_name=model, model_version=version, num_images=len(images))
    if images.dtype == np.uint8:
        request.uint8_pixels = np.ascontiguousarray(images).tobytes()
    else:
        request.float_pixels.values.extend(np.asarray(images, np.float32).ravel().tolist())
    return request


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m serving.client",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="*", help="PNG images and .npy arrays to classify")
    parser.add_argument("--target", required=True, help="server address HOST:PORT (port 8500 by default)")
    parser.add_argument("--model", default="", help="model name (default: the server's default model)")
    parser.add_argument("--version", type=int, default=0, help="model version (default: newest loaded)")
    parser.add_argument("--idx", type=Path, help="an MNIST IDX images file (.gz or not)")
    parser.add_argument("--count", type=int, help="with --idx: classify this many images (default: all)")
    parser.add_argument("--offset", type=int, default=0, help="with --idx: index of the first image")
    parser.add_argument(
        "--labels", type=Path, help="with --idx: the matching IDX labels file; prints accuracy"
    )
    parser.add_argument("--invert", action="store_true", help="PNG files are dark ink on a light background")
    parser.add_argument("--tls-ca", type=Path, help="PEM CA certificate: connect with TLS")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    args = parser.parse_args(argv)
    if not args.files and args.idx is None:
        parser.error("give PNG/.npy files or --idx FILE")
    if args.labels is not None and args.idx is None:
        parser.error("--labels needs --idx")
    if args.offset < 0 or (args.count is not None and args.count < 1):
        parser.error("--offset must be >= 0 and --count >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        items = list(collect(args))
    except (InputFileError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.tls_ca is not None:
        channel = grpc.secure_channel(args.target, grpc.ssl_channel_credentials(args.tls_ca.read_bytes()))
    else:
        channel = grpc.insecure_channel(args.target)
    correct = known = 0
    with channel:
        stub = digits_pb2_grpc.DigitClassifierStub(channel)
        for start in range(0, len(items), CHUNK):
            chunk = items[start : start + CHUNK]
            images = np.stack([image for _, image, _ in chunk])
            if any(image.dtype != np.uint8 for _, image, _ in chunk):
                images = images.astype(np.float32)
            try:
                response = stub.Predict(request_for(images, args.model, args.version), timeout=args.timeout)
            except grpc.RpcError as exc:
                print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
                return 1
            for (source, _, truth), digit, confidence in zip(
                chunk, response.digits, response.confidences, strict=True
            ):
                line = f"{source}\tdigit={digit}\tconfidence={confidence:.3f}"
                if truth is not None:
                    known += 1
                    correct += truth == digit
                    line += f"\tlabel={truth}"
                print(line)
        print(f"# {len(items)} images classified by {response.model_name} version {response.model_version}")
        if known:
            print(f"# accuracy {correct / known:.4f} ({correct}/{known})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
