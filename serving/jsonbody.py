"""JSON request bodies -> Python values and numeric arrays, with the work per body bounded up front.

Shared by the HTTP routes of both JSON APIs (v2 REST and TF Serving REST): orjson parses, a byte scan
refuses bodies holding more values than the per-request image limit can need before they are parsed,
and flat lists of whole pixels take a fast path.
"""

from __future__ import annotations

import numpy as np
import orjson

from .errors import InvalidInput
from .validation import PIXELS, ROWS


def json_budget(max_images: int) -> tuple[int, int, int]:
    """The most arrays, objects and commas a JSON request of ``max_images`` images can need.

    Nested ``[N, 28, 28]`` data has 1 + N + 28 N arrays and about 784 N commas; TF Serving's row form
    adds one object per image; the rest of a request (names, shape, outputs, parameters) fits in the
    slack. A body over any of these is refused before it is parsed: parsing costs CPU in proportion to
    the values a body holds, on the event loop every request shares (16 MB of ``[],`` took 5 s).
    """
    return 1 + max_images * (1 + ROWS) + 256, max_images + 256, max_images * (PIXELS + ROWS + 1) + 1024


def parse_json(body: bytes, max_images: int) -> dict:
    arrays, objects, commas = json_budget(max_images)
    # bytes.count is a C scan (~1 ms per MB); brackets inside strings count too, which only makes the
    # budget stricter for requests whose strings are full of brackets (none of ours are).
    if body.count(b"[") > arrays or body.count(b"{") > objects or body.count(b",") > commas:
        raise InvalidInput(
            f"the body holds more JSON values than {max_images} images (the per-request limit) can need "
            f"(at most {arrays} arrays, {objects} objects, {commas} commas); refused before parsing"
        )
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:  # also invalid UTF-8, NaN literals, integers beyond 64 bits
        raise InvalidInput(f"the body is not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"the body must be a JSON object, got {type(value).__name__}")
    return value


def numeric_array(data: object, field: str) -> np.ndarray:
    """A JSON list of numbers (nested or flat) -> ndarray; strings, booleans, nulls, ragged lists are 400."""
    pixels = whole_pixels(data)
    if pixels is not None:
        return pixels
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"{field} must be a list of numbers with a regular (non-ragged) shape") from None
    if array.dtype.kind not in "iuf":
        raise InvalidInput(f"{field} must hold only numbers (no strings, booleans, nulls or ragged lists)")
    return array


def whole_pixels(data: object) -> np.ndarray | None:
    """The usual payload, a flat list of integers 0..255, as uint8; None for anything else.

    ``bytearray`` checks in C that every item is an integer in range(256): ~3 us for one image, where
    ``np.asarray`` needs ~25 us to find out that the list holds integers. Anything else (fractions,
    nesting, values out of range, strings, nulls) fails it and takes the general path, which accepts
    and refuses exactly what it did before.
    """
    # A list that starts with an int (not a bool): np.asarray would make it an integer array too, while
    # it refuses a list of booleans alone.
    if type(data) is not list or not data or type(data[0]) is not int:
        return None
    try:
        return np.frombuffer(bytearray(data), np.uint8)
    except (TypeError, ValueError, OverflowError):
        return None
