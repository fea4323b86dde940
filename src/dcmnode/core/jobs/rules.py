"""``[[sr.rules]]``: which complete series start a super-resolution job by themselves.

A series is complete when no instance arrived for ``sr.quiet_seconds``; it is considered when it arrived within
``sr.rule_lookback_hours``, has no job yet and holds no derived instance (derived series never trigger rules).
The first rule that matches the series' modality, calling AE and description decides.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dcmnode.config import SrRule, SrSettings
from dcmnode.store.jobs import JobTable, SeriesSummary


def complete_series(table: JobTable, settings: SrSettings) -> list[SeriesSummary]:
    now = datetime.now(UTC)
    quiet = (now - timedelta(seconds=settings.quiet_seconds)).isoformat(timespec="milliseconds")
    since = (now - timedelta(hours=settings.rule_lookback_hours)).isoformat(timespec="milliseconds")
    return table.series_without_jobs(since, quiet)


def rule_for(rules: tuple[SrRule, ...] | list[SrRule], series: SeriesSummary) -> SrRule | None:
    for rule in rules:
        if rule.matches(series.modality, series.source_ae, series.description):
            return rule
    return None
