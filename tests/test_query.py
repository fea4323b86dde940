"""One query engine behind QIDO-RS and C-FIND: the same matching cases through both, over a real uvicorn
server and a real pynetdicom association, plus each interface's own rules."""

from __future__ import annotations

import copy
import io
import subprocess
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from dcmnode.core.parse import parse_bytes
from dcmnode.model import Source, SourceKind
from tests.conftest import HOST, LiveServer
from tests.factories import CORPUS, ct_series, part10, query_corpus

PIDS = [row[1] for row in CORPUS]


@pytest.fixture
def corpus_live(live_factory: Callable[..., LiveServer]) -> tuple[LiveServer, dict[str, str]]:
    """A live node holding the corpus; returns it and PatientID -> StudyInstanceUID."""
    live = live_factory(http={"max_query_results": 50})
    studies = {}
    for ds in query_corpus():
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        live.node.services.ingest.store_bytes(buffer.getvalue(), Source(SourceKind.IMPORT))
        studies[ds.PatientID] = ds.StudyInstanceUID
    return live, studies


def qido(live: LiveServer, path: str, params: dict[str, str] | str | None = None, **kw: Any) -> httpx.Response:
    return httpx.get(f"{live.url}/dicom-web{path}", params=params, timeout=30, **kw)


def find(live: LiveServer, level: str, keys: dict[str, str], model: str = "study") -> list[Dataset]:
    sop_class = (
        StudyRootQueryRetrieveInformationModelFind if model == "study" else PatientRootQueryRetrieveInformationModelFind
    )
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(sop_class)
    assoc = ae.associate(HOST, live.node.dimse_port, ae_title="DCMNODE")
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    results, final = [], None
    try:
        for status, ds in assoc.send_c_find(identifier, sop_class):
            if status.Status == 0xFF00:
                results.append(ds)
            else:
                final = status
    finally:
        assoc.release()
    assert final is not None and final.Status == 0x0000, final
    return results


def value(obj: dict[str, Any], tag: str) -> Any:
    values = obj.get(tag, {}).get("Value", [None])
    first = values[0]
    return first.get("Alphabetic") if isinstance(first, dict) else first


# (matching keys at study level, PatientIDs expected). Every case runs through QIDO-RS and C-FIND.
CASES = [
    ({}, PIDS),
    ({"PatientName": "doe*"}, ["P001", "P002", "P006"]),  # wildcard, case-insensitive PN
    ({"PatientName": "DOE^JOHN"}, ["P001"]),  # single value, case-insensitive PN
    ({"PatientName": "doe^joh?"}, ["P001"]),  # ? is one character
    ({"PatientName": "*ü*"}, ["P004"]),  # non-ASCII
    ({"PatientName": "O'Brien*"}, ["P005"]),
    ({"StudyDate": "20200101-20201231"}, ["P001", "P002"]),  # closed range, inclusive
    ({"StudyDate": "-20191231"}, ["P004"]),  # open lower bound
    ({"StudyDate": "20211231-"}, ["P003", "P005"]),  # open upper bound
    ({"StudyDate": "20200615"}, ["P002"]),
    ({"StudyTime": "-1000"}, ["P001", "P005"]),  # 0830, 0930 (stored with and without seconds)
    ({"StudyTime": "1015-1015"}, ["P004"]),  # 101500.5: the bound covers the minute it names
    ({"ModalitiesInStudy": "SR"}, ["P003"]),  # computed from the series
    ({"ModalitiesInStudy": "MR\\US"}, ["P002", "P005", "P006"]),  # any of a list
    ({"AccessionNumber": "ACC_4"}, ["P004"]),  # _ is literal
    ({"AccessionNumber": "ACC-?"}, ["P001", "P002", "P003", "P005"]),
    ({"AccessionNumber": "acc-1"}, []),  # text matching is case-sensitive
    ({"StudyDescription": "*[contrast]"}, ["P003"]),  # [ is literal
    ({"StudyDescription": "*100%"}, ["P004"]),  # % is literal
    ({"PatientID": "P00?", "StudyDate": "20200101-20201231"}, ["P001", "P002"]),
    ({"PatientName": "*", "PatientID": "P001"}, ["P001"]),  # "*" alone is universal
]


