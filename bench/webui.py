"""Web page answer times with many runs stored: each API call the pages make, timed
through real HTTP requests to the server of webui.py.

    python bench/webui.py [--db URL] [--runs 100000] [--repeat 7]

Stores N runs (through the client, in batches), gives them a mix of statuses (one
UPDATE), then serves the page for that database in this process and times each
request from a client thread: the median and the slowest of ``--repeat``. The baseline
taken in the same run is one durable SQLite commit (a one-row insert, synchronous=FULL),
for scale. Target (issue 10): every page answers in well under a second with 100,000
runs stored.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import tinyworkflow  # noqa: E402

webui = tinyworkflow._internals.companion("webui")
STATUSES = ["completed"] * 7 + ["failed", "cancelled", "running"]


@tinyworkflow.workflow(name="bench_web_a")
async def _a(ctx):
    return None


@tinyworkflow.workflow(name="bench_web_b")
async def _b(ctx):
    return None


def commit_baseline(folder: str, repeat: int = 200) -> float:
    """Seconds of one durable SQLite commit of a one-row insert (the median)."""
    db = sqlite3.connect(os.path.join(folder, "baseline.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (x)")
    times = []
    for i in range(repeat):
        started = time.perf_counter()
        db.execute("BEGIN")
        db.execute("INSERT INTO t VALUES (?)", (i,))
        db.execute("COMMIT")
        times.append(time.perf_counter() - started)
    db.close()
    return statistics.median(times)


async def seed(client: tinyworkflow.TinyWorkflowClient, runs: int) -> None:
    batch = 1000
    for start in range(0, runs, batch):
        await asyncio.gather(*(client.start_workflow(("bench_web_a", "bench_web_b")[i % 2],
                                                     {"i": i})
                               for i in range(start, min(start + batch, runs))))


def mix_statuses(path: str) -> None:
    db = sqlite3.connect(path)
    cases = " ".join(f"WHEN {i} THEN '{s}'" for i, s in enumerate(STATUSES))
    db.execute(f"UPDATE tinyworkflow_runs SET status = CASE (rowid % {len(STATUSES)}) "
               f"{cases} END, completed_at = created_at + 1")
    db.commit()
    db.close()


def fetch(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as answer:
        answer.read()
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=None, help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="tw-webui-")
    url = args.db or f"sqlite+aiosqlite:///{folder}/web.db"
    baseline = commit_baseline(folder)
    async with tinyworkflow.TinyWorkflowClient(url) as client:
        started = time.perf_counter()
        await seed(client, args.runs)
        print(f"stored {args.runs:,} runs in {time.perf_counter() - started:.1f} s")
        if url.startswith("sqlite"):
            mix_statuses(f"{folder}/web.db")
        some = (await client.list_workflow_executions(limit=1, offset=args.runs // 2))[0]
        ui = await webui.serve(client, port=0)
        base = ui.url.rstrip("/")
        paths = ["/", "/static/app.js", "/api/stats", "/api/runs",
                 "/api/runs?status=failed", "/api/runs?workflow=bench_web_b&status=completed",
                 f"/api/runs?q={some.run_id[:6]}", f"/api/runs?offset={args.runs - 50}",
                 f"/api/runs/{some.run_id}", "/api/approvals", "/api/schedules",
                 "/api/workflows"]
        print(f"baseline: one durable SQLite commit {baseline * 1000:.2f} ms")
        print(f"{'request':<52} {'median':>9} {'slowest':>9} {'x commit':>9}")
        for path in paths:
            times = [await asyncio.to_thread(fetch, base + path) for _ in range(args.repeat)]
            median = statistics.median(times)
            print(f"{path:<52} {median * 1000:>7.1f}ms {max(times) * 1000:>7.1f}ms "
                  f"{median / baseline:>9.1f}")
        await ui.stop()


if __name__ == "__main__":
    asyncio.run(main())
