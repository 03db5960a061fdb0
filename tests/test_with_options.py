"""Per-call options (issue 22, item 6): ``with_options(activity, retry_policy=...,
timeout=...)`` changes one call's retry policy or timeout, never the activity's own
keyword arguments. On every backend."""

import asyncio
from collections import Counter

import pytest

from tinyworkflow import (
    ActivityTimeoutError,
    RetryPolicy,
    activity,
    with_options,
    workflow,
)

calls: Counter = Counter()
QUICK = RetryPolicy(max_retries=3, initial_delay=0.001, jitter=False)


@activity(name="wo_slow", retry_policy=RetryPolicy(max_retries=0))
async def wo_slow(seconds: float, timeout: float = 10.0) -> dict:
    calls["wo_slow"] += 1
    await asyncio.sleep(seconds)
    return {"slept": seconds, "timeout": timeout}  # its own argument named timeout


@activity(name="wo_flaky", retry_policy=QUICK)
def wo_flaky(tag: str) -> str:  # sync: runs in a thread
    calls[tag] += 1
    raise ConnectionError(f"{tag} failed")


@activity(name="wo_undo", retry_policy=QUICK)
async def wo_undo() -> None:
    pass


@workflow(name="wo_flow", retry_policy=RetryPolicy(max_retries=0))
async def wo_flow(ctx) -> dict:
    out: dict = {}
    try:
        await ctx.execute_activity(with_options(wo_slow, timeout=0.05), 5)
    except ActivityTimeoutError as exc:
        out["timed_out"] = str(exc)
    # Its own keyword argument "timeout" reaches it; the step's timeout is the option.
    out["own"] = await ctx.execute_activity(with_options(wo_slow, timeout=5), 0.01,
                                            timeout=3.5)
    out["plain"] = await ctx.execute_activity(wo_slow, 0.01)
    try:
        await ctx.execute_activity(with_options(wo_flaky, retry_policy=RetryPolicy(
            max_retries=0)), "once")
    except ConnectionError:
        out["once"] = calls["once"]
    try:
        await ctx.execute_activity(wo_flaky, "policy")
    except ConnectionError:
        out["policy"] = calls["policy"]
    out["parallel"] = await ctx.execute_parallel(
        (with_options(wo_slow, timeout=None), (0.01,), {}), (wo_slow, (0.02,), {}))
    return out


async def test_one_call_with_another_timeout_or_retry_policy(client):
    calls.clear()
    run_id = await client.start_workflow("wo_flow", wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "completed", run.error
    out = run.output_data["result"]
    assert "timed out after 0.05 s" in out["timed_out"]
    assert out["own"] == {"slept": 0.01, "timeout": 3.5}
    assert out["plain"] == {"slept": 0.01, "timeout": 10.0}
    assert out["once"] == 1 and out["policy"] == 4  # the option's 0 retries; the own 3
    assert out["parallel"] == [{"slept": 0.01, "timeout": 10.0},
                               {"slept": 0.02, "timeout": 10.0}]
    steps = await client.get_workflow_steps(run_id)
    assert [s.name for s in steps] == ["wo_slow"] * 3 + ["wo_flaky"] * 2 + ["wo_slow"] * 2
    assert [s.attempts for s in steps if s.name == "wo_flaky"] == [1, 4]


async def test_outside_a_workflow_it_is_the_plain_function():
    assert await with_options(wo_slow, timeout=1)(0, timeout=2) == {"slept": 0, "timeout": 2}
    assert with_options(wo_slow).__name__ == "wo_slow"
    with pytest.raises(ConnectionError):
        with_options(wo_flaky, retry_policy=RetryPolicy(max_retries=0))("direct")


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="timeout of activity 'wo_slow'"):
        with_options(wo_slow, timeout=-1)
    with pytest.raises(ValueError, match="timeout"):
        with_options(wo_slow, timeout=float("nan"))
    with pytest.raises(TypeError, match="must be a RetryPolicy"):
        with_options(wo_slow, retry_policy={"max_retries": 1})
    with pytest.raises(ValueError, match="no activity named 'nope'"):
        with_options("nope")
    with pytest.raises(TypeError):
        with_options(wo_slow, 5)  # options are keywords only
    with pytest.raises(TypeError, match="with_options takes an activity function, got 5"):
        with_options(5)
    # By name, a registered activity takes options too.
    assert with_options("wo_slow", timeout=2).__tinyworkflow_activity__.timeout == 2


@workflow(name="wo_compensate", retry_policy=RetryPolicy(max_retries=0))
async def wo_compensate(ctx) -> str:
    try:
        ctx.add_compensation(with_options(wo_undo, timeout=1))
    except TypeError as exc:
        return str(exc)
    return "accepted"


async def test_a_compensation_takes_the_activity_as_registered(client):
    run_id = await client.start_workflow("wo_compensate", wait=True)
    message = (await client.get_workflow_status(run_id)).output_data["result"]
    assert "'wo_undo' with other options (with_options)" in message
