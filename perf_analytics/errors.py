"""One exception hierarchy for perf_analytics.

Every error a user can cause derives from PerfAnalyticsError and carries a one-line
message; the CLI prints that line and exits non-zero. Anything else is a bug and keeps
its traceback. Each condition has a class of its own, so a caller catches exactly the
one it can handle:

- ConfigError: a setting (environment, TOML file) is missing or malformed.
- InvalidArgument: a function was called with an argument it cannot take (also a ValueError).
- ServerError: the database server failed; `retryable` says whether trying again can help.
- the rest name the part that failed (lake, sync, retention, extraction, ...).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path


class PerfAnalyticsError(Exception):
    """Base of every error the toolkit raises on purpose."""

    exit_code = 1


class ConfigError(PerfAnalyticsError):
    """A setting is missing, malformed or contradicts another."""


class InvalidArgument(PerfAnalyticsError, ValueError):
    """A function was given an argument it cannot take (a naive datetime, a count below 1,
    an empty org id); the message names the parameter, never a command-line flag."""


class ServerError(PerfAnalyticsError):
    """The database server could not be started, reached or used.

    `retryable` is True when the same call may succeed later unchanged (a timeout, a lost
    connection), False when something must change first (credentials, a refused command).
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        self.retryable = retryable
        super().__init__(message)


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


class NotFound(PerfAnalyticsError):
    """A named thing (asset, run, partition) does not exist."""


# ---- loading archives ---------------------------------------------------------------------


class ArchiveError(PerfAnalyticsError):
    """An archive cannot be read at all (not one bad record: the file itself)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class DamagedArchive(PerfAnalyticsError):
    """The archive is unreadable from here on; `offset` is the content byte where it broke,
    when the reader knows it exactly (else the loader uses how far decompression got)."""

    def __init__(self, reason: str, offset: int | None = None) -> None:
        self.reason = reason
        self.offset = offset
        super().__init__(reason)


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


# ---- reading the database -----------------------------------------------------------------


class ExtractError(PerfAnalyticsError):
    """A window could not be read."""


class SinkError(ServerError):
    """A sink could not be written; the message names the collection, the org and the scope."""


# ---- the lake -----------------------------------------------------------------------------


class LakeError(PerfAnalyticsError):
    """A lake operation cannot be done: a bad partition value, a missing column, a bad root."""


class QueryError(LakeError):
    """SQL over the lake failed or was refused; the message is the reason in one line."""


class NotReadOnly(QueryError):
    """The SQL would do more than read; `statement` names what it is (COPY, INSERT, ...)."""

    def __init__(self, statement: str, allowed: str, hint: str = "") -> None:
        self.statement = statement
        super().__init__(f"statement refused ({statement}): only read statements run here ({allowed}){hint}")


class UnreadableLakeFile(LakeError):
    """A lake file cannot be read (truncated, not Parquet, damaged, or gone); `path` names it."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"lake file {path} cannot be read: {reason}")


class ManifestError(PerfAnalyticsError):
    """A manifest cannot be read: malformed, or written by a version this code does not know."""


class SyncError(PerfAnalyticsError):
    """The mirror cannot be brought up to date (another run holds the lake, a listed file is gone)."""


class NotSynced(NotFound):
    """The lake holds no mirror of the org's snapshots yet (no sync has covered it)."""


class MirrorError(PerfAnalyticsError):
    """A part file the manifest lists is missing or cannot be read."""


class RetentionError(PerfAnalyticsError):
    """Retention cannot go on: another run holds the lake, or the lake's files cannot be restored."""


# ---- deriving: rollups, flags, plots -------------------------------------------------------


class RollupError(PerfAnalyticsError):
    """The input frames cannot be rolled up at all (a key column missing or mistyped)."""

    def __init__(self, frame: str, column: str, reason: str) -> None:
        self.frame = frame
        self.column = column
        super().__init__(f"{frame}.{column}: {reason}")


class AnomalyInputError(PerfAnalyticsError):
    """The frames given to `flag_anomalies` cannot be read (not bad values: a bad shape)."""


class PlotError(PerfAnalyticsError):
    """Nothing to plot, or an unusable output path."""


# ---- the nightly run ----------------------------------------------------------------------


class FanoutError(PerfAnalyticsError):
    """The Dask cluster cannot run the nightly tasks (unreachable, no workers, unfit workers)."""


class StepFailed(PerfAnalyticsError):
    """A named step of the nightly run failed for an org and day; `cause` is what it raised."""

    def __init__(self, step: str, org_id: str | None, day: date | None, cause: BaseException) -> None:
        self.step = step
        self.org_id = org_id
        self.day = day
        self.cause = cause
        where = " ".join(x for x in (f"org {org_id}" if org_id else "", day.isoformat() if day else "") if x)
        reason = str(cause) if isinstance(cause, PerfAnalyticsError) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"{step} failed{' for ' + where if where else ''}: {reason}")


class RunLocked(PerfAnalyticsError):
    """Another nightly run holds the lake."""


class RunFailed(PerfAnalyticsError):
    """The run finished, but some steps failed (recorded in its manifest)."""
