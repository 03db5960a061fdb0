"""Signal round trip: send_signal -> the workflow resumes -> its next step is recorded.

    python bench/signal_latency.py [--db URL] [--signals 100] [--poll 1.0]

A workflow waits for a signal, then runs one activity, again and again. The latency of
a signal is the time from just before ``send_signal`` to the recorded completion time
of the activity step that follows it (the step row's ``completed_at``), so it covers
the wake-up, the claim, the replay, consuming the signal and running the step.

In-process: the worker runs in the sending process. Cross-process: the worker is
another process. A run waiting for a signal waits in memory for a second, then parks;
a signal sent meanwhile from the same process, or notified by PostgreSQL, is taken at
once. Without LISTEN/NOTIFY (SQLite, MySQL) a signal from another process is found
when that second is over, or for a parked run at the worker's next poll (``--poll``). Target (issue 5): in-process under
5 ms; TinyWorkflow 0.1.0 polled approvals once a second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tinyworkflow  # noqa: E402
from tinyworkflow import TinyWorkflowClient, activity, workflow  # noqa: E402

PREFIX = "twsigbench_"


PONGED: dict = {}  # in-process: signal number -> an event the activity sets


@activity(name="signal_bench_pong")
async def pong(i: int) -> int:
    if i in PONGED:
        PONGED[i].set()
    return i


@workflow(name="signal_bench")
async def signal_bench(ctx) -> int:
    for i in range(ctx.get_input("signals")):
        await ctx.wait_for_signal("ping")
        await ctx.execute_activity(pong, i)
    return ctx.get_input("signals")


async def serve(url: str, poll: float) -> None:
    async with TinyWorkflowClient(url, table_prefix=PREFIX, poll_interval=poll) as client:
        await client.start_worker()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await client.stop_worker()


async def measure(url: str, signals: int, poll: float, in_process: bool) -> list:
    proc = None
    async with TinyWorkflowClient(url, table_prefix=PREFIX, poll_interval=poll) as client:
        await client.cleanup_old_workflows(0)
        if in_process:
            await client.start_worker()
        else:
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", url,
                                     "--poll", str(poll)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
            assert proc.stdout.readline().strip() == "ready"
        try:
            run_id = await client.start_workflow("signal_bench", {"signals": signals})
            latencies = []
            for i in range(signals):
                while not await _waiting(client, run_id, i):
                    await asyncio.sleep(0.001)
                if in_process:  # no polling while the clock runs: it would slow the worker
                    PONGED[i] = asyncio.Event()
                sent = time.time()
                await client.send_signal(run_id, "ping", i)
                if in_process:
                    await PONGED[i].wait()
                    del PONGED[i]
                step = 2 * i + 2  # signal steps are odd, pong steps even
                while True:
                    steps = {s.step: s for s in await client.get_workflow_steps(run_id)}
                    if step in steps and steps[step].status == "completed":
                        break
                    await asyncio.sleep(0.0005)
                latencies.append((steps[step].completed_at.timestamp() - sent) * 1000)
            assert await client.wait_for_result(run_id, timeout=30) == signals
            return latencies
        finally:
            if proc is not None:
                proc.stdin.close()
                proc.wait(timeout=30)


async def _waiting(client: TinyWorkflowClient, run_id: str, i: int) -> bool:
    """The run waits on its i-th signal (so the signal is not simply buffered)."""
    steps = await client.get_workflow_steps(run_id)
    return len(steps) == 2 * i + 1 and steps[-1].status == "waiting"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=None, help="database URL (default: a SQLite file)")
    parser.add_argument("--signals", type=int, default=100)
    parser.add_argument("--poll", type=float, default=1.0, help="the worker's poll interval")
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.poll))
        return
    folder = tempfile.mkdtemp(prefix="tw-signal-")
    url = args.db or f"sqlite+aiosqlite:///{folder}/signals.db"
    backend = url.split(":", 1)[0].split("+", 1)[0]
    print(f"tinyworkflow {tinyworkflow.__version__}, Python {sys.version.split()[0]}, "
          f"{backend}, {os.cpu_count()} CPUs, {args.signals} signals, poll {args.poll} s")
    for in_process in (True, False):
        ms = sorted(asyncio.run(measure(url, args.signals, args.poll, in_process)))
        where = "in-process   " if in_process else "cross-process"
        print(f"  {where}: median {statistics.median(ms):7.2f} ms, "
              f"p90 {ms[int(len(ms) * 0.9)]:7.2f} ms, max {ms[-1]:7.2f} ms")


if __name__ == "__main__":
    main()
