"""Run ../shared/bench/bench_node.py with one fix in its pynetdicom client (bench/side_by_side.sh uses this for both
nodes alike; ``--stock-client`` there runs bench_node.py as it is).

    python bench_node_client.py /path/to/bench_node.py [bench_node.py arguments...]

The race (pynetdicom 3.0.4, ``Association._run_reactor`` against ``send_c_echo``/``send_c_find``/...): a ``send_*``
call clears ``_reactor_checkpoint`` and waits until the reactor thread says ``_is_paused``; but the reactor sets
``_is_paused = True`` just before ``_reactor_checkpoint.wait()`` on every loop, so a caller that reads it while the
reactor is passing through (the checkpoint still set a moment before) goes on, sends its request, and the reactor,
now running again, takes the response off the DIMSE queue (``get_msg(block=False)``), logs "Received unexpected
C-ECHO service message" and drops it. The caller then waits for its response until the DIMSE timeout (300 s in
bench_node.py) and the phase fails. Measured here with a loaded machine (load average 3-6 on 2 cores): 10 of 6000
C-ECHOs inside associations to Orthanc lost this way, 0 of 12000 with the fix; median latency unchanged
(1.7-2.5 ms both). Upstream reports of the symptom: pydicom/pynetdicom#435, #875.

The fix: while a ``send_*`` call holds the reactor paused (the checkpoint cleared), the reactor's non-blocking read
returns nothing, so the response stays on the queue for the caller. Only the reactor reads without blocking
(every ``send_*`` reads with ``block=True``), and a request can only be answered after the checkpoint was cleared,
so nothing the reactor should serve is held back.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Any


def patch_pynetdicom() -> None:
    from pynetdicom import dimse

    original = dimse.DIMSEServiceProvider.get_msg

    def get_msg(self: Any, block: bool = False) -> Any:
        if not block and not self.assoc._reactor_checkpoint.is_set():
            return None, None  # a send_* call is waiting for this message: leave it on the queue
        return original(self, block)

    dimse.DIMSEServiceProvider.get_msg = get_msg


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    script = sys.argv[1]
    patch_pynetdicom()
    sys.argv = [script, *sys.argv[2:]]
    sys.path.insert(0, str(Path(script).resolve().parent))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
