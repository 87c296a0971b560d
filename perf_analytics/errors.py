"""One exception hierarchy for perf_analytics.

Every error a user can cause derives from PerfAnalyticsError and carries a one-line
message; the CLI prints that line and exits non-zero. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class PerfAnalyticsError(Exception):
    """Base of every error the toolkit raises on purpose."""

    exit_code = 1


class ConfigError(PerfAnalyticsError):
    """A setting is missing, malformed or contradicts another."""


class ServerError(PerfAnalyticsError):
    """The database server could not be started, reached or used."""


class UnsupportedFeature(PerfAnalyticsError):
    """The connected server lacks a capability the operation needs."""

    def __init__(self, feature: str, server: str, hint: str = "") -> None:
        self.feature = feature
        self.server = server
        msg = f"{server} does not support {feature}"
        super().__init__(f"{msg}; {hint}" if hint else msg)


class ValidationError(PerfAnalyticsError):
    """A snapshot payload breaks the contract; `field` is the dotted path at fault."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


class ArchiveError(PerfAnalyticsError):
    """An archive cannot be read at all (not one bad record: the file itself)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class NotFound(PerfAnalyticsError):
    """A named thing (asset, run, partition) does not exist."""


class CheckpointError(PerfAnalyticsError):
    """A saved load state cannot be used as it stands (unknown format version, unreadable,
    or the rejects file it counts on is gone); the message says how to go on."""


class IncompleteLoad(PerfAnalyticsError):
    """A load met damaged archives and was not allowed to stop short of their end.

    `summary` is the load's summary (what was read, inserted and rejected, and where each
    archive broke), so a caller can still report how far the load got.
    """

    def __init__(self, message: str, summary: object) -> None:
        self.summary = summary
        super().__init__(message)
