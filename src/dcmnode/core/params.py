"""Numbers from requests (URL query and path parameters, headers): one checked parser for all of them.

Python's ``int()`` and ``float()`` take more than a request should: ``str.isdigit()`` is true for ``"²"``, which
``int()`` refuses; ``int()`` accepts ``"1_000"``, ``" 7 "`` and 4300 digits (past that it raises); ``float()``
accepts ``"nan"``, ``"inf"`` and ``"1e400"`` (infinite). A value past SQLite's 64-bit integers overflows there
(``?offset=99999999999999999999999999`` once answered 500). So every number a request carries goes through here:
ASCII digits only (a sign and a decimal form where the parameter is a real number), finite, and within the
parameter's range; anything else is ``InvalidRequest`` (HTTP 400) naming the parameter and its range.
"""

from __future__ import annotations

import math
import re

from dcmnode.errors import InvalidRequest

INT64_MAX = 2**63 - 1  # SQLite's INTEGER, the widest number any parameter reaches
_INTEGER = re.compile(r"[0-9]{1,19}")
_SIGNED = re.compile(r"[+-]?[0-9]{1,19}")
_REAL = re.compile(r"[+-]?([0-9]{1,32}(\.[0-9]{0,32})?|\.[0-9]{1,32})([eE][+-]?[0-9]{1,3})?")
_SHOWN = 40  # characters of a bad value repeated in the error


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def integer(name: str, text: str, minimum: int = 0, maximum: int = INT64_MAX) -> int:
    """``text`` as an integer from ``minimum`` to ``maximum`` (ASCII digits, a sign only where negatives are
    allowed), else InvalidRequest naming ``name``."""
    pattern = _SIGNED if minimum < 0 else _INTEGER
    value = int(text) if text.isascii() and pattern.fullmatch(text) else None
    if value is None or not minimum <= value <= maximum:
        raise InvalidRequest(f"{name}={_shown(text)}: expected an integer from {minimum} to {maximum}")
    return value


def real(name: str, text: str, minimum: float = -1e300, maximum: float = 1e300) -> float:
    """``text`` as a finite real number from ``minimum`` to ``maximum`` (decimal or exponent form; no ``nan``,
    ``inf`` or hex), else InvalidRequest naming ``name``."""
    value = float(text) if text.isascii() and _REAL.fullmatch(text.strip()) else math.nan
    if not (math.isfinite(value) and minimum <= value <= maximum):
        raise InvalidRequest(f"{name}={_shown(text)}: expected a number from {minimum:g} to {maximum:g}")
    return value


def reals(name: str, text: str, count: tuple[int, ...], minimum: float = -1e300, maximum: float = 1e300) -> list[float]:
    """Comma-separated real numbers, as many as one of ``count``, each checked as ``real``."""
    items = text.split(",")
    if len(items) not in count:
        raise InvalidRequest(f"{name}={_shown(text)}: expected {' or '.join(map(str, count))} numbers")
    try:
        return [real(name, item, minimum, maximum) for item in items]
    except InvalidRequest as exc:
        raise InvalidRequest(f"{name}={_shown(text)}: {exc.reason.split(': ', 1)[1]} each") from exc


def content_length(header: str | None) -> int | None:
    """A Content-Length header's value (None when absent or not a number: the body's own length then counts)."""
    if not header:
        return None
    text = header.strip()
    return int(text) if text.isascii() and _INTEGER.fullmatch(text) else None
