"""Workflows for tests/test_workers.py, imported by the test process (which starts the
runs) and by every worker process it starts (``tinyworkflow worker --import-workflows
tests/workers_workflows.py``), so that both register the same names.

Every activity appends a line to a side-effect file named in the run's input before it
does anything else: the file counts executions across processes, which the database
cannot (it records outcomes, not the attempts that died with their process). No
activity or workflow retries, so one line is one execution.
"""

import asyncio
import os
import random
import time

from tinyworkflow import RetryPolicy, WorkflowContext, activity, activity_info, workflow

NO_RETRY = RetryPolicy(max_retries=0)


def log(path: str, line: str) -> None:
    # One O_APPEND write of one short line: whole lines, never interleaved with the
    # lines of other processes, even when the writer is killed.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_log(path) -> list:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


async def _sleep_in_slices(seconds: float) -> None:
    # Short sleeps, as a real activity polling something would do.
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(left, 0.05))


# -- crash loop: twenty numbered steps ------------------------------------------------------

CRASH_STEPS = 20


@activity(name="workers_crash_step", retry_policy=NO_RETRY)
async def crash_step(log_path: str, step: int, acc: int) -> int:
    log(log_path, str(step))
    await asyncio.sleep(random.uniform(0.02, 0.05))
    return (acc * 31 + step) % 1_000_003


@workflow(name="workers_crash_loop", retry_policy=NO_RETRY)
async def crash_loop(ctx: WorkflowContext):
    path, acc = ctx.get_input("log"), ctx.get_input("seed")
    for step in range(1, CRASH_STEPS + 1):
        acc = await ctx.execute_activity(crash_step, path, step, acc)
    return {"acc": acc, "steps": CRASH_STEPS}


def crash_loop_result(seed: int) -> dict:
    acc = seed
    for step in range(1, CRASH_STEPS + 1):
        acc = (acc * 31 + step) % 1_000_003
    return {"acc": acc, "steps": CRASH_STEPS}


# -- several workers: many short runs -------------------------------------------------------


@activity(name="workers_touch", retry_policy=NO_RETRY)
async def touch(log_path: str, x: int) -> int:
    info = activity_info()
    log(log_path, info.idempotency_key)  # "<run_id>:<step>"
    return x * 2 + info.step


@workflow(name="workers_short", retry_policy=NO_RETRY)
async def short(ctx: WorkflowContext):
    x = ctx.get_input("x")
    for _ in range(ctx.get_input("steps")):
        x = await ctx.execute_activity(touch, ctx.get_input("log"), x)
    return x


def short_result(x: int, steps: int) -> int:
    for step in range(1, steps + 1):
        x = x * 2 + step
    return x


# -- graceful shutdown: slow steps ----------------------------------------------------------


@activity(name="workers_slow_step", retry_policy=NO_RETRY)
async def slow_step(log_path: str, seconds: float) -> int:
    info = activity_info()
    log(log_path, f"{info.idempotency_key} start")
    await _sleep_in_slices(seconds)
    log(log_path, f"{info.idempotency_key} end")
    return info.step


@workflow(name="workers_slow", retry_policy=NO_RETRY)
async def slow(ctx: WorkflowContext):
    path, seconds = ctx.get_input("log"), ctx.get_input("seconds")
    return [await ctx.execute_activity(slow_step, path, seconds)
            for _ in range(ctx.get_input("steps"))]


# -- cancellation: a long activity that ticks -----------------------------------------------


@activity(name="workers_first", retry_policy=NO_RETRY)
async def first(log_path: str) -> str:
    log(log_path, "first")
    return "first"


@activity(name="workers_ticking", retry_policy=NO_RETRY)
async def ticking(log_path: str, ticks: int, interval: float) -> int:
    for i in range(ticks):
        log(log_path, f"tick {i} {time.time():.3f}")
        await asyncio.sleep(interval)
    log(log_path, "ticking done")
    return ticks


@activity(name="workers_after", retry_policy=NO_RETRY)
async def after(log_path: str) -> str:
    log(log_path, "after")
    return "after"


@workflow(name="workers_cancellable", retry_policy=NO_RETRY)
async def cancellable(ctx: WorkflowContext):
    path = ctx.get_input("log")
    await ctx.execute_activity(first, path)
    ticks = await ctx.execute_activity(ticking, path, ctx.get_input("ticks"),
                                       ctx.get_input("interval"))
    await ctx.execute_activity(after, path)
    return ticks


# -- a blocking (sync) activity: runs in a thread, which cannot be cancelled ------------------


@activity(name="workers_blocking_step", retry_policy=NO_RETRY)
def blocking_step(log_path: str, seconds: float) -> int:
    info = activity_info()
    log(log_path, f"{info.idempotency_key} start {os.getpid()} {time.time():.3f}")
    time.sleep(seconds)
    log(log_path, f"{info.idempotency_key} end {os.getpid()} {time.time():.3f}")
    return info.step


@workflow(name="workers_blocking", retry_policy=NO_RETRY)
async def blocking(ctx: WorkflowContext):
    return await ctx.execute_activity(blocking_step, ctx.get_input("log"),
                                      ctx.get_input("seconds"))
