"""`make demo`: the main job end to end on the embedded default server.

Generates a small synthetic fleet (3 orgs, 4 assets each, 2 days at one snapshot a
minute), registers its assets the way the application would, creates the indexes,
bulk-loads the archive, checks org-01 with `doctor`, shows one asset's last
minutes, mirrors the snapshots into the Parquet lake with one `sync` pass, then runs the
nightly job for the last day from the lake alone (anomaly flags and rollups of each org,
with no further query to the database), asks DuckDB for org-01's strongest anomalies and
draws two pictures of that day into data/demo (the fleet, and its most flagged asset)
and writes org-01's daily HTML report there.
Run it again and the load finds only duplicates, the sync adds nothing and the lake's
derived partitions are replaced, not added to.

Settings come from the environment like the CLI's (MONGODB_URI, PERF_DB, ...); with no
MONGODB_URI the embedded server under data/localdb is started (and left running for the
next command; `perf-analytics localdb stop` stops it).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from perf_analytics import (
    ASSETS,
    FleetSpec,
    LoadOptions,
    asset_figure,
    connect,
    connect_lake,
    diagnose,
    ensure_indexes,
    fleet_assets,
    fleet_figure,
    get_asset_performance,
    ingest_archives_all_orgs,
    load_settings,
    probe_capabilities,
    run_day,
    save_figure,
    sync_snapshots_all_orgs,
    write_fleet,
    write_report,
)

FLEET = FleetSpec(orgs=3, assets=4, days=2, interval_s=60, seed=7)
OUT = Path("data/demo")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=int, default=FLEET.interval_s,
                        help="seconds between an asset's snapshots (default %(default)s)")
    args = parser.parse_args(argv)
    fleet = replace(FLEET, interval_s=args.interval)
    settings = load_settings()
    archive = OUT / f"fleet-{fleet.interval_s}s.ndjson.zst"
    if not archive.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        summary = write_fleet(archive, fleet)
        print(f"generated {summary.snapshots:,} snapshots of {summary.assets} assets -> {archive}")
    db = connect(settings)
    caps = probe_capabilities(db)
    print(f"server: {caps.server}; database: {settings.db}")
    ensure_indexes(db)
    # The application owns `assets`; here we stand in for it and register the fleet once.
    for entry in fleet_assets(orgs=fleet.orgs, assets=fleet.assets, seed=fleet.seed):
        db[ASSETS].update_one({"_id": entry["_id"], "orgId": entry["orgId"]}, {"$setOnInsert": entry}, upsert=True)

    # An admin load across the demo's orgs; `ingest_archives(db, paths, org_id)` loads one.
    loaded = ingest_archives_all_orgs(db, [archive], options=LoadOptions(rejects=OUT / "rejects.ndjson"))
    print(loaded.describe())

    # doctor reads a healthy org's snapshots once on FerretDB (one scan of the collection,
    # as every query there), so the demo checks one org; `perf-analytics doctor` checks all.
    report = diagnose(db, "org-01")
    problems = [f"{c.name}: {c.remaining}" for c in report.checks if c.remaining]
    print(f"doctor {report.org_id}: " + ("healthy" if not problems else "; ".join(problems)))

    asset = db[ASSETS].find_one({"orgId": "org-01"}, sort=[("_id", 1)])
    if asset is None or "lastSeen" not in asset:
        print("no asset of org-01 has been seen", file=sys.stderr)
        return 1
    recent = get_asset_performance(db, str(asset["_id"]), "org-01", "15min", limit=5, now=asset["lastSeen"])
    print(f"last 15 minutes of asset {asset['_id']} (org-01), newest first:")
    for snap in recent:
        perf = snap["performanceData"]
        print(
            f"  {snap['timestamp']:%Y-%m-%d %H:%M}  cpu {perf['cpu']['usage']:5.1f}%  "
            f"memory {perf['memory']['usagePercent']:5.1f}%  uptime {perf['system']['uptime']:>9,.0f}s"
        )

    # The nightly job: one sync pass (the only read of the snapshots from the database),
    # then flags and rollups of each org for the fleet's last day, from the lake alone.
    synced = sync_snapshots_all_orgs(db, settings.lake)
    print(f"sync: read {synced.read:,}, {synced.new:,} new snapshot(s) mirrored into {settings.lake} "
          f"({synced.seconds:.1f}s)")
    day = (fleet.start_time + timedelta(days=fleet.days - 1)).date()
    started = time.monotonic()
    for org in (f"org-{i:02d}" for i in range(1, fleet.orgs + 1)):
        result = run_day(settings.lake, org, day)
        n = result.flags.height
        print(f"{org} {day}: {result.snapshots:,} snapshots, {n} anomaly flag{'' if n == 1 else 's'}, "
              f"{sum(result.rollup_rows.values()):,} asset rollup rows -> {settings.lake}")
    print(f"flagged and rolled up from the lake in {time.monotonic() - started:.1f}s")
    con = connect_lake(settings.lake, org_id="org-01")
    top = con.sql(
        "select strftime(start, '%H:%M') as at, severity, metric, message from anomalies "
        "order by score desc limit 5"
    ).fetchall()
    print("org-01's strongest anomalies (DuckDB over the lake):")
    for at, severity, metric, message in top:
        print(f"  {at}  {severity:<8} {metric:<28} {message}")
    busiest = con.execute(
        "select assetId from anomalies group by assetId order by count(*) desc, assetId limit 1"
    ).fetchall()
    con.close()

    # Pictures of the same day: the org's fleet, and the asset with the most flags.
    fleet_png = save_figure(fleet_figure(settings.lake, "org-01", day), OUT / "org-01-fleet.png")
    shown = busiest[0][0] if busiest else str(asset["_id"])
    asset_png = save_figure(asset_figure(settings.lake, "org-01", shown, day), OUT / "org-01-asset.png")
    print(f"pictures: {fleet_png} (the fleet), {asset_png} (asset {shown}); notebooks/ has both views")
    page = write_report(settings.lake, "org-01", day, OUT / f"org-01-{day}.html")
    print(f"daily report: {page} (one self-contained page; open it in a browser)")
    db.client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
