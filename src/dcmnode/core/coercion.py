"""De-identification on send (``[peers.X] deidentify``): what a peer declared so receives only the PS3.15 profile's
output, whatever sends to it (C-MOVE, C-GET by it, SR send-back, ``dcmnode send``), as dcm4chee's attribute
coercion does for its exports.

The mapping is keyed by the peer's project (``deidentify_project``, default the peer's name), so the same study
sent twice gets the same new UIDs: a PACS that receives it twice holds duplicates, not a second study. An instance
the profile refuses (``DeidentificationRefused``: burned-in text without Clean Pixel Data, ...) is not sent; the
caller counts it as failed with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from dcmnode.config import Peer, Settings
from dcmnode.core.deid.keys import KeyStore
from dcmnode.deid.options import Option, parse_options
from dcmnode.errors import ConfigError, InvalidRequest

if TYPE_CHECKING:  # the engine (its table, OCR) is imported when a peer first needs it, not by every process
    from dcmnode.deid.engine import Deidentifier

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Coercion:
    """The profile one peer receives."""

    peer: str
    project: str
    deidentifier: Deidentifier

    def apply(self, ds: Dataset) -> Dataset:
        """The de-identified copy of ``ds`` (File Meta included); DeidentificationRefused with the reason."""
        outcome = self.deidentifier.apply(ds)
        if outcome.masked:
            log.info("to %s: %d region(s) of burned-in text masked", self.peer, len(outcome.masked))
        return outcome.dataset


def check(settings: Settings) -> None:
    """Every peer's ``deidentify`` names known options (``Services.open``: a node with a typo does not start)."""
    for peer in settings.peers.values():
        _options(peer)


def for_peer(settings: Settings, peer: Peer | None) -> Coercion | None:
    """The coercion for what is sent to ``peer`` (None: it receives the stored instances unchanged). Its project's
    key is made on first use (``core/deid/keys.py``)."""
    if peer is None or not peer.deidentify:
        return None
    from dcmnode.core.deid.job import pixel_masks
    from dcmnode.deid.engine import Deidentifier, Profile

    try:
        key = KeyStore(settings.data_dir / "secrets" / "deid").get(peer.deidentify_project)
    except OSError as err:
        raise ConfigError(f"cannot read or make the key of project {peer.deidentify_project}: {err.strerror}") from None
    profile = Profile(options=_options(peer), pixel_masks=pixel_masks(settings))
    return Coercion(peer.ae_title, peer.deidentify_project, Deidentifier(key, profile))


def _options(peer: Peer) -> frozenset[Option]:
    try:
        return parse_options(list(peer.deidentify)) if peer.deidentify else frozenset()
    except InvalidRequest as err:
        raise ConfigError(f"[peers.{peer.ae_title}] deidentify: {err.reason}") from None
