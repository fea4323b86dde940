"""The C-STORE SCP's own Part 10 head (dimse/file_meta.py, written instead of pynetdicom's encoded_dataset()):
the stored file is byte for byte what pynetdicom's File Meta and the received data set make."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, build_context
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from dcmnode.app import Node
from dcmnode.dimse import file_meta
from dcmnode.errors import InvalidInstance
from tests.conftest import HOST, stored_files
from tests.factories import CT_IMAGE_STORAGE, bundled, ct_series, dataset_bytes


@pytest.fixture
def send_files_raw() -> Iterator[None]:
    """pynetdicom sends a file's data set bytes without decoding them (a process-wide flag: restored)."""
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    yield
    _config.STORE_SEND_CHUNKED_DATASET = before


def pynetdicom_head(sop_class: str, sop: str, syntax: str) -> bytes:
    meta = create_file_meta(sop_class_uid=UID(sop_class), sop_instance_uid=UID(sop), transfer_syntax=UID(syntax))
    return b"\0" * 128 + b"DICM" + encode_file_meta(meta)


@pytest.mark.parametrize("sop", ["1.2.3.4", "1.2.3.45", "1." + "2" * 62])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, "1.2.840.10008.1.2.4.50"])
def test_the_head_is_what_pynetdicom_writes(sop: str, syntax: str) -> None:
    assert file_meta.head(CT_IMAGE_STORAGE, sop, syntax) == pynetdicom_head(CT_IMAGE_STORAGE, sop, syntax)


def test_a_request_uid_longer_than_a_uid_is_refused() -> None:
    with pytest.raises(InvalidInstance):
        file_meta.head(CT_IMAGE_STORAGE, "1." * 40, ExplicitVRLittleEndian)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_a_stored_file_is_pynetdicoms_head_and_the_data_set_as_sent(node: Node, syntax: str) -> None:
    ds = ct_series(1, rows=32, cols=32)[0]
    ae = AE(ae_title="HEADSCU")
    ae.requested_contexts = [build_context(CT_IMAGE_STORAGE, syntax)]
    assoc = ae.associate(HOST, node.dimse_port, ae_title="DCMNODE")
    assert assoc.is_established
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    [stored] = stored_files(node.services.store.root)
    raw = stored.read_bytes()
    head = pynetdicom_head(CT_IMAGE_STORAGE, str(ds.SOPInstanceUID), syntax)
    assert raw.startswith(head)
    assert dataset_bytes(stored) == (syntax, raw[len(head) :])


@pytest.mark.usefixtures("send_files_raw")
def test_a_file_sent_as_it_is_is_stored_as_encoded_dataset_would_give_it(node: Node) -> None:
    source = bundled("CT_small.dcm")
    syntax, data_set = dataset_bytes(source)
    ae = AE(ae_title="HEADSCU")
    ae.add_requested_context(CT_IMAGE_STORAGE, syntax)
    assoc = ae.associate(HOST, node.dimse_port, ae_title="DCMNODE")
    assert assoc.send_c_store(source).Status == 0x0000  # a path: the data set bytes go as they are in the file
    assoc.release()
    [stored] = stored_files(node.services.store.root)
    sop = stored.stem
    assert stored.read_bytes() == pynetdicom_head(CT_IMAGE_STORAGE, sop, syntax) + data_set
