"""Workflows for tests/test_crash.py, imported by the test process and by the child
process it kills (tests/crash_worker.py), so both register the same names.

Every activity appends a line to a log file named in the workflow's input before it
does anything else: the log counts executions across processes, which the database
cannot (it records outcomes, not attempts that died with their process).
"""

import asyncio
import os

from tinyworkflow import RetryPolicy, WorkflowContext, activity, workflow

# Seconds the long activity / each numbered step sleeps. Set only in the child's
# environment, so the run resumed in the test process finishes at once.
LONG_SLEEP_ENV = "TW_CRASH_TEST_LONG_SLEEP"
STEP_SLEEP_ENV = "TW_CRASH_TEST_STEP_SLEEP"

NO_RETRY = RetryPolicy(max_retries=0)


def log(path: str, line: str) -> None:
    # One O_APPEND write per line: whole lines, in order, even if the writer is killed.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_log(path: str) -> list:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


# -- three steps, the last one long -------------------------------------------------------


@activity(name="crash_test_quick_one", retry_policy=NO_RETRY)
async def quick_one(log_path: str, x: int) -> int:
    log(log_path, "act1")
    return x + 1


@activity(name="crash_test_quick_two", retry_policy=NO_RETRY)
async def quick_two(log_path: str, x: int) -> int:
    log(log_path, "act2")
    return x * 10


@activity(name="crash_test_long", retry_policy=NO_RETRY)
async def long_one(log_path: str, x: int) -> int:
    log(log_path, "act3 start")
    await asyncio.sleep(float(os.environ.get(LONG_SLEEP_ENV, "0")))
    log(log_path, "act3 end")
    return x + 5


@workflow(name="crash_test_three_steps", retry_policy=NO_RETRY)
async def three_steps(ctx: WorkflowContext):
    path, x = ctx.get_input("log"), ctx.get_input("x")
    a = await ctx.execute_activity(quick_one, path, x)
    b = await ctx.execute_activity(quick_two, path, a)
    c = await ctx.execute_activity(long_one, path, b)
    return {"a": a, "b": b, "c": c}


def three_steps_result(x: int) -> dict:
    a = x + 1
    b = a * 10
    return {"a": a, "b": b, "c": b + 5}


# -- ten short numbered steps -------------------------------------------------------------

STEPS = 10


@activity(name="crash_test_numbered_step", retry_policy=NO_RETRY)
async def numbered_step(log_path: str, step: int, acc: int) -> int:
    log(log_path, str(step))
    await asyncio.sleep(float(os.environ.get(STEP_SLEEP_ENV, "0")))
    return acc * 3 + step


@workflow(name="crash_test_ten_steps", retry_policy=NO_RETRY)
async def ten_steps(ctx: WorkflowContext):
    path, acc, trail = ctx.get_input("log"), ctx.get_input("seed"), []
    for step in range(1, STEPS + 1):
        acc = await ctx.execute_activity(numbered_step, path, step, acc)
        trail.append(acc)
    return trail


@workflow(name="crash_test_ten_direct_steps", retry_policy=NO_RETRY)
async def ten_direct_steps(ctx: WorkflowContext):
    """ten_steps with the activity called directly: each call a step all the same."""
    path, acc, trail = ctx.get_input("log"), ctx.get_input("seed"), []
    for step in range(1, STEPS + 1):
        acc = await numbered_step(path, step, acc)
        trail.append(acc)
    return trail


def ten_steps_result(seed: int) -> list:
    acc, trail = seed, []
    for step in range(1, STEPS + 1):
        acc = acc * 3 + step
        trail.append(acc)
    return trail
