"""Accept header parsing and media-type negotiation for DICOMweb (PS3.18 §8.7).

Tolerant by design (real clients differ): parameters quoted or not (OHIF's ``omitQuotationForMultipartRequest``),
several media ranges in one header or in repeated headers, ``q`` weights, ``*/*``. A range we cannot serve
is skipped; when none is left the caller answers 406 with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dcmnode.errors import NotAcceptable

_SPLIT = re.compile(r',(?=(?:[^"]*"[^"]*")*[^"]*$)')  # commas outside double quotes
_PARAM_SPLIT = re.compile(r';(?=(?:[^"]*"[^"]*")*[^"]*$)')


@dataclass(frozen=True, slots=True)
class MediaRange:
    type: str  # lower case, e.g. "multipart/related", "*/*"
    params: dict[str, str] = field(default_factory=dict)  # lower-case keys, unquoted values
    q: float = 1.0

    def matches(self, media_type: str) -> bool:
        if self.type == "*/*":
            return True
        major, _, minor = self.type.partition("/")
        other_major, _, _ = media_type.partition("/")
        return self.type == media_type or (minor == "*" and major == other_major)


def parse(header: str | None) -> list[MediaRange]:
    """Media ranges in order of preference (q, then position); ``*/*`` alone for a missing header."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[tuple[float, int, MediaRange]] = []
    for position, item in enumerate(_SPLIT.split(header)):
        pieces = [p.strip() for p in _PARAM_SPLIT.split(item)]
        media = pieces[0].lower()
        if not media:
            continue
        if "/" not in media:
            media = media + "/*" if media == "*" else media
        params: dict[str, str] = {}
        weight = 1.0
        for piece in pieces[1:]:
            key, _, value = piece.partition("=")
            key, value = key.strip().lower(), value.strip().strip('"').strip()
            if key == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
            elif key:
                params[key] = value
        if weight > 0:
            ranges.append((-weight, position, MediaRange(media, params, weight)))
    ranges.sort(key=lambda r: (r[0], r[1]))
    return [r[2] for r in ranges]


JSON_TYPES = ("application/dicom+json", "application/json")


def require_json(header: str | None) -> None:
    """QIDO and /metadata answer application/dicom+json: 406 if the client accepts nothing of the kind."""
    for media in parse(header):
        if any(media.matches(t) for t in JSON_TYPES):
            return
    raise NotAcceptable(f"this resource is application/dicom+json; the request accepts only {header}")
