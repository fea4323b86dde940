"""The one DIMSE status table (dcmnode.status): every domain error class against every service."""

from __future__ import annotations

import pytest

from dcmnode import errors, status
from dcmnode.status import Service

STORE, FIND, MOVE, GET = Service.STORE, Service.FIND, Service.MOVE, Service.GET

# class: (C-STORE, C-FIND, C-MOVE, C-GET), written out by hand from PS3.4 Tables B.2-1, C.4-1, C.4-2 and C.4-3.
EXPECTED: dict[type[errors.DcmnodeError], tuple[int, int, int, int]] = {
    errors.DcmnodeError: (0x0110, 0xC320, 0xC520, 0xC420),
    errors.InvalidInstance: (0xC000, 0xC000, 0xC000, 0xC000),
    errors.SopClassMismatch: (0xA900, 0xA900, 0xA900, 0xA900),
    errors.DuplicateInstance: (0x0111, 0xC320, 0xC520, 0xC420),
    errors.Conflict: (0x0110, 0xC320, 0xC520, 0xC420),
    errors.StorageFull: (0xA700, 0xA700, 0xC520, 0xC420),  # A700 is no C-MOVE/C-GET status (those have A701/A702)
    errors.NotFound: (0x0110, 0xC320, 0xC520, 0xC420),
    errors.InvalidRequest: (0x0110, 0xA900, 0xA900, 0xA900),  # a bad identifier
    errors.UnsupportedMediaType: (0x0110, 0xC320, 0xC520, 0xC420),
    errors.NotAcceptable: (0x0110, 0xC320, 0xC520, 0xC420),
    errors.PayloadTooLarge: (0x0110, 0xC320, 0xC520, 0xC420),
    errors.ConfigError: (0x0110, 0xC320, 0xC520, 0xC420),
    errors.Cancelled: (0x0110, 0xFE00, 0xFE00, 0xFE00),  # C.4.1.1.4 etc.: terminated due to a Cancel request
    errors.Unauthorized: (0x0124, 0x0124, 0x0124, 0x0124),  # Refused: Not Authorized (every service)
    errors.Forbidden: (0x0124, 0x0124, 0x0124, 0x0124),
    errors.HiddenStudy: (0x0124, 0x0124, 0x0124, 0x0124),  # a restricted writer and a study it does not see
    errors.AuditUnavailable: (0xA700, 0xA700, 0xA702, 0xA702),  # audit.fail_closed: out of resources
    errors.TooManyRequests: (0xA700, 0xA700, 0xA702, 0xA702),  # a client over its limits: out of resources
    # Referenced Transfer Syntax not supported (PS3.18 Table 10.5.3-2); C-STORE may answer any Cxxx (B.2.3)
    errors.UnsupportedTransferSyntax: (0xC122, 0xC122, 0xC122, 0xC122),
    errors.DeidentificationRefused: (0x0110, 0xC320, 0xC520, 0xC420),  # processing failure: not sent
}


def error_classes() -> set[type[errors.DcmnodeError]]:
    found, todo = set(), [errors.DcmnodeError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return {cls for cls in found if cls.__module__ == errors.__name__}


def test_the_expected_table_names_every_domain_error() -> None:
    """A new error class needs a conscious row here: which Status each DIMSE service answers it with."""
    assert error_classes() == set(EXPECTED)


@pytest.mark.parametrize("cls", sorted(EXPECTED, key=lambda c: c.__name__))
def test_failure_over_the_whole_table(cls: type[errors.DcmnodeError]) -> None:
    for service, expected in zip((STORE, FIND, MOVE, GET), EXPECTED[cls], strict=True):
        answer = status.failure(cls("why it failed"), service)
        assert answer.Status == expected, service
        assert answer.ErrorComment == "why it failed"
        assert answer.Status in status.ANSWERABLE[service]


@pytest.mark.parametrize("cls", sorted(EXPECTED, key=lambda c: c.__name__))
def test_c_store_answers_err_status_as_before(cls: type[errors.DcmnodeError]) -> None:
    assert status.code(cls("x"), STORE) == cls.status


def test_unable_to_process_codes_are_pynetdicom_qrscp_s() -> None:
    assert (status.UNABLE_TO_PROCESS[FIND], status.UNABLE_TO_PROCESS[MOVE], status.UNABLE_TO_PROCESS[GET]) == (
        0xC320,
        0xC520,
        0xC420,
    )


def test_error_comment_is_clipped_to_64_characters() -> None:
    reason = "x" * 63 + "é" + "y" * 100
    answer = status.failure(errors.InvalidRequest(reason), FIND)
    assert answer.ErrorComment == reason[:64] and len(answer.ErrorComment) == 64


def test_an_error_with_its_own_status_keeps_it_where_the_service_allows() -> None:
    class OutOfMatches(errors.DcmnodeError):
        status = 0xA701

    assert [status.code(OutOfMatches("x"), s) for s in (STORE, FIND, MOVE, GET)] == [0xA701, 0xC320, 0xA701, 0xA701]


def test_a_subclass_of_invalid_request_is_a_bad_identifier_too() -> None:
    class BadKey(errors.InvalidRequest):
        pass

    assert [status.code(BadKey("x"), s) for s in (STORE, FIND, MOVE, GET)] == [0x0110, 0xA900, 0xA900, 0xA900]


def test_stow_failure_reasons_are_c_store_s_but_not_authorized() -> None:
    """PS3.18 Table 10.5.3-2 has no 0x0124: a STOW-RS part refused for access answers 0x0110, the rest as C-STORE."""
    assert status.stow_reason(errors.HiddenStudy("x")) == 0x0110
    for cls in (errors.InvalidInstance, errors.SopClassMismatch, errors.DuplicateInstance, errors.StorageFull):
        assert status.stow_reason(cls("x")) == cls.status