@pytest.mark.parametrize(("keys", "expected"), CASES, ids=[str(c[0]) for c in CASES])
def test_qido_and_cfind_match_the_same_studies(corpus_live: Any, keys: dict[str, str], expected: list[str]) -> None:
    live, _ = corpus_live
    response = qido(live, "/studies", keys)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    by_qido = {value(obj, "00100020"): obj for obj in response.json()}
    assert sorted(by_qido) == sorted(expected)

    keys_returned = {"PatientID": "", "PatientName": "", "StudyInstanceUID": "", "StudyDate": ""}
    keys_returned |= {"NumberOfStudyRelatedInstances": "", "NumberOfStudyRelatedSeries": "", "ModalitiesInStudy": ""}
    by_find = {str(ds.PatientID): ds for ds in find(live, "STUDY", keys_returned | keys)}
    assert sorted(by_find) == sorted(expected)
    for pid, ds in by_find.items():  # same values through both interfaces
        obj = by_qido[pid]
        assert str(ds.PatientName) == value(obj, "00100010")
        assert ds.StudyInstanceUID == value(obj, "0020000D")
        assert (ds.StudyDate or None) == value(obj, "00080020")
        assert int(ds.NumberOfStudyRelatedInstances) == value(obj, "00201208")
        assert int(ds.NumberOfStudyRelatedSeries) == value(obj, "00201206")
        modalities = ds.ModalitiesInStudy
        assert (list(modalities) if isinstance(modalities, MultiValue) else [modalities]) == obj["00080061"]["Value"]


def test_counts_and_modalities_are_computed(corpus_live: Any) -> None:
    live, studies = corpus_live
    [obj] = qido(live, "/studies", {"StudyInstanceUID": studies["P003"]}).json()
    assert obj["00080061"]["Value"] == ["CT", "SR"]
    assert value(obj, "00201206") == 2  # series
    assert value(obj, "00201208") == 4  # instances
    series = qido(live, f"/studies/{studies['P003']}/series").json()
    assert sorted(value(s, "00080060") for s in series) == ["CT", "SR"]
    assert all(value(s, "00201209") == 2 for s in series)
    assert all(
        value(s, "00081190").endswith(f"/studies/{studies['P003']}/series/{value(s, '0020000E')}") for s in series
    )


def test_fuzzy_matching_finds_name_components_in_any_order(corpus_live: Any) -> None:
    live, _ = corpus_live
    found = qido(live, "/studies", {"PatientName": "joh", "fuzzymatching": "true"}).json()
    assert sorted(value(o, "00100020") for o in found) == ["P001", "P006"]
    found = qido(live, "/studies", {"PatientName": "liam o", "fuzzymatching": "true"}).json()
    assert [value(o, "00100020") for o in found] == ["P005"]
    assert qido(live, "/studies", {"PatientName": "joh", "fuzzymatching": "false"}).json() == []


def test_uid_list_matching(corpus_live: Any) -> None:
    live, studies = corpus_live
    uids = f"{studies['P001']}\\{studies['P004']}"
    found = qido(live, "/studies", {"StudyInstanceUID": uids}).json()
    assert sorted(value(o, "00100020") for o in found) == ["P001", "P004"]
    by_find = find(live, "STUDY", {"StudyInstanceUID": uids, "PatientID": ""})
    assert sorted(str(d.PatientID) for d in by_find) == ["P001", "P004"]


def test_includefield_by_keyword_tag_list_and_all(corpus_live: Any) -> None:
    live, studies = corpus_live
    params = {"StudyInstanceUID": studies["P003"]}
    [plain] = qido(live, "/studies", params).json()
    assert "00081030" not in plain  # StudyDescription is not a default study attribute
    [by_keyword] = qido(live, "/studies", params | {"includefield": "StudyDescription"}).json()
    assert value(by_keyword, "00081030") == "Abdomen [contrast]"
    [by_tags] = qido(live, f"/studies?StudyInstanceUID={studies['P003']}&includefield=00081030,00080090").json()
    assert value(by_tags, "00081030") == "Abdomen [contrast]" and value(by_tags, "00080090") == "Ref^Doctor"
    repeated = qido(live, f"/studies?StudyInstanceUID={studies['P003']}&includefield=00081030&includefield=StudyID")
    assert value(repeated.json()[0], "00081030") and value(repeated.json()[0], "00200010") == "1"
    [everything] = qido(live, "/studies", params | {"includefield": "all"}).json()
    assert value(everything, "00081030") == "Abdomen [contrast]" and "00080080" in everything  # InstitutionName
    # OHIF asks for Modality (series level) on a study query: left out, not an error (OHIF#5073)
    assert qido(live, "/studies", params | {"includefield": "00081030,00080060"}).status_code == 200


def test_limit_offset_and_the_warning_when_the_maximum_cuts(corpus_live: Any) -> None:
    live, _ = corpus_live
    everything = [value(o, "00100020") for o in qido(live, "/studies").json()]
    assert len(everything) == len(PIDS)
    page1 = qido(live, "/studies", {"limit": "2"})
    page2 = qido(live, "/studies", {"limit": "2", "offset": "2"})
    assert "warning" not in page1.headers  # the client asked for 2: nothing to warn about
    assert [value(o, "00100020") for o in page1.json() + page2.json()] == everything[:4]
    instances = qido(live, "/instances")  # 16 instances, maximum 50: no cut
    assert len(instances.json()) == 16 and "warning" not in instances.headers


