"""The node's own JSON API under ``/api`` (not DICOMweb): status, the enhancement operators, super-resolution
jobs and bulk uploads. Its handlers read the same ``HttpServices`` as the DICOMweb ones
(``dicomweb.context.services``)."""

from __future__ import annotations

from starlette.routing import Route

from dcmnode.nodeapi import imports, sr_jobs, status


def routes() -> list[Route]:
    return status.routes() + sr_jobs.routes() + imports.routes()
