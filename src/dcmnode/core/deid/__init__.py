"""The de-identification service around ``dcmnode.deid`` (PS3.15 Annex E): project keys kept under the data folder
(``keys``), jobs over stored studies or series with their outputs store | zip | send (``job``), the jobs of one
process (``registry``). The HTTP routes are ``nodeapi/deidentify.py``; the CLI's ``dcmnode deidentify`` runs a
job in its own process."""

from dcmnode.core.deid.job import ENDED, DeidJob, DeidRequest, pixel_masks
from dcmnode.core.deid.keys import KeyStore, check_project
from dcmnode.core.deid.registry import DeidRegistry

__all__ = ["ENDED", "DeidJob", "DeidRegistry", "DeidRequest", "KeyStore", "check_project", "pixel_masks"]
