"""Index values as the DICOM JSON Model (PS3.18 Annex F).

Query rows hold text (multi-values joined by backslash) and integers; this turns them into
``{"ggggeeee": {"vr": ..., "Value": [...]}}`` with attributes in tag order (F.2.1), numbers for IS/DS/US
(F.2.3), person names as ``{"Alphabetic", "Ideographic", "Phonetic"}`` groups (F.2.2), and no ``Value`` for an
attribute that is present but empty (F.2.5).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from dcmnode.core.query import ATTRIBUTES

_NUMBER_VRS = {"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV"}
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def element(vr: str, value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {"vr": vr}
    if isinstance(value, (int, float)):
        return {"vr": vr, "Value": [value]}
    parts = str(value).split("\\")
    if vr == "PN":
        return {"vr": vr, "Value": [_person_name(p) for p in parts]}
    if vr in _NUMBER_VRS:
        return {"vr": vr, "Value": [_number(p) for p in parts]}
    return {"vr": vr, "Value": parts}


def _person_name(value: str) -> dict[str, str] | None:
    if not value:
        return None
    groups = value.split("=")
    return {name: text for name, text in zip(_PN_GROUPS, groups, strict=False) if text}


def _number(text: str) -> int | float | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return None


def row_to_json(row: Mapping[str, Any], extra: Mapping[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    items: dict[int, dict[str, Any]] = dict(extra or {})
    for name, value in row.items():
        attr = ATTRIBUTES[name]
        items[attr.tag] = element(attr.vr, value)
    return {f"{tag:08X}": items[tag] for tag in sorted(items)}


def dumps(objects: Iterable[dict[str, Any]]) -> bytes:
    return json.dumps(list(objects), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
