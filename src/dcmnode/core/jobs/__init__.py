"""Super-resolution jobs as a service of the core: the durable queue (``queue``), one job's run from a stored
series to stored derived series (``runner``, ``derive``, ``report``), the automatic rules (``rules``) and the
worker loop (``worker``), which is handed its DIMSE sender instead of importing it.

The numbers come from ``dcmnode.sr``, the numerical library (torch, loaded on first use only): importing this
package does not import torch, so the HTTP process never loads it.
"""
