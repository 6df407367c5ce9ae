"""What every protocol's codec shares: the one version parser and the shortening of echoed client text.

Versions arrive as strings on the Open Inference Protocol (gRPC and REST) and in REST paths of both
APIs; all of them go through :func:`parse_version`. Error messages quote what the client sent through
:func:`shown`, so a 100,000-character name comes back as a short excerpt (a long gRPC status message
would exceed the client's metadata limit and turn NOT_FOUND into RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

from .errors import InvalidInput

VERSION_DIGITS = 18  # every such number fits TF Serving's int64 version
ECHO_CHARACTERS = 64  # the most of one client string an error message repeats
ECHO_ITEMS = 8  # the most items of a client list an error message repeats


def shown(value: object) -> str:
    """``value`` for an error message: strings quoted and cut to ECHO_CHARACTERS, lists to ECHO_ITEMS."""
    if isinstance(value, str):
        if len(value) <= ECHO_CHARACTERS:
            return repr(value)
        return f"{value[:ECHO_CHARACTERS]!r}... ({len(value)} characters)"
    if isinstance(value, list | tuple):
        items = ", ".join(shown(item) for item in value[:ECHO_ITEMS])
        if len(value) > ECHO_ITEMS:
            return f"[{items}, ...] ({len(value)} items)"
        return f"[{items}]"
    text = repr(value)
    return text if len(text) <= ECHO_CHARACTERS else f"{text[:ECHO_CHARACTERS]}... ({len(text)} characters)"


def parse_version(text: str, field: str) -> int | None:
    """A version given as a string: '' is the newest loaded; else 1 to 18 ASCII digits, not zero.

    ``str.isdigit`` alone would accept '²' or '①' (which ``int`` refuses) and numbers of any length
    (``int`` refuses more than 4,300 digits, and converting fewer still costs time).
    """
    if text == "":
        return None
    if len(text) > VERSION_DIGITS or not (text.isascii() and text.isdigit()) or int(text) == 0:
        raise InvalidInput(
            f"{field} must be a positive integer of at most {VERSION_DIGITS} digits 0-9 "
            f"(empty: the newest), got {shown(text)}"
        )
    return int(text)
