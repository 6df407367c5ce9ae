"""Open Inference Protocol v2 (KServe, Triton, MLServer): the tensor contract both transports share.

Input: one tensor named ``images``, datatype ``FP32`` or ``UINT8``, shape ``[N, 28, 28]`` or ``[N, 784]``,
raw pixels 0..255. Outputs: ``probabilities`` FP32 ``[N, 10]`` and ``classes`` INT64 ``[N]``; a request may
ask for a subset. ``serving/v2_servicer.py`` (gRPC) and ``serving/rest.py`` (HTTP/JSON) convert their
wire forms to the calls below and back; nothing protocol-specific is decided twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata as package_metadata

import numpy as np

import modelrepo

from .errors import InvalidInput
from .model_store import LoadedModel
from .validation import COLS, PIXELS, ROWS, check_count, check_range
from .wire import shown

INPUT_NAME = modelrepo.INPUT_KEY
NUM_CLASSES = modelrepo.NUM_CLASSES
OUTPUT_NAMES = (modelrepo.OUTPUT_PROBABILITIES, modelrepo.OUTPUT_CLASSES)
INPUT_DATATYPES = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}
OUTPUT_DATATYPES = {modelrepo.OUTPUT_PROBABILITIES: "FP32", modelrepo.OUTPUT_CLASSES: "INT64"}
PLATFORM = "tensorflow_savedmodel"  # Triton's name for the platform


def server_version() -> str:
    try:
        return package_metadata.version("mnist-mlp-platform")
    except package_metadata.PackageNotFoundError:  # running from a checkout that is not installed
        return "0"


def check_input_header(name: str, datatype: str, shape: Sequence[int], max_images: int) -> int:
    """Validate an input tensor's name, datatype and shape; returns N."""
    if name != INPUT_NAME:
        raise InvalidInput(f"input {shown(name)} is unknown; the model has one input, {INPUT_NAME!r}")
    if datatype not in INPUT_DATATYPES:
        raise InvalidInput(
            f"input {INPUT_NAME!r} has datatype {shown(datatype)}; expected one of {sorted(INPUT_DATATYPES)}"
        )
    shape = list(shape)
    if not (len(shape) == 3 and shape[1:] == [ROWS, COLS]) and not (len(shape) == 2 and shape[1] == PIXELS):
        raise InvalidInput(
            f"input {INPUT_NAME!r} has shape {shown(shape)}; expected [N, {ROWS}, {COLS}] or [N, {PIXELS}]"
        )
    check_count(shape[0], max_images)
    return shape[0]


def images_from_array(values: np.ndarray, datatype: str, count: int, field: str) -> np.ndarray:
    """Typed values (any shape, N*784 elements) -> float32 [N, 28, 28] in range."""
    if values.size != count * PIXELS:
        raise InvalidInput(
            f"{field} has {values.size} values; shape [{count}, ...] of 28x28 images needs {count * PIXELS}"
        )
    images = values.reshape(count, ROWS, COLS)
    if values.dtype == np.uint8:  # raw bytes or whole JSON pixels: in range by construction, either datatype
        return images.astype(np.float32)
    if datatype == "UINT8":
        if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
            raise InvalidInput(f"{field} is UINT8 but holds fractional values")
        if values.size and (values.min() < 0 or values.max() > 255):
            raise InvalidInput(f"{field} is UINT8 but holds values outside 0..255")
        return images.astype(np.float32)  # whole numbers in 0..255: finite and in range, no check_range
    return check_range(images.astype(np.float32, copy=False), field)


def images_from_raw(data: bytes, datatype: str, count: int, field: str) -> np.ndarray:
    """Little-endian raw bytes (``raw_input_contents``, the binary-data extension) -> float32 images."""
    dtype = INPUT_DATATYPES[datatype]
    needed = count * PIXELS * dtype.itemsize
    if len(data) != needed:
        raise InvalidInput(f"{field} has {len(data)} bytes; {count} images of 28x28 {datatype} need {needed}")
    return images_from_array(np.frombuffer(data, dtype), datatype, count, field)


def requested_outputs(names: Sequence[str]) -> list[str]:
    """The outputs to return, in model order (all when none are named)."""
    if not names:
        return list(OUTPUT_NAMES)
    unknown = sorted(set(names) - set(OUTPUT_NAMES))
    if unknown:
        raise InvalidInput(
            f"requested outputs {shown(unknown)} are unknown; outputs are {list(OUTPUT_NAMES)}"
        )
    return [name for name in OUTPUT_NAMES if name in names]


def output_arrays(probabilities: np.ndarray, classes: np.ndarray) -> dict[str, np.ndarray]:
    return {
        modelrepo.OUTPUT_PROBABILITIES: probabilities.astype(np.float32, copy=False),
        modelrepo.OUTPUT_CLASSES: classes.astype(np.int64, copy=False),
    }


def model_metadata(model: LoadedModel, versions: Sequence[LoadedModel]) -> dict:
    """The v2 model metadata (REST JSON shape; the gRPC servicer copies it into its message)."""
    return {
        "name": model.name,
        "versions": [str(loaded.version) for loaded in versions],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, ROWS, COLS]}],
        "outputs": [
            {
                "name": modelrepo.OUTPUT_PROBABILITIES,
                "datatype": "FP32",
                "shape": [-1, modelrepo.NUM_CLASSES],
            },
            {"name": modelrepo.OUTPUT_CLASSES, "datatype": "INT64", "shape": [-1]},
        ],
    }
