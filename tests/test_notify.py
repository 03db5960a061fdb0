"""PostgreSQL's LISTEN/NOTIFY: an idle worker in another process starts a new run at
once, however long its poll interval; and it still does after its listening
connection was killed by the server (it reconnects)."""

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

import dbutil  # noqa: E402
from tinyworkflow import TinyWorkflowClient, activity, workflow  # noqa: E402

postgres_only = pytest.mark.parametrize("backend", dbutil.SERVERS[:1])

# The worker process polls only once a minute: anything faster is the notification.
WORKER = """
import asyncio, sys
from tinyworkflow import TinyWorkflowClient, activity, workflow

@activity(name="notify_echo")
async def echo(x):
    return x

@workflow(name="notify_wf")
async def notify_wf(ctx):
    return await ctx.execute_activity(echo, ctx.get_input("x"))

async def main():
    async with TinyWorkflowClient(sys.argv[1], poll_interval=60) as client:
        await client.start_worker()
        await asyncio.sleep(1)  # the first poll is over: from now on it only listens
        print("ready", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@activity(name="notify_echo")
async def echo(x):
    return x


@workflow(name="notify_wf")
async def notify_wf(ctx):
    return await ctx.execute_activity(echo, ctx.get_input("x"))


async def _started_and_finished(client, x) -> float:
    started = time.monotonic()
    run_id = await client.start_workflow("notify_wf", {"x": x})
    assert await client.wait_for_result(run_id, timeout=20) == x
    return time.monotonic() - started


@postgres_only
async def test_idle_worker_in_another_process_is_woken_by_notify(db_url):
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("TINYWORKFLOW_DATABASE_URL", None)
    worker = subprocess.Popen([sys.executable, "-c", WORKER, db_url], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "ready"
        # This client has no worker of its own: only the other process can run it.
        async with TinyWorkflowClient(db_url, poll_interval=0.05) as client:
            latencies = [await _started_and_finished(client, n) for n in range(5)]
            assert max(latencies) < 5, latencies  # the poll interval is 60 s

            # The server ends the listening connection: the worker listens again.
            killed = await dbutil.kill_other_connections(db_url)
            assert killed >= 1
            await asyncio.sleep(1.0)  # reconnecting takes a moment; then it is woken again
            latencies = [await _started_and_finished(client, n) for n in range(5, 8)]
            assert max(latencies) < 5, latencies
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
