"""The anomaly evaluation's NAB harness (bench/nab_corpus.py, bench/eval_anomalies.py).

On small NAB checkouts written here in NAB's own layout: which series are held out and
which field each goes into, the result files NAB's scorer reads, and the command that
scores held-out series and writes those files.
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def nab(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    import nab_corpus

    return nab_corpus


def _write_series(path: Path, start: datetime, count: int, step: timedelta, value: float = 10.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "value"])
        for i in range(count):
            w.writerow([(start + i * step).strftime("%Y-%m-%d %H:%M:%S"), value + (i % 7) * 0.1])


def _checkout(root: Path, files: dict[str, list[list[str]]], rows: int = 30) -> Path:
    for key in files:
        _write_series(root / "data" / key, datetime(2014, 4, 1), rows, timedelta(minutes=5))
    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "combined_windows.json").write_text(json.dumps(files))
    return root


def test_fields_follow_what_the_series_measures(nab: ModuleType) -> None:
    # The shared subset's mapping (its README) is kept ...
    assert nab.series_field("ec2_cpu_utilization_24ae8d") == ("cpu", False)
    assert nab.series_field("rds_cpu_utilization_cc0c53") == ("cpu", False)
    assert nab.series_field("cpu_utilization_asg_misconfiguration") == ("cpu", False)
    assert nab.series_field("ec2_request_latency_system_failure") == ("cpu", False)
    assert nab.series_field("ec2_network_in_257a54") == ("network", False)
    assert nab.series_field("ec2_disk_write_bytes_1ef3de") == ("disk_write", False)
    assert nab.series_field("machine_temperature_system_failure") == ("temperature", False)
    assert nab.series_field("art_daily_jumpsup") == ("cpu", True)
    # ... and the held-out server series map the same way.
    assert nab.series_field("elb_request_count_8c0756") == ("network", False)
    assert nab.series_field("iio_us-east-1_i-a2eb1cd9_NetworkIn") == ("network", False)
    assert nab.series_field("grok_asg_anomaly") == ("cpu", False)
    assert nab.series_field("ambient_temperature_system_failure") == ("temperature", False)
    # No server metric: a percentage as CPU usage, any other measure as a rate.
    assert nab.server_field("nyc_taxi") is None
    assert nab.series_field("occupancy_6005") == ("cpu", False)
    assert nab.series_field("Twitter_volume_AAPL") == ("network", False)
    assert nab.series_field("rogue_agent_key_hold") == ("network", False)


def test_heldout_is_the_server_series_the_shared_subset_lacks(nab: ModuleType, tmp_path: Path) -> None:
    root = _checkout(
        tmp_path,
        {
            "realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv": [],
            "realAWSCloudwatch/elb_request_count_8c0756.csv": [],
            "realKnownCause/nyc_taxi.csv": [],
            "realKnownCause/ambient_temperature_system_failure.csv": [],
            "realTweets/Twitter_volume_AAPL.csv": [],
        },
    )
    corpus = nab.read_corpus(root)
    assert len(corpus) == 5
    assert corpus[0].key == "realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv"
    held = nab.heldout(corpus, ["realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv"])
    assert [s.key for s in held] == [
        "realAWSCloudwatch/elb_request_count_8c0756.csv",
        "realKnownCause/ambient_temperature_system_failure.csv",
    ]


def test_a_partial_checkout_is_refused(nab: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(nab.CorpusError, match=r"combined_windows\.json not found"):
        nab.read_corpus(tmp_path)
    root = _checkout(tmp_path, {"realKnownCause/nyc_taxi.csv": []})
    labels = json.loads((root / "labels" / "combined_windows.json").read_text())
    labels["realTweets/Twitter_volume_KO.csv"] = []
    (root / "labels" / "combined_windows.json").write_text(json.dumps(labels))
    with pytest.raises(nab.CorpusError, match=r"1 labelled files missing.*Twitter_volume_KO"):
        nab.read_corpus(root)


def test_time_window_is_the_reporting_interval(nab: ModuleType) -> None:
    t0 = datetime(2014, 1, 1, tzinfo=UTC)
    assert nab.time_window([t0 + timedelta(minutes=5 * i) for i in range(10)]) == "5min"
    assert nab.time_window([t0 + timedelta(hours=i) for i in range(10)]) == "1hour"
    assert nab.time_window([t0 + timedelta(minutes=30 * i) for i in range(10)]) == "15min"
    assert nab.time_window([t0 + timedelta(seconds=10 * i) for i in range(10)]) == "1min"


def test_episode_scores_mark_starts_or_spans(nab: ModuleType) -> None:
    t0 = datetime(2014, 1, 1, tzinfo=UTC)
    ts = [t0 + timedelta(minutes=5 * i) for i in range(10)]
    episodes = [(ts[2], ts[4]), (ts[7] + timedelta(minutes=1), ts[7] + timedelta(minutes=1))]
    # A start between two rows is marked on the next row; an episode of one instant is one row.
    assert nab.episode_scores(ts, episodes, spans=False) == [0, 0, 1, 0, 0, 0, 0, 0, 1, 0]
    assert nab.episode_scores(ts, episodes, spans=True) == [0, 0, 1, 1, 1, 0, 0, 0, 1, 0]
    # An episode after the last row (a gap seen at the end) marks nothing rather than failing.
    assert nab.episode_scores(ts, [(ts[-1] + timedelta(hours=1),) * 2], spans=True) == [0] * 10


def test_result_file_is_what_nab_scores(nab: ModuleType, tmp_path: Path) -> None:
    key = "realAWSCloudwatch/elb_request_count_8c0756.csv"
    root = _checkout(tmp_path / "nab", {key: [["2014-04-01 00:10:00.000000", "2014-04-01 00:20:00.000000"]]}, rows=6)
    (series,) = nab.read_corpus(root)
    rows = nab.read_rows(series.path)
    path = nab.write_result(tmp_path / "results", "perfAnalytics", series, rows, [0.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    assert path == tmp_path / "results" / "perfAnalytics" / "realAWSCloudwatch" / "perfAnalytics_elb_request_count_8c0756.csv"
    with path.open() as fh:
        got = list(csv.reader(fh))
    assert got[0] == ["timestamp", "value", "anomaly_score", "label"]
    # The data file's own text is echoed; the window's ends are inside it.
    assert [r[0] for r in got[1:]] == [t for t, _ in rows]
    assert [r[1] for r in got[1:]] == [v for _, v in rows]
    assert [r[2] for r in got[1:]] == ["0.0", "0.0", "0.0", "1.0", "0.0", "0.0"]
    assert [r[3] for r in got[1:]] == ["0", "0", "1", "1", "1", "0"]
    with pytest.raises(ValueError, match="5 scores for 6 rows"):
        nab.write_result(tmp_path / "results", "perfAnalytics", series, rows, [0.0] * 5)
    assert len(list((tmp_path / "results").rglob("*.csv"))) == 1


def test_heldout_run_scores_and_writes_results(nab: ModuleType, tmp_path: Path) -> None:
    import eval_anomalies

    spike_at = datetime(2014, 4, 3, 12, 0)
    window = [(spike_at - timedelta(hours=1)).isoformat(sep=" "), (spike_at + timedelta(hours=1)).isoformat(sep=" ")]
    root = _checkout(
        tmp_path / "nab",
        {
            "realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv": [],
            "realAWSCloudwatch/ec2_cpu_utilization_825cc2.csv": [window],
        },
        rows=3 * 288,
    )
    # A CPU spike well outside two quiet days, inside the labelled window.
    path = root / "data" / "realAWSCloudwatch" / "ec2_cpu_utilization_825cc2.csv"
    lines = path.read_text().splitlines()
    row = 1 + int((spike_at - datetime(2014, 4, 1)).total_seconds() // 300)
    for i in range(row, row + 4):
        lines[i] = f"{lines[i].split(',')[0]},97.5"
    path.write_text("\n".join(lines) + "\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "labels.json").write_text(json.dumps({"realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv": []}))
    out = tmp_path / "out.json"
    args = ["--nab", str(shared), "--nab-repo", str(root), "--heldout", "--nab-results", str(tmp_path / "res")]
    assert eval_anomalies.main([*args, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (held,) = result["nab_heldout"]["files"]
    assert held["file"] == "realAWSCloudwatch/ec2_cpu_utilization_825cc2.csv"
    assert held["field"] == "cpu"
    assert held["windows_found"] == 1
    assert result["nab_heldout"]["aws"]["recall"] == 1.0
    written = sorted(p.relative_to(tmp_path / "res").as_posix() for p in (tmp_path / "res").rglob("*.csv"))
    assert len(written) == 4  # both series, both detectors
    assert "perfAnalytics/realAWSCloudwatch/perfAnalytics_ec2_cpu_utilization_825cc2.csv" in written


def test_heldout_needs_a_checkout(nab: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import eval_anomalies

    with pytest.raises(SystemExit):
        eval_anomalies.main(["--heldout"])
    assert "give --nab-repo DIR" in capsys.readouterr().err
    code = eval_anomalies.main(["--nab-repo", str(tmp_path), "--heldout", "--out", str(tmp_path / "o.json")])
    assert code == 2
    assert capsys.readouterr().err.startswith("Error: ")
