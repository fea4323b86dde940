"""The instance a C-STORE (C-MOVE and C-GET sub-operations, ``dimse/send.py``) sends: as stored, decompressed, or
de-identified for a peer declared with ``deidentify`` (``core/coercion.py``), one at a time.

An instance the receiver accepted in its stored transfer syntax, for a peer without ``deidentify``, is sent as its
stored file: a ``compat.SendAsStored`` that pynetdicom sends from the data set's offset in the file, byte for byte,
never decoded (patch 10). Only what must change is read into a pydicom Dataset: decompression, re-encoding between
uncompressed syntaxes (the receiver accepted another one), de-identification.

A de-identified instance may come out in another transfer syntax than the stored one (Clean Pixel Data decodes and
stores losslessly), so it is planned again against what the receiver accepted. Whatever goes wrong while
de-identifying, the instance is not sent (a research PACS never receives identity): the profile's refusal keeps
its reason, any other error is logged here and reported as a processing failure.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydicom.dataset import Dataset
from pydicom.uid import UID

from dcmnode.core import retrieve
from dcmnode.core.coercion import Coercion
from dcmnode.dimse.compat import SendAsStored
from dcmnode.errors import DcmnodeError, NotAcceptable

log = logging.getLogger(__name__)


def outgoing(item: retrieve.StoredFile, how: str, accepted: Sequence[str], coercion: Coercion | None) -> Dataset:
    """The data set to send for ``item`` (``how``: ``retrieve.plan``'s answer for it); DcmnodeError or OSError
    when it cannot be sent (``DeidentificationRefused`` with the profile's reason)."""
    if coercion is None and how == retrieve.AS_STORED and item.transfer_syntax in accepted:
        stored = as_stored(item)
        if stored is not None:
            return stored
    ds = retrieve.dataset(item, how)
    if coercion is None:
        return ds
    try:
        out = coercion.apply(ds)
    except DcmnodeError:
        raise
    except Exception as exc:  # a fault of the engine on this instance: fail closed, never send the original
        log.exception("de-identifying %s for %s failed", item.sop, coercion.peer)
        raise DcmnodeError("de-identification failed; see the node's log") from exc
    syntax = str(out.file_meta.TransferSyntaxUID)
    again = retrieve.plan(syntax, accepted)
    if again is None:
        raise NotAcceptable(f"the receiver accepted no transfer syntax for the de-identified instance ({syntax})")
    if again == retrieve.DECOMPRESS and UID(syntax).is_compressed:
        retrieve.decompress(out)
    return out


def as_stored(item: retrieve.StoredFile) -> SendAsStored | None:
    """The stored file as pynetdicom sends it undecoded; None when its File Meta does not say what the index does
    (the file is then read with pydicom, which has the last word)."""
    head = retrieve.stored_head(item.path)
    if head is None or head.transfer_syntax != item.transfer_syntax:
        return None
    return SendAsStored(item.path, head.offset, item.sop_class, item.sop, item.transfer_syntax)
