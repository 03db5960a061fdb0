"""Issue 20: hardening. Each test is a defect found by trying the library as a new user
would, fixed: nothing lost, repeated, stuck, or raised raw. On every backend where a
database is involved.
"""

import asyncio
import collections
import math
import uuid
from datetime import datetime, timezone

import pytest

from tinyworkflow import (ActivityError, RetryPolicy, TinyWorkflowClient, WorkflowFailedError,
                          activity, workflow)

# token -> how many times an activity ran (each test passes a token of its own).
RAN: collections.Counter = collections.Counter()


class Custom(BaseException):
    """A BaseException of the application's own (not an Exception)."""


BASE_EXCEPTIONS = {
    "system_exit": lambda: SystemExit(2),  # what argparse raises on a bad argument
    "cancelled": lambda: asyncio.CancelledError("raised by the activity itself"),
    "generator_exit": lambda: GeneratorExit(),
    "custom": lambda: Custom("boom"),
}
TYPES = {"system_exit": "builtins.SystemExit",
         "cancelled": "asyncio.exceptions.CancelledError",
         "generator_exit": "builtins.GeneratorExit",
         "custom": f"{__name__}.Custom"}
TWICE = RetryPolicy(max_retries=2, initial_delay=0.0, jitter=False)


@activity(name="hard_raises", retry_policy=TWICE)
async def raises(token: str, kind: str):
    RAN[token] += 1
    raise BASE_EXCEPTIONS[kind]()


@activity(name="hard_raises_in_thread", retry_policy=TWICE)
def raises_in_thread(token: str, kind: str):
    RAN[token] += 1
    raise BASE_EXCEPTIONS[kind]()


@activity(name="hard_ok")
async def ok(value):
    return value


@workflow(name="hard_base_exception", retry_policy=RetryPolicy(max_retries=0))
async def base_exception(ctx):
    fn = raises_in_thread if ctx.get_input("thread") else raises
    try:
        await ctx.execute_activity(fn, ctx.get_input("token"), ctx.get_input("kind"))
    except ActivityError as exc:
        if ctx.get_input("catch"):
            return {"caught": exc.error_type}
        raise
    return "not reached"


@workflow(name="hard_ok_workflow")
async def ok_workflow(ctx):
    return await ctx.execute_activity(ok, ctx.get_input("value"))


@pytest.fixture
async def worker(db_url):
    async with TinyWorkflowClient(db_url, auto_start_worker=True) as client:
        yield client


# ---- 4. activities that raise a BaseException ---------------------------------------------


@pytest.mark.parametrize("thread", [False, True], ids=["async", "thread"])
@pytest.mark.parametrize("kind", sorted(BASE_EXCEPTIONS))
async def test_a_base_exception_fails_the_attempt_and_the_policy_applies(worker, kind, thread):
    """SystemExit, CancelledError, GeneratorExit or the application's own BaseException
    raised by an activity fails that attempt like any exception: recorded with its type,
    retried by the activity's policy (three attempts), then the workflow gets an
    ActivityError naming the type. The worker lives on and runs the next workflow."""
    token = uuid.uuid4().hex
    run_id = await worker.start_workflow("hard_base_exception", {
        "token": token, "kind": kind, "thread": thread})
    with pytest.raises(WorkflowFailedError):
        await worker.wait_for_result(run_id, timeout=30)
    assert RAN[token] == 3
    run = await worker.get_workflow_status(run_id)
    assert run.status == "failed" and TYPES[kind].rsplit(".", 1)[1] in run.error
    (step,) = await worker.get_workflow_steps(run_id)
    assert (step.status, step.attempts, step.error["type"]) == ("failed", 3, TYPES[kind])
    failures = [e for e in await worker.get_workflow_events(run_id)
                if e.event_type == "step_failed"]
    assert len(failures) == 3
    # The worker is alive and well.
    next_id = await worker.start_workflow("hard_ok_workflow", {"value": 7})
    assert await worker.wait_for_result(next_id, timeout=30) == 7


async def test_a_workflow_can_catch_an_activitys_base_exception(worker):
    token = uuid.uuid4().hex
    run_id = await worker.start_workflow("hard_base_exception", {
        "token": token, "kind": "system_exit", "catch": True})
    result = await worker.wait_for_result(run_id, timeout=30)
    assert result == {"caught": "builtins.SystemExit"} and RAN[token] == 3