def test_the_maximum_cuts_with_a_warning(live_factory: Callable[..., LiveServer]) -> None:
    live = live_factory(http={"max_query_results": 3})
    for ds in query_corpus():
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        live.node.services.ingest.store_bytes(buffer.getvalue(), Source(SourceKind.IMPORT))
    response = qido(live, "/studies")
    assert len(response.json()) == 3
    assert response.headers["warning"].startswith("299 ")
    response = qido(live, "/studies", {"limit": "1000"})
    assert len(response.json()) == 3 and "warning" in response.headers


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("Foo=1", "Foo"),
        ("StudyDate=2020-01-01", "StudyDate"),
        ("StudyDate=2020*", "StudyDate"),  # no wildcards on dates (PS3.4 C.2.2.2.4)
        ("StudyDate=20200101-20201301x", "StudyDate"),
        ("limit=abc", "limit"),
        ("offset=-1", "offset"),
        ("fuzzymatching=maybe", "fuzzymatching"),
        ("includefield=NoSuchThing", "NoSuchThing"),
        ("StudyInstanceUID=1.2.abc", "StudyInstanceUID"),
        ("Modality=CT", "series-level"),
        ("00081111.00081155=1.2", "sequence"),
    ],
)
def test_bad_parameters_get_400_with_a_reason(corpus_live: Any, query: str, reason: str) -> None:
    live, _ = corpus_live
    response = qido(live, f"/studies?{query}")
    assert response.status_code == 400
    assert reason in response.json()["error"]


def test_no_match_is_200_with_an_empty_array(corpus_live: Any) -> None:
    live, _ = corpus_live
    response = qido(live, "/studies", {"PatientName": "Nobody*"})
    assert response.status_code == 200 and response.json() == []
    response = qido(live, "/studies/1.2.3.4/series")
    assert response.status_code == 200 and response.json() == []


