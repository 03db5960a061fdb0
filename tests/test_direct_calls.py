"""Activities called directly in workflow code are steps (issue 22, item 4): ``await
fetch(x)`` in a workflow records a step exactly as ``ctx.execute_activity(fetch, x)``
does; anywhere else the function is the plain function. On every backend."""

import asyncio
import inspect
import time
from collections import Counter

import pytest

from tinyworkflow import (
    ActivityTimeoutError,
    RetryPolicy,
    TinyWorkflowClient,
    activity,
    with_options,
    workflow,
)

calls: Counter = Counter()
NO_RETRY = RetryPolicy(max_retries=0)


@activity(name="dc_fetch", retry_policy=NO_RETRY)
async def dc_fetch(x: int, delay: float = 0) -> int:
    calls["dc_fetch"] += 1
    await asyncio.sleep(delay)
    return x * 10


@activity(name="dc_compute", retry_policy=NO_RETRY)
def dc_compute(x: int) -> dict:  # sync: runs in a thread
    calls["dc_compute"] += 1
    return {"square": x * x}


@activity(name="dc_outer", retry_policy=NO_RETRY)
async def dc_outer(x: int) -> int:
    # Inside an activity, another activity is the plain function: no step of its own.
    return await dc_fetch(x) + dc_compute(x)["square"]


@workflow(name="dc_flow", retry_policy=NO_RETRY)
async def dc_flow(ctx) -> dict:
    a = await dc_fetch(1)
    b = await dc_compute(3)
    both = await asyncio.gather(dc_fetch(2), dc_compute(4))
    nested = await dc_outer(5)
    try:
        await with_options(dc_fetch, timeout=0.05)(7, delay=5)
    except ActivityTimeoutError:
        timed_out = True
    await ctx.wait_for_signal("go")  # parks: the next execution replays all of it
    return {"a": a, "b": b, "both": both, "nested": nested, "timed_out": timed_out}


async def test_activities_called_in_a_workflow_are_steps_run_once(db_url):
    calls.clear()
    async with TinyWorkflowClient(db_url) as client:
        run_id = await client.start_workflow("dc_flow")
        await client.recover_workflows()  # runs the steps, then parks on the signal
        first = Counter(calls)
        await client.send_signal(run_id, "go")
        await client.recover_workflows()  # a replay: no step runs again
        run = await client.get_workflow_status(run_id)
        steps = await client.get_workflow_steps(run_id)
    assert run.status == "completed", run.error
    assert run.output_data["result"] == {"a": 10, "b": {"square": 9}, "both": [20, {"square": 16}],
                               "nested": 75, "timed_out": True}
    # In the gather, the plain def's step starts when called, the async one's when
    # gather's task for it starts: the same order on every replay.
    assert [(s.name, s.status) for s in steps if s.kind == "activity"] == [
        ("dc_fetch", "completed"), ("dc_compute", "completed"), ("dc_compute", "completed"),
        ("dc_fetch", "completed"), ("dc_outer", "completed"), ("dc_fetch", "failed")]
    # dc_outer's own calls are not steps: its two calls ran inside the one step.
    assert first == calls == Counter(dc_fetch=4, dc_compute=3)


async def test_outside_a_workflow_an_activity_is_the_plain_function():
    calls.clear()
    assert await dc_fetch(2) == 20
    assert dc_compute(3) == {"square": 9}
    assert inspect.iscoroutinefunction(dc_fetch) and not inspect.iscoroutinefunction(dc_compute)
    assert dc_fetch.__name__ == "dc_fetch" and dc_fetch.__wrapped__.__name__ == "dc_fetch"
    assert calls == Counter(dc_fetch=1, dc_compute=1)


@workflow(name="dc_unawaited", retry_policy=NO_RETRY)
async def dc_unawaited(ctx) -> list:
    said = []
    step = dc_compute(2)  # forgot await
    for use in (lambda: bool(step), lambda: step["square"], lambda: step.get("square"),
                lambda: list(step), lambda: "square" in step):
        try:
            use()
        except (TypeError, AttributeError) as exc:
            said.append(str(exc))
    said.append((await step)["square"])
    return said


async def test_a_sync_activity_called_unawaited_says_to_await_it(client):
    run_id = await client.start_workflow("dc_unawaited", wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "completed", run.error
    *messages, value = run.output_data["result"]
    assert value == 4 and len(messages) == 5  # and the step still works once awaited
    for message in messages:
        assert "dc_compute(...) called in a workflow is a step" in message
        assert "await dc_compute(...)" in message


def test_registering_an_activity_again_returns_the_same_callable():
    again = activity(name="dc_fetch", retry_policy=NO_RETRY)(dc_fetch)
    assert again is dc_fetch
    with pytest.raises(ValueError, match="already registered"):
        @activity(name="dc_fetch")
        async def other(x):
            return x


async def _charge(x: int) -> int:
    return x


def test_an_alias_does_not_change_the_first_name():
    eu = activity(name="dc_charge_eu", timeout=5)(_charge)
    us = activity(name="dc_charge_us", timeout=60)(_charge)
    assert eu is not us
    assert (eu.__tinyworkflow_activity__.name, eu.__tinyworkflow_activity__.timeout) == (
        "dc_charge_eu", 5)
    assert (us.__tinyworkflow_activity__.name, us.__tinyworkflow_activity__.timeout) == (
        "dc_charge_us", 60)
    assert activity(name="dc_charge_eu", timeout=5)(eu) is eu  # again: the same callable


class _Shop:
    def __init__(self, rate: int):
        self.rate = rate

    async def price(self, amount: int) -> int:
        return amount * self.rate


_cheap, _dear = _Shop(2), _Shop(3)
dc_price_cheap = activity(name="dc_price_cheap")(_cheap.price)
dc_price_dear = activity(name="dc_price_dear")(_dear.price)
dc_nap = activity(name="dc_nap")(time.sleep)  # a builtin: no attributes of its own


@workflow(name="dc_methods")
async def dc_methods(ctx) -> list:
    return [await dc_price_cheap(5), await dc_price_dear(5), await dc_nap(0)]


async def test_bound_methods_and_builtins_are_activities_each_of_its_own(client):
    run_id = await client.start_workflow(dc_methods, wait=True)
    assert await client.wait_for_result(run_id) == [10, 15, None]
    steps = await client.get_workflow_steps(run_id)
    assert [s.name for s in steps] == ["dc_price_cheap", "dc_price_dear", "dc_nap"]
