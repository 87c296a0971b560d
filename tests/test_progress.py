"""Progress bars: drawn for a person at a terminal, never into logs, pipes or JSON output."""

from __future__ import annotations

from pathlib import Path

import pytest

import perf_analytics
from perf_analytics.progress import count_progress, progress_bar, stage_progress


@pytest.fixture
def no_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the test runner's environment says, stderr is no terminal (it is captured)."""
    for name in ("TTY_COMPATIBLE", "FORCE_COLOR", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


def _draw() -> None:
    with count_progress("flagging", "assets") as advance:
        advance(3, 4)
    with stage_progress("sync", lambda c: f"{c.get('read', 0)} snapshots read") as progress:
        progress("read", 5)


def test_off_a_terminal_nothing_is_drawn(no_terminal: None, capsys: pytest.CaptureFixture[str]) -> None:
    _draw()
    assert capsys.readouterr() == ("", "")


def test_on_a_terminal_the_bars_go_to_stderr_with_their_counts(
    no_terminal: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich's own switch: stderr counts as a terminal
    _draw()
    out, err = capsys.readouterr()
    assert out == ""
    assert "flagging" in err and "3/4" in err and "assets" in err
    assert "sync: 5 snapshots read" in err
    with progress_bar("quiet", show=False):  # e.g. under --json
        pass
    assert capsys.readouterr() == ("", "")


def test_every_bar_of_the_package_is_made_by_the_helper() -> None:
    package = Path(perf_analytics.__file__).parent
    makers = sorted(str(p.relative_to(package)) for p in package.rglob("*.py") if "Progress(" in p.read_text())
    assert makers == ["progress.py"]
