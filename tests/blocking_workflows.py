"""Workflows for tests/test_blocked_loop.py, whose activity and workflow block the event
loop (``time.sleep`` in ``async def``), imported by the test process and by the second
worker it starts:

    python tests/blocking_workflows.py DATABASE_URL LEASE_SECONDS

serves them until SIGTERM and prints "worker started" once it serves. Every execution
of the activity appends a line (the process id) to the file named in the input: it
counts executions across processes.
"""

import asyncio
import os
import signal
import sys
import time

from tinyworkflow import RetryPolicy, TinyWorkflowClient, WorkflowContext, activity, workflow

NO_RETRY = RetryPolicy(max_retries=0)


@activity(name="blocking_sleeper", retry_policy=NO_RETRY)
async def sleeper(log: str, seconds: float) -> int:
    with open(log, "a") as out:
        out.write(f"{os.getpid()}\n")
    time.sleep(seconds)  # the mistake: this blocks the event loop
    return os.getpid()


@workflow(name="blocking_activity", retry_policy=NO_RETRY)
async def blocking_activity(ctx: WorkflowContext):
    return await ctx.execute_activity(sleeper, ctx.get_input("log"), ctx.get_input("seconds"))


@workflow(name="blocking_workflow", retry_policy=NO_RETRY)
async def blocking_workflow(ctx: WorkflowContext):
    time.sleep(ctx.get_input("seconds"))  # the same mistake in workflow code
    return "done"


async def serve(url: str, lease: float) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with TinyWorkflowClient(url, lease_seconds=lease, poll_interval=0.1) as client:
        await client.start_worker()
        print("worker started", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], float(sys.argv[2])))
