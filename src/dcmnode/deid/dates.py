"""Date shifting for Retain Longitudinal Temporal Information with Modified Dates (PS3.15 E.3.6).

``shift_da`` and ``shift_dt`` move DA and DT values by whole days (negative: back in time), so that intervals
between a patient's dates stay exact; times, fractions and UTC offsets are kept (a whole-day shift does not touch
them). Both take the element's string value as pydicom gives it:

- several values (``\\``-separated) are each shifted;
- a range ``A-B`` (and the open ``A-``, ``-B``, as in a query) has both ends shifted;
- a partial value (DT ``YYYY`` or ``YYYYMM``; PS3.5 6.2 allows them in DT) is shifted as the middle of its year or
  month and given back in the same unit, which keeps the error below half the unit;
- the ACR-NEMA form ``YYYY.MM.DD`` (PS3.5 6.2 note, still met in old DA values) is read and written as YYYYMMDD;
- anything else (not a date, a date that does not exist, a shift out of the years 1-9999) gives "": an invalid
  value is removed, never kept as it was.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, timedelta

_DA = re.compile(r"^(\d{4})(?:(\d{2})(\d{2})?)?$")
_ACR_NEMA = re.compile(r"^(\d{4})\.(\d{2})\.(\d{2})$")
# DT: YYYY[MM[DD[HH[MM[SS[.F{1,6}]]]]]][&ZZXX] (PS3.5 Table 6.2-1).
_DT = re.compile(r"^(\d{4})(?:(\d{2})(?:(\d{2})(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$")


class _Invalid(ValueError):
    pass


def _shift_date(year: str, month: str | None, day: str | None, days: int) -> str:
    """The date (or its year / month, as the middle of the unit) moved by ``days``, in the unit it came in."""
    try:
        if day is not None and month is not None:
            moved = date(int(year), int(month), int(day)) + timedelta(days=days)
            return f"{moved.year:04d}{moved.month:02d}{moved.day:02d}"
        if month is not None:
            moved = date(int(year), int(month), 15) + timedelta(days=days)
            return f"{moved.year:04d}{moved.month:02d}"
        moved = date(int(year), 7, 2) + timedelta(days=days)
        return f"{moved.year:04d}"
    except (ValueError, OverflowError):
        raise _Invalid(year) from None


def _one_da(value: str, days: int) -> str:
    match = _DA.match(value) or _ACR_NEMA.match(value)
    if not match:
        raise _Invalid(value)
    year, month, day = match.groups()
    return _shift_date(year, month, day, days)


def _one_dt(value: str, days: int) -> str:
    match = _DT.match(value)
    if not match:
        raise _Invalid(value)
    year, month, day, time, offset = match.groups()
    if offset is not None and not (int(offset[1:3]) <= 14 and int(offset[3:]) < 60):
        raise _Invalid(value)
    hms = [int(time[i : i + 2]) for i in range(0, min(len(time or ""), 6), 2)]
    if any(n > limit for n, limit in zip(hms, (23, 59, 60), strict=False)):  # 60: a leap second
        raise _Invalid(value)
    return _shift_date(year, month, day, days) + (time or "") + (offset or "")


def _shift(value: str, days: int, shift_one: Callable[[str, int], str]) -> str:
    out = []
    for part in value.split("\\"):
        part = part.strip(" \x00")
        try:
            out.append(_one_or_range(part, days, shift_one) if part else "")
        except _Invalid:
            out.append("")
    return "\\".join(out) if any(out) else ""


def _one_or_range(value: str, days: int, shift_one: Callable[[str, int], str]) -> str:
    """One value, else a range ``A-B``, ``A-``, ``-B`` with each end present shifted. A DT's UTC offset may carry a
    '-' of its own (``20240101-0500-20240102-0500``): each '-' is tried as the range's until both ends read."""
    try:
        return shift_one(value, days)
    except _Invalid:
        if "-" not in value:
            raise
    for at in (m.start() for m in re.finditer("-", value)):
        left, right = value[:at], value[at + 1 :]
        if not left and not right:
            break
        try:
            return f"{shift_one(left, days) if left else ''}-{shift_one(right, days) if right else ''}"
        except _Invalid:
            continue
    raise _Invalid(value)


def shift_da(value: str, days: int) -> str:
    """A DA value (one or several, or a range) moved by ``days`` (negative: back); "" when it is not a date."""
    return _shift(value, days, _one_da)


def shift_dt(value: str, days: int) -> str:
    """A DT value (one or several, or a range) moved by ``days``; time, fraction and UTC offset kept; "" when
    invalid."""
    return _shift(value, days, _one_dt)
