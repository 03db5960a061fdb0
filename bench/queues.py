"""Queue overhead: runs per second through a queue with a high limit, against the same
runs without a queue, measured in the same process, trials interleaved.

    python bench/queues.py [--db URL] [--workers 1] [--runs 1000] [--steps 5] [--trials 5]

A claim of queued runs also locks the queue's row and counts the runs holding a
place in it; this measures what that costs. The queue allows 1,000,000 runs at once,
so it never makes a run wait. Each trial is ``bench/throughput.py``'s: N runs of S
no-op activities stored first, then W worker processes started on them, timed until
every run completed. Target (issue 8): the queue within 20% of no queue.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import throughput  # noqa: E402
import tinyworkflow  # noqa: E402
from tinyworkflow import Queue  # noqa: E402

QUEUE = Queue("twbench_wide", concurrency=1_000_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=None, help="database URL (default: fresh SQLite files)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="tw-queues-")
    rates: dict = {"no queue": [], "queue": []}
    try:
        for n in range(args.trials):
            for label, queue in (("no queue", None), ("queue", QUEUE.name)):
                url = args.db or f"sqlite+aiosqlite:///{folder}/{label.replace(' ', '_')}{n}.db"
                elapsed = asyncio.run(throughput.trial(url, args.runs, args.steps,
                                                       args.workers, queue))
                rates[label].append(args.runs / elapsed)
                print(f"trial {n + 1}, {label:8}: {args.runs} runs in {elapsed:.2f} s = "
                      f"{rates[label][-1]:6.0f} runs/s", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    backend = (args.db or "sqlite").split(":", 1)[0].split("+", 1)[0]
    plain, queued = (statistics.median(rates[k]) for k in ("no queue", "queue"))
    print()
    print(f"tinyworkflow {tinyworkflow.__version__}, Python {sys.version.split()[0]}, "
          f"{backend}, {os.cpu_count()} CPUs, {args.workers} worker process(es), "
          f"{args.runs} runs of {args.steps} steps, median of {args.trials} trials")
    print(f"  no queue: {plain:6.0f} runs/s")
    print(f"  queue:    {queued:6.0f} runs/s  ({queued / plain:.0%} of no queue; "
          f"target >= 80%)")


if __name__ == "__main__":
    main()
