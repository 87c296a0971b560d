"""The nightly run's tasks on Dask: a local cluster of worker processes, or an existing cluster.

`perf-analytics nightly --workers N` starts a `distributed.LocalCluster` of N worker
processes (one thread each: the work is Polars, which has threads of its own) for the
run; `--scheduler ADDRESS` sends the same tasks to the Dask cluster whose scheduler is at
ADDRESS. Either way the coordinating process (the one that holds the lake's lock) syncs
first, plans, hands out one task per (org, day) (`nightly.derive_day`) and per report
(`nightly.report_day`), and records each outcome as it comes back. A task writes only its
day's own partitions, each atomically, and never a manifest, so nothing two tasks write
overlaps and the record is written by one process.

Before handing anything out, the scheduler and every worker are asked which
perf_analytics they have (the scheduler unpickles the tasks, so it needs the package too)
and each worker whether it sees the lake at the coordinator's path: a cluster without the
package, of another release (its outputs would not be those the record promises) or a
worker without the shared lake is refused with one error line, before the run starts.

A worker that dies while running a task (killed, out of memory) loses that task; Dask
runs it again on another worker up to `distributed.scheduler.allowed-failures` times
(Dask's setting, default 3, read by the scheduler), then gives up with `KilledWorker`,
which the run records as that (org, day)'s failure, naming the last worker. Nothing of
the day is recorded as derived, so the next run redoes it.

Imported only when a run asks for workers: importing Dask costs about a second.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path

from distributed import Client, LocalCluster, as_completed, get_worker

from perf_analytics import __version__
from perf_analytics.errors import FanoutError
from perf_analytics.nightly import Fanout, Job, Outcome, Runner, StepRecord, Task

WORKERS_TIMEOUT_S = 120


@contextmanager
def dask_runner(fanout: Fanout, lake: Path) -> Iterator[Runner]:
    """A runner over the cluster `fanout` names, once its workers are checked fit."""
    with _client(fanout) as client:
        _check_workers(client, lake, fanout)
        yield partial(_run_on, client)


@contextmanager
def _client(fanout: Fanout) -> Iterator[Client]:
    if fanout.scheduler is not None:
        try:
            # How long to try: Dask's `distributed.comm.timeouts.connect` (default 30 s).
            client = Client(fanout.scheduler)  # type: ignore[no-untyped-call]
        except (OSError, TimeoutError, ValueError) as exc:
            raise FanoutError(f"cannot reach the Dask scheduler at {fanout.scheduler}: {exc}") from None
        with client:
            yield client
        return
    # The dashboard on any free port (8787 may be taken), and only errors on stderr, which may be the
    # run's JSON log: what a task did is in the run's record.
    cluster = LocalCluster(n_workers=fanout.workers, threads_per_worker=1, processes=True,  # type: ignore[no-untyped-call]
                           dashboard_address=":0", silence_logs=logging.ERROR)
    with cluster, Client(cluster) as client:  # type: ignore[no-untyped-call]
        yield client


def _worker_view(lake: str) -> tuple[str, bool]:
    """Run on each worker: its perf_analytics release, and whether it sees the lake."""
    return __version__, Path(lake).is_dir()


def _check_workers(client: Client, lake: Path, fanout: Fanout) -> None:
    where = fanout.scheduler or "the local cluster"
    try:
        client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
    except TimeoutError:
        raise FanoutError(f"no Dask worker joined {where} within {WORKERS_TIMEOUT_S} s") from None
    # The scheduler unpickles the tasks too (Dask 2024.12+), so it needs the package as well.
    try:
        scheduler_version, _ = client.run_on_scheduler(_worker_view, str(lake))  # type: ignore[no-untyped-call]
    except (ImportError, AttributeError) as exc:
        raise FanoutError(f"the Dask scheduler at {where} cannot load perf_analytics ({exc}): "
                          "install the same perf_analytics release beside the scheduler") from None
    if scheduler_version != __version__:
        raise FanoutError(f"the Dask scheduler at {where} has perf_analytics {scheduler_version}, "
                          f"this run {__version__}: install the same release beside the scheduler")
    try:
        seen: dict[str, tuple[str, bool]] = client.run(_worker_view, str(lake))
    except (ImportError, AttributeError) as exc:
        raise FanoutError(f"the Dask workers of {where} cannot load perf_analytics ({exc}): "
                          "install the same perf_analytics release on every worker") from None
    for address, (version, visible) in sorted(seen.items()):
        if version != __version__:
            raise FanoutError(f"Dask worker {address} runs perf_analytics {version}, this run {__version__}: "
                              "install the same release on every worker")
        if not visible:
            raise FanoutError(f"Dask worker {address} does not see the lake at {lake}: "
                              "mount the shared lake at the same path on every worker")


def _on_worker(task: Task) -> list[StepRecord]:
    """Run a task on a worker; its records name the worker."""
    address = get_worker().address
    return [replace(r, worker=address) for r in task()]


def _run_on(client: Client, tasks: Sequence[tuple[Job, Task]]) -> Iterator[tuple[Job, Outcome]]:
    """Submit every task, then give each outcome as it completes; a task that did not come
    back gives the exception Dask raised for it (KilledWorker, a lost connection)."""
    futures = {client.submit(_on_worker, task, key=f"{job.step}-{job.org}-{job.day}-{secrets.token_hex(4)}",
                             pure=False): job
               for job, task in tasks}
    for future in as_completed(futures):  # type: ignore[no-untyped-call]
        outcome: Outcome
        try:
            outcome = future.result()
        except Exception as exc:  # noqa: BLE001 - the task's own failures are records; this is the cluster's
            outcome = exc
        future.release()
        yield futures[future], outcome
