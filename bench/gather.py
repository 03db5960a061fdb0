"""Fan-out: runs that each gather 10 activities and a timer, on one worker.

    python bench/gather.py [--db URL] [--runs 1000] [--width 10] [--trials 3] [--dir /tmp]

Each trial stores N runs of a workflow that does
``await asyncio.gather(*(ctx.execute_activity(noop, i) for i in range(W)), ctx.sleep(0.05))``
(W activities at once beside a durable timer, on the workflow's own loop), then starts
one in-process worker (``worker_concurrency=100``) and times until every run is
completed. Printed: runs/s and steps/s (each run records W activities and the timer),
and the process's peak resident memory before and after the trial (ru_maxrss) with
the peak of Python allocations during it (tracemalloc, which slows the run a little;
--no-trace measures without it). Without ``--db``, every trial uses a fresh SQLite file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tinyworkflow  # noqa: E402
from tinyworkflow import TinyWorkflowClient, activity, workflow  # noqa: E402

PREFIX = "twgather_"


@activity(name="gather_noop")
async def noop(i: int) -> int:
    return i


@workflow(name="gather_fan_out")
async def fan_out(ctx) -> int:
    width = ctx.get_input("width")
    results = await asyncio.gather(*(ctx.execute_activity(noop, i) for i in range(width)),
                                   ctx.sleep(0.05))
    return sum(results[:-1])


async def trial(url: str, runs: int, width: int, trace: bool) -> tuple:
    async with TinyWorkflowClient(url, table_prefix=PREFIX, worker_concurrency=100,
                                  poll_interval=0.05) as client:
        ids = [await client.start_workflow("gather_fan_out", {"width": width})
               for _ in range(runs)]
        if trace:
            tracemalloc.start()
        start = time.perf_counter()
        await client.start_worker()
        for run_id in ids:
            assert await client.wait_for_result(run_id, timeout=600) == sum(range(width))
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] if trace else 0
        if trace:
            tracemalloc.stop()
        await client.stop_worker()
    return elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=None)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--width", type=int, default=10)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--no-trace", action="store_true")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="tw-gather-", dir=args.dir)
    rates, peaks = [], []
    try:
        for number in range(args.trials):
            url = args.db or f"sqlite+aiosqlite:///{folder}/gather{number}.db"
            if args.db:
                sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
                import dbutil
                dbutil.empty_sync(url)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            elapsed, peak = asyncio.run(trial(url, args.runs, args.width, not args.no_trace))
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            rates.append(args.runs / elapsed)
            peaks.append(peak)
            print(f"trial {number + 1}: {args.runs} runs in {elapsed:.2f} s = "
                  f"{rates[-1]:7.1f} runs/s, {rates[-1] * (args.width + 1):8.1f} steps/s; "
                  f"max RSS {before / 1024:.0f} -> {after / 1024:.0f} MiB; "
                  f"Python peak {peak / 2**20:.1f} MiB")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print()
    print(f"tinyworkflow {tinyworkflow.__version__}, Python {sys.version.split()[0]}, "
          f"{args.db and tinyworkflow._internals.redact(args.db) or 'SQLite file'}, {args.runs} runs "
          f"x gather({args.width} activities + a timer)")
    print(f"runs/s: {statistics.median(rates):.1f} median of {args.trials} "
          f"(range {min(rates):.1f}-{max(rates):.1f})")
    if not args.no_trace:
        print(f"peak Python memory during a trial: {statistics.median(peaks) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
