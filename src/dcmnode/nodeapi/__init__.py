"""The node's own JSON API under ``/api`` (not DICOMweb): status, the enhancement operators, super-resolution
jobs, bulk uploads study labels and the audit trail. Its handlers read the same ``HttpServices`` as the DICOMweb ones
(``dicomweb.context.services``)."""

from __future__ import annotations

from starlette.routing import Route

from dcmnode.nodeapi import audit, deidentify, imports, labels, session, sr_jobs, status


def routes() -> list[Route]:
    return (
        status.routes()
        + sr_jobs.routes()
        + imports.routes()
        + labels.routes()
        + audit.routes()
        + session.routes()
        + deidentify.routes()
    )
