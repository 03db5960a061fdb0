"""Step latency: what one durable step costs, against one raw durable SQLite commit.

    python bench/step_latency.py [--steps 500] [--trials 10] [--dir /tmp] [--payload]

Each trial measures, on fresh files in the same folder:
  raw   -- N commits of one small INSERT with plain sqlite3 (WAL, synchronous=FULL,
           BEGIN IMMEDIATE): the floor any durable step pays;
  step  -- one run of a workflow of N sequential no-op activities through
           TinyWorkflowClient on a fresh SQLite file with default settings.
Both first run untimed until the WAL file has wrapped (while it still grows, every
commit also syncs the file size, which is slower), so both are timed in the steady
state. fsync latency drifts over seconds, so the two alternate in short trials and
the ratio is taken per trial; the figures printed are medians over the trials.
Target (issue 2): step / raw <= 2.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tinyworkflow  # noqa: E402
from tinyworkflow import TinyWorkflowClient, activity, workflow  # noqa: E402

STEPS = 500
WARMUP_COMMITS = 1500  # one row a commit: ~1.5 pages, the WAL wraps at 1000 pages
WARMUP_STEPS = 400  # ~5 pages a step


@activity(name="bench_noop")
async def noop() -> None:
    return None


@workflow(name="bench_sequential")
async def sequential(ctx) -> int:
    steps = ctx.get_input("steps")
    for _ in range(steps):
        await ctx.execute_activity(noop)
    return steps


# --payload: a step returning 20 fields, as a dataclass (typed: the codec encodes and
# decodes it) and as a plain dict of the same shape (JSON as it is).
Payload = dataclasses.make_dataclass(
    "Payload", [(f"f{i}", (int, str, float, bool)[i % 4]) for i in range(20)])
PAYLOAD = {f"f{i}": (i, f"value {i}", i + 0.5, i % 2 == 0)[i % 4] for i in range(20)}


@activity(name="bench_dataclass")
async def as_dataclass() -> Payload:
    return Payload(**PAYLOAD)


@activity(name="bench_dict")
async def as_dict() -> dict:
    return dict(PAYLOAD)


@workflow(name="bench_payload")
async def payload_steps(ctx) -> int:
    steps, fn = ctx.get_input("steps"), as_dataclass if ctx.get_input("typed") else as_dict
    for _ in range(steps):
        value = await ctx.execute_activity(fn)
        assert value.f1 if ctx.get_input("typed") else value["f1"]
    return steps


async def payload_us(path: str, n: int, typed: bool) -> float:
    async with TinyWorkflowClient(f"sqlite+aiosqlite:///{path}") as client:
        await client.start_workflow("bench_payload", {"steps": WARMUP_STEPS, "typed": typed},
                                    wait=True)
        start = time.perf_counter()
        run_id = await client.start_workflow("bench_payload", {"steps": n, "typed": typed},
                                             wait=True)
        elapsed = time.perf_counter() - start
        run = await client.get_workflow_status(run_id)
        assert run.status == "completed", run.error
    return elapsed / n * 1e6


def payloads(args) -> None:
    """Typed (dataclass) against plain (dict) steps, alternating, in the same run."""
    folder = tempfile.mkdtemp(prefix="tw-bench-", dir=args.dir)
    typed, plain = [], []
    try:
        for trial in range(args.trials):
            for kind in ((True, False) if trial % 2 == 0 else (False, True)):
                figure = asyncio.run(payload_us(os.path.join(folder, f"p{trial}{kind}.db"),
                                                args.steps, kind))
                (typed if kind else plain).append(figure)
            print(f"trial {trial + 1}: dict step {plain[-1]:7.1f} us   dataclass step "
                  f"{typed[-1]:7.1f} us   ratio {typed[-1] / plain[-1]:.2f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ratios = sorted(t / p for t, p in zip(typed, plain))
    print(f"\ntinyworkflow {tinyworkflow.__version__}, Python {sys.version.split()[0]}, "
          f"{args.steps} steps x {args.trials} trials, a 20-field result each")
    print(f"dict step      : {statistics.median(plain):7.1f} us (median)")
    print(f"dataclass step : {statistics.median(typed):7.1f} us (median)")
    print(f"ratio dataclass / dict: {statistics.median(ratios):.2f} median of trials "
          f"(range {ratios[0]:.2f}-{ratios[-1]:.2f}; target <= 1.2)")


def raw_commit_us(path: str, n: int) -> float:
    db = sqlite3.connect(path, isolation_level=None, timeout=15)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, run_id TEXT, payload TEXT)")

    def commits(count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t (run_id, payload) VALUES (?, ?)", ("r", "null"))
            db.execute("COMMIT")
        return time.perf_counter() - start

    commits(WARMUP_COMMITS)
    elapsed = commits(n)
    db.close()
    return elapsed / n * 1e6


async def step_us(path: str, n: int) -> float:
    async with TinyWorkflowClient(f"sqlite+aiosqlite:///{path}") as client:
        await client.start_workflow("bench_sequential", {"steps": WARMUP_STEPS}, wait=True)
        start = time.perf_counter()
        run_id = await client.start_workflow("bench_sequential", {"steps": n}, wait=True)
        elapsed = time.perf_counter() - start
        run = await client.get_workflow_status(run_id)
        assert run.status == "completed" and run.output_data == {"result": n}, run
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--dir", default=None, help="folder for the database files")
    parser.add_argument("--payload", action="store_true",
                        help="compare a 20-field dataclass result with a dict of its shape")
    args = parser.parse_args()
    if args.payload:
        return payloads(args)
    folder = tempfile.mkdtemp(prefix="tw-bench-", dir=args.dir)
    raws, steps = [], []
    try:
        for trial in range(args.trials):
            raws.append(raw_commit_us(os.path.join(folder, f"raw{trial}.db"), args.steps))
            steps.append(asyncio.run(step_us(os.path.join(folder, f"tw{trial}.db"), args.steps)))
            print(f"trial {trial + 1}: raw commit {raws[-1]:7.1f} us   "
                  f"step {steps[-1]:7.1f} us   ratio {steps[-1] / raws[-1]:.2f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    raw, step = statistics.median(raws), statistics.median(steps)
    ratios = sorted(s / r for s, r in zip(steps, raws))
    print()
    print(f"tinyworkflow {tinyworkflow.__version__}, Python {sys.version.split()[0]}, "
          f"SQLite {sqlite3.sqlite_version}, {args.steps} steps x {args.trials} trials")
    print(f"raw durable commit : {raw:7.1f} us (median)")
    print(f"durable step       : {step:7.1f} us (median)")
    print(f"ratio step / commit: {statistics.median(ratios):.2f} median of trials "
          f"(range {ratios[0]:.2f}-{ratios[-1]:.2f}; target <= 2)")


if __name__ == "__main__":
    main()
