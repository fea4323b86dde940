"""``DELETE`` of a study, a series or an instance: a vendor extension of PS3.18.

PS3.18 defines no Delete transaction (its RESTful services are Retrieve, Store, Search, UPS, Capabilities; removal
of instances in DICOM is the Rejection Note of IHE IOCM, dcm4chee's "reject"). ``DELETE`` on the WADO-RS
resource URL is what Orthanc, dcm4chee-arc (after a reject), Google Cloud Healthcare and Microsoft's dicom-server
answer, and what dicomweb-client's ``delete_study`` / ``delete_series`` / ``delete_instance`` send: 204 No
Content when it is gone, 404 when nothing stored matches. Needs the ``delete`` scope.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from dcmnode.dicomweb.context import principal, services
from dcmnode.dicomweb.paths import resource_uids
from dcmnode.errors import NotFound


async def delete(request: Request) -> Response:
    study, series, sop = resource_uids(request)
    http, who = services(request), principal(request)
    if not await run_in_threadpool(http.catalog.visible, study, who.groups):
        raise NotFound(f"study {study} is not stored here")  # a study outside the principal's groups: as if absent
    await run_in_threadpool(http.deletion.delete, study, series, sop, who)
    return Response(status_code=204)
