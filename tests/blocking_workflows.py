"""Workflows for tests/test_blocked_loop.py, whose activity and workflow block the event
loop (``time.sleep`` in ``async def``), imported by the test process and by the second
worker it starts:

    python tests/blocking_workflows.py DATABASE_URL LEASE_SECONDS

serves them until SIGTERM and prints "worker started" once it serves. Every execution
of the activity appends a line (the process id) to the file named in the input: it
counts executions across processes.
"""

import asyncio
import logging
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


@activity(name="blocking_note", retry_policy=NO_RETRY)
async def note(log: str, what: str) -> None:
    with open(log, "a") as out:
        out.write(f"{what}\n")


@activity(name="blocking_noting_sleeper", retry_policy=NO_RETRY)
async def noting_sleeper(log: str, seconds: float) -> None:
    with open(log, "a") as out:
        out.write("step started\n")
    time.sleep(seconds)  # blocks the event loop
    with open(log, "a") as out:
        out.write("step ended\n")


@workflow(name="blocking_saga", retry_policy=NO_RETRY)
async def blocking_saga(ctx: WorkflowContext):
    log = ctx.get_input("log")
    await ctx.execute_activity(note, log, "booked")
    ctx.add_compensation(note, log, "compensated")
    await ctx.execute_activity(note, log, "paid")  # (the compensation is recorded by now)
    await ctx.execute_activity(noting_sleeper, log, ctx.get_input("seconds"))


@activity(name="blocking_logger", retry_policy=NO_RETRY)
async def logger(log: str) -> int:
    with open(log, "a") as out:
        out.write(f"{os.getpid()}\n")
    logging.getLogger("blocking_workflows").warning("progress")  # a handler that blocks
    return os.getpid()


@workflow(name="blocking_log_handler", retry_policy=NO_RETRY)
async def blocking_log_handler(ctx: WorkflowContext):
    return await ctx.execute_activity(logger, ctx.get_input("log"))


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
