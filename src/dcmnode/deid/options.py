"""The profile's options (PS3.15 E.3), named as the API and the CLI name them, with their CID 7050 codes."""

from __future__ import annotations

from enum import Enum

from dcmnode.errors import InvalidRequest

BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")


class Option(Enum):
    """Each value is the option's name in ``POST /api/deidentify``, ``dcmnode deidentify --option`` and
    ``[peers.X] deidentify``."""

    RETAIN_SAFE_PRIVATE = "retain-safe-private"
    RETAIN_UIDS = "retain-uids"
    RETAIN_DEVICE_IDENTITY = "retain-device-identity"
    RETAIN_INSTITUTION_IDENTITY = "retain-institution-identity"
    RETAIN_PATIENT_CHARACTERISTICS = "retain-patient-characteristics"
    RETAIN_LONGITUDINAL_FULL_DATES = "retain-longitudinal-full-dates"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "retain-longitudinal-modified-dates"
    CLEAN_DESCRIPTORS = "clean-descriptors"
    CLEAN_STRUCTURED_CONTENT = "clean-structured-content"
    CLEAN_GRAPHICS = "clean-graphics"
    CLEAN_PIXEL_DATA = "clean-pixel-data"


# CID 7050 De-identification Method (PS3.16): code value and meaning of each option.
CODES: dict[Option, tuple[str, str]] = {
    Option.CLEAN_PIXEL_DATA: ("113101", "Clean Pixel Data Option"),
    Option.CLEAN_GRAPHICS: ("113103", "Clean Graphics Option"),
    Option.CLEAN_STRUCTURED_CONTENT: ("113104", "Clean Structured Content Option"),
    Option.CLEAN_DESCRIPTORS: ("113105", "Clean Descriptors Option"),
    Option.RETAIN_LONGITUDINAL_FULL_DATES: ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    Option.RETAIN_PATIENT_CHARACTERISTICS: ("113108", "Retain Patient Characteristics Option"),
    Option.RETAIN_DEVICE_IDENTITY: ("113109", "Retain Device Identity Option"),
    Option.RETAIN_UIDS: ("113110", "Retain UIDs Option"),
    Option.RETAIN_SAFE_PRIVATE: ("113111", "Retain Safe Private Option"),
    Option.RETAIN_INSTITUTION_IDENTITY: ("113112", "Retain Institution Identity Option"),
}


def parse_options(names: list[str] | tuple[str, ...]) -> frozenset[Option]:
    """Option names (``basic`` alone, or with options, is the profile itself) → the options; InvalidRequest
    naming an unknown one. Full and Modified Dates exclude each other (PS3.15 E.3.6)."""
    found: set[Option] = set()
    for name in names:
        if name == "basic":
            continue
        try:
            found.add(Option(name))
        except ValueError:
            known = ", ".join(o.value for o in Option)
            raise InvalidRequest(f"unknown de-identification option {name!r} (known: basic, {known})") from None
    dates = {Option.RETAIN_LONGITUDINAL_FULL_DATES, Option.RETAIN_LONGITUDINAL_MODIFIED_DATES}
    if dates <= found:
        raise InvalidRequest("retain-longitudinal-full-dates and retain-longitudinal-modified-dates exclude each other")
    return frozenset(found)
