"""Worker throughput: runs and steps per second through one worker on SQLite.

    python bench/throughput.py [--runs 1000] [--steps 5] [--trials 3] [--dir /tmp]

Each trial stores N runs of a workflow of S sequential no-op activities in a fresh
SQLite file (default, durable settings), then starts one in-process worker and times
until every run is completed. Target (issue 3): >= 1,000 runs/s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
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


@activity(name="throughput_noop")
async def noop(i: int) -> int:
    return i


@workflow(name="throughput_steps")
async def steps(ctx) -> int:
    total = 0
    for i in range(ctx.get_input("steps")):
        total += await ctx.execute_activity(noop, i)
    return total


async def trial(path: str, runs: int, steps_per_run: int) -> float:
    async with TinyWorkflowClient(f"sqlite+aiosqlite:///{path}") as client:
        ids = [await client.start_workflow("throughput_steps", {"steps": steps_per_run})
               for _ in range(runs)]
        start = time.perf_counter()
        await client.start_worker()
        while await client.list_workflow_executions(status="completed", limit=1,
                                                    offset=runs - 1) == []:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - start
        await client.stop_worker()
        expected = {"result": sum(range(steps_per_run))}
        for run_id in ids[:: max(1, runs // 20)]:
            run = await client.get_workflow_status(run_id)
            assert run.status == "completed" and run.output_data == expected, run
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--dir", default=None, help="folder for the database files")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="tw-throughput-", dir=args.dir)
    rates = []
    try:
        for n in range(args.trials):
            elapsed = asyncio.run(trial(os.path.join(folder, f"tw{n}.db"), args.runs,
                                        args.steps))
            rates.append(args.runs / elapsed)
            print(f"trial {n + 1}: {args.runs} runs in {elapsed:.2f} s = "
                  f"{rates[-1]:7.0f} runs/s, {rates[-1] * args.steps:7.0f} steps/s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rate = statistics.median(rates)
    print()
    print(f"tinyworkflow {tinyworkflow.__version__}, Python {sys.version.split()[0]}, "
          f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, one worker")
    print(f"throughput: {rate:.0f} runs/s, {rate * args.steps:.0f} steps/s "
          f"(median of {args.trials}; target >= 1000 runs/s)")


if __name__ == "__main__":
    main()