def test_series_and_instances_at_every_level(corpus_live: Any) -> None:
    live, studies = corpus_live
    study = studies["P005"]  # MR + CT
    all_series = qido(live, "/series", {"Modality": "MR"}).json()
    assert sorted(value(s, "00100020") for s in all_series) == ["P002", "P005"]  # study attributes included
    series = qido(live, f"/studies/{study}/series").json()
    assert len(series) == 2 and all("00100020" not in s for s in series)
    series_uid = value(series[0], "0020000E")
    in_series = qido(live, f"/studies/{study}/series/{series_uid}/instances").json()
    assert len(in_series) == 2 and {value(i, "0020000E") for i in in_series} == {series_uid}
    assert [value(i, "00200013") for i in in_series] == [1, 2]
    assert value(in_series[0], "00280010") == 8  # Rows, an integer
    in_study = qido(live, f"/studies/{study}/instances").json()
    assert len(in_study) == 4 and all("0020000E" in i for i in in_study)
    everywhere = qido(live, "/instances", {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"}).json()
    assert len(everywhere) == 4  # the MR series of P002 and P005
    assert all(value(i, "00100020") in ("P002", "P005") for i in everywhere)


def test_accept_header_negotiation(corpus_live: Any) -> None:
    live, _ = corpus_live
    for accept in ("application/dicom+json", "application/json", "*/*", "application/dicom+json; q=0.9, */*"):
        assert qido(live, "/studies", headers={"Accept": accept}).status_code == 200, accept
    refused = qido(live, "/studies", headers={"Accept": 'multipart/related; type="application/dicom+xml"'})
    assert refused.status_code == 406 and "dicom+json" in refused.json()["error"]


def test_dicomweb_client_search_with_percent_encoded_wildcards(corpus_live: Any) -> None:
    live, studies = corpus_live
    client = DICOMwebClient(url=f"{live.url}/dicom-web")
    found = client.search_for_studies(search_filters={"PatientName": "doe*"})  # requests sends %2A
    assert sorted(value(o, "00100020") for o in found) == ["P001", "P002", "P006"]
    series = client.search_for_series(study_instance_uid=studies["P003"])
    assert len(series) == 2
    instances = client.search_for_instances(study_instance_uid=studies["P003"], search_filters={"Modality": "SR"})
    assert len(instances) == 2


def test_cors_preflight_and_headers_for_a_loopback_origin(corpus_live: Any) -> None:
    live, _ = corpus_live
    origin = "http://localhost:3000"
    preflight = httpx.options(
        f"{live.url}/dicom-web/studies",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept, authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "accept" in allowed
    response = qido(live, "/studies", headers={"Origin": origin})
    assert response.headers["access-control-allow-origin"] == origin
    assert "warning" in response.headers["access-control-expose-headers"].lower()
    assert response.headers["cross-origin-resource-policy"] == "cross-origin"
    foreign = qido(live, "/studies", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in foreign.headers


def test_cors_can_be_configured(live_factory: Callable[..., LiveServer]) -> None:
    live = live_factory(http={"cors_origins": ["https://viewer.example.org"]})
    ok = qido(live, "/studies", headers={"Origin": "https://viewer.example.org"})
    assert ok.headers["access-control-allow-origin"] == "https://viewer.example.org"
    loopback = qido(live, "/studies", headers={"Origin": "http://localhost:3000"})
    assert "access-control-allow-origin" not in loopback.headers
    off = live_factory(http={"cors_origins": []})
    assert "access-control-allow-origin" not in qido(off, "/studies", headers={"Origin": "http://localhost"}).headers


def test_cfind_patient_root_and_levels(corpus_live: Any) -> None:
    live, studies = corpus_live
    patients = find(live, "PATIENT", {"PatientID": "P00*", "PatientName": "", "NumberOfPatientRelatedStudies": ""}, "p")
    assert sorted(str(p.PatientID) for p in patients) == sorted(PIDS)
    assert all(int(p.NumberOfPatientRelatedStudies) == 1 for p in patients)
    series = find(live, "SERIES", {"StudyInstanceUID": studies["P005"], "SeriesInstanceUID": "", "Modality": ""}, "p")
    assert sorted(str(s.Modality) for s in series) == ["CT", "MR"]
    images = find(live, "IMAGE", {"SeriesInstanceUID": str(series[0].SeriesInstanceUID), "SOPInstanceUID": ""})
    assert len(images) == 2 and all(i.QueryRetrieveLevel == "IMAGE" for i in images)


def test_cfind_returns_exactly_the_requested_keys_and_empty_unknown_ones(corpus_live: Any) -> None:
    live, _ = corpus_live
    [ds] = find(live, "STUDY", {"PatientID": "P004", "PatientName": "", "PatientComments": "", "StationName": ""})
    assert str(ds.PatientName) == "Müller^Jürgen"  # sent as ISO_IR 192
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert "PatientComments" in ds and not ds.PatientComments  # known, empty in the data
    assert "StudyDescription" not in ds  # not asked for


def test_cfind_refuses_a_bad_identifier(corpus_live: Any) -> None:
    live, _ = corpus_live
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(HOST, live.node.dimse_port, ae_title="DCMNODE")
    try:
        for level in ("PATIENT", "WARD"):  # PATIENT level is not in the study root model
            identifier = Dataset()
            identifier.QueryRetrieveLevel = level
            identifier.PatientID = ""
            statuses = [s for s, _ in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)]
            assert [s.Status for s in statuses] == [0xA900]
            assert statuses[0].ErrorComment
    finally:
        assoc.release()


def test_findscu_from_dcmtk(corpus_live: Any) -> None:
    live, studies = corpus_live
    result = subprocess.run(
        ["findscu", "-S", "-aet", "FINDSCU", "-aec", "DCMNODE", HOST, str(live.node.dimse_port)]
        + ["-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=doe*", "-k", "StudyInstanceUID"]
        + ["-k", "NumberOfStudyRelatedInstances"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for pid in ("P001", "P002", "P006"):
        assert studies[pid] in result.stderr
    assert studies["P004"] not in result.stderr
    assert result.stderr.count("(Pending)") == 3


def test_cfind_cancel_stops_the_answer(live_factory: Callable[..., LiveServer]) -> None:
    live = live_factory()
    # 5,000 matches, so that producing the answer outlasts the C-CANCEL's round trip (pynetdicom queues responses
    # faster than it sends them). C-FIND reads only the index, so the rows are written straight into it, cloned
    # from one parsed instance, in one transaction.
    [template] = ct_series(1, rows=4, cols=4)
    parsed = parse_bytes(part10(template))
    index = live.node.services.store.index
    with index.write() as conn:
        for n in range(5000):
            record = copy.deepcopy(parsed.record)
            sop = f"{template.SOPInstanceUID}.{n}"
            record.instance.update(SOPInstanceUID=sop, InstanceNumber=n, path=f"dicom/none/{sop}.dcm", size=1)
            record.instance.update(source="import", received_at="2026-01-01T00:00:00")
            index.upsert_instance(conn, record)
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(HOST, live.node.dimse_port, ae_title="DCMNODE")
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.SOPInstanceUID = ""
    statuses = []
    try:
        responses = assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind, msg_id=7)
        for status, _ in responses:
            statuses.append(status.Status)
            if len(statuses) == 1:
                assoc.send_c_cancel(7, query_model=StudyRootQueryRetrieveInformationModelFind)
    finally:
        assoc.release()
    assert statuses[-1] == 0xFE00
    assert len(statuses) < 5001
