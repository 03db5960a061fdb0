"""Worker throughput: runs and steps per second, on SQLite, PostgreSQL or MySQL.

    python bench/throughput.py [--db URL] [--workers 1,2,4] [--runs 1000] [--steps 5]
                               [--trials 3] [--dir /tmp]

Each trial stores N runs of a workflow of S sequential no-op activities, then lets
W worker processes loose on them and times until every run is completed. The
worker processes are started, connected and waiting before the clock starts, so
process start-up is not counted. Without ``--db``, every trial uses a fresh SQLite
file (default, durable settings). With ``--db`` the tables are ``twbench_*`` in that
database, emptied before each trial.

With ``--db`` and no ``--workers``, it measures 1, 2 and 4 workers; without ``--db``,
one. Targets: SQLite >= 1,000 runs/s with one worker (issue 3); PostgreSQL with one
worker at least half of SQLite's, and more workers never slower than one (issue 4).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tinyworkflow  # noqa: E402
from tinyworkflow import TinyWorkflowClient, activity, workflow  # noqa: E402

PREFIX = "twbench_"


@activity(name="throughput_noop")
async def noop(i: int) -> int:
    return i


@workflow(name="throughput_steps")
async def steps(ctx) -> int:
    total = 0
    for i in range(ctx.get_input("steps")):
        total += await ctx.execute_activity(noop, i)
    return total


async def serve(url: str) -> None:
    """A worker process: connect, say so, wait for 'go' on stdin, work until stdin closes."""
    async with TinyWorkflowClient(url, table_prefix=PREFIX) as client:
        loop = asyncio.get_running_loop()
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)  # "go"
        await client.start_worker()
        await loop.run_in_executor(None, sys.stdin.readline)  # EOF: stop
        await client.stop_worker()


async def trial(url: str, runs: int, steps_per_run: int, workers: int,
                queue: str | None = None) -> float:
    async with TinyWorkflowClient(url, table_prefix=PREFIX) as client:
        await client.cleanup_old_workflows(0)  # a previous trial's runs
        procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", url],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                 for _ in range(workers)]
        try:
            for proc in procs:
                if proc.stdout.readline().strip() != "ready":
                    raise SystemExit("a worker process did not start")
            ids = [await client.start_workflow("throughput_steps", {"steps": steps_per_run},
                                               queue=queue)
                   for _ in range(runs)]
            start = time.perf_counter()
            for proc in procs:
                proc.stdin.write("go\n")
                proc.stdin.flush()
            while await client.list_workflow_executions(status="completed", limit=1,
                                                        offset=runs - 1) == []:
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - start
        finally:
            for proc in procs:
                proc.stdin.close()
            for proc in procs:
                proc.wait(timeout=60)
        expected = {"result": sum(range(steps_per_run))}
        for run_id in ids[:: max(1, runs // 20)]:
            run = await client.get_workflow_status(run_id)
            assert run.status == "completed" and run.output_data == expected, run
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=None, help="database URL (default: fresh SQLite files)")
    parser.add_argument("--workers", default=None,
                        help="worker process counts, comma-separated (default 1; 1,2,4 with --db)")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--dir", default=None, help="folder for SQLite files")
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return
    counts = [int(n) for n in (args.workers or ("1,2,4" if args.db else "1")).split(",")]
    folder = tempfile.mkdtemp(prefix="tw-throughput-", dir=args.dir)
    medians = {}
    try:
        for workers in counts:
            rates = []
            for n in range(args.trials):
                url = args.db or f"sqlite+aiosqlite:///{folder}/w{workers}t{n}.db"
                elapsed = asyncio.run(trial(url, args.runs, args.steps, workers))
                rates.append(args.runs / elapsed)
                print(f"{workers} worker(s), trial {n + 1}: {args.runs} runs in {elapsed:.2f} s"
                      f" = {rates[-1]:6.0f} runs/s, {rates[-1] * args.steps:7.0f} steps/s",
                      flush=True)
            medians[workers] = statistics.median(rates)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    backend = (args.db or "sqlite").split(":", 1)[0].split("+", 1)[0]
    print()
    print(f"tinyworkflow {tinyworkflow.__version__}, Python {sys.version.split()[0]}, "
          f"{backend}, {os.cpu_count()} CPUs, {args.runs} runs of {args.steps} steps, "
          f"median of {args.trials} trials")
    for workers, rate in medians.items():
        print(f"  {workers} worker process(es): {rate:6.0f} runs/s, "
              f"{rate * args.steps:7.0f} steps/s")


if __name__ == "__main__":
    main()
