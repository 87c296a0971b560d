"""Progress bars for people at a terminal: one way to make them, for every command.

A bar goes to stderr, and only when stderr is a terminal: under cron, systemd, CI or a
pipe nothing is drawn, so logs hold what the commands print and nothing else (`--json`
output stays clean too). Bars are transient: they vanish when the work ends and leave
the command's own summary. The work reports through plain callbacks (`progress(done,
total)`, `progress(stage, count)`), so the library never depends on how a bar looks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

# rich is imported where a bar is made: a command's --help never draws one.
if TYPE_CHECKING:
    from rich.progress import Progress, ProgressColumn


@contextmanager
def progress_bar(*columns: str | ProgressColumn, show: bool = True) -> Iterator[Progress]:
    """A transient rich bar with these columns on stderr, drawn only on a terminal and when `show`."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    with Progress(*columns, console=console, transient=True, disable=not (show and console.is_terminal)) as bar:
        yield bar


@contextmanager
def count_progress(what: str, unit: str = "") -> Iterator[Callable[[int, int], None]]:
    """`what`, a bar, done of total (then `unit`) and the time left, as a `progress(done, total)` callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    columns = [TextColumn(what), BarColumn(), MofNCompleteColumn(), *([TextColumn(unit)] if unit else []),
               TimeRemainingColumn()]
    with progress_bar(*columns) as bar:
        task = bar.add_task(what, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


@contextmanager
def stage_progress(what: str, describe: Callable[[dict[str, int]], str]) -> Iterator[Callable[[str, int], None]]:
    """A spinner with the counts a run reports by stage (`describe` words them), as a
    `progress(stage, count)` callback."""
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    with progress_bar(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()) as bar:
        task = bar.add_task(f"{what}: connecting", total=None)
        counts: dict[str, int] = {}

        def advance(stage: str, count: int) -> None:
            counts[stage] = count
            bar.update(task, description=f"{what}: {describe(counts)}")

        yield advance


__all__ = ["count_progress", "progress_bar", "stage_progress"]
