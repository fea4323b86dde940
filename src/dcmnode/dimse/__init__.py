"""DIMSE adapter: pynetdicom's SCP and SCU over the store (see scp, query_retrieve, send). Importing it puts the
pynetdicom patches of ``compat`` in force, once, for every association this process makes or accepts."""

from __future__ import annotations

from dcmnode.dimse import compat

compat.apply()
