"""Turns request payloads into float32 [N, 28, 28] arrays, rejecting anything outside the contract."""

from __future__ import annotations

import numpy as np

import modelrepo

from .errors import InvalidInput
from .wire import shown

ROWS, COLS = modelrepo.IMAGE_SHAPE
PIXELS = ROWS * COLS
LOW, HIGH = modelrepo.PIXEL_MIN, modelrepo.PIXEL_MAX


def check_count(count: int, max_images: int) -> None:
    if count == 0:
        raise InvalidInput("the batch is empty: send at least one image")
    if count > max_images:
        raise InvalidInput(f"the batch has {count} images, more than the limit of {max_images} per request")


def images_from_uint8(data: bytes, num_images: int, max_images: int) -> np.ndarray:
    """Compact form: N*784 bytes, one per pixel. ``num_images`` 0 means infer N."""
    if num_images == 0 and len(data) % PIXELS:
        raise InvalidInput(f"uint8_pixels has {len(data)} bytes, not a multiple of {PIXELS} (28x28)")
    count = num_images or len(data) // PIXELS
    check_count(count, max_images)
    if len(data) != count * PIXELS:
        raise InvalidInput(
            f"uint8_pixels has {len(data)} bytes; {count} images of 28x28 need {count * PIXELS}"
        )
    return np.frombuffer(data, np.uint8).reshape(count, ROWS, COLS).astype(np.float32)


def images_from_floats(values: np.ndarray, num_images: int, max_images: int, field: str) -> np.ndarray:
    """Float form: N*784 finite values in [0, 255]. ``num_images`` 0 means infer N."""
    if num_images == 0 and values.size % PIXELS:
        raise InvalidInput(f"{field} has {values.size} values, not a multiple of {PIXELS} (28x28)")
    count = num_images or values.size // PIXELS
    check_count(count, max_images)
    if values.size != count * PIXELS:
        raise InvalidInput(f"{field} has {values.size} values; {count} images of 28x28 need {count * PIXELS}")
    return check_range(values.reshape(count, ROWS, COLS), field)


def check_range(images: np.ndarray, field: str) -> np.ndarray:
    """Reject NaN, infinities and values outside [0, 255] (one vectorised pass each way)."""
    low, high = images.min(), images.max()  # NaN propagates into min/max
    if LOW <= low and high <= HIGH:  # the usual case: NaN and infinities fail these comparisons too
        return images
    if not (np.isfinite(low) and np.isfinite(high)):
        raise InvalidInput(f"{field} contains NaN or infinite values")
    raise InvalidInput(
        f"{field} has values in [{low:g}, {high:g}]; pixels must be raw values in [{LOW:g}, {HIGH:g}]"
    )


def check_shape(shape: list[int], max_images: int, field: str) -> int:
    """A declared tensor shape must be [N, 28, 28]; returns N."""
    if len(shape) != 3 or shape[1:] != [ROWS, COLS]:
        raise InvalidInput(f"{field} has shape {shown(shape)}; expected [N, {ROWS}, {COLS}]")
    check_count(shape[0], max_images)
    return shape[0]
