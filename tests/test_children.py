"""Child workflows: ``ctx.execute_child_workflow`` / ``ctx.start_child_workflow``. A
child is a run of its own (``parent_run_id`` set) started by a step of its parent, in
the same transaction; the parent waits for it parked, a cancel reaches every
descendant, and neither a replay nor a crash starts a child twice."""

import asyncio
import json
import signal

import pytest

import dbutil
from tinyworkflow import (RetryPolicy, SerializationError, TinyWorkflowClient,
                          WorkflowFailedError, WorkflowNotFoundError, activity, workflow)

NO_RETRY = RetryPolicy(max_retries=0)
ONE_RETRY = RetryPolicy(max_retries=1, initial_delay=0.01, jitter=False)
calls: list = []


@activity(name="ch_double")
async def double(x: int) -> int:
    calls.append(("double", x))
    return 2 * x


@workflow(name="ch_child", retry_policy=NO_RETRY)
async def child(ctx):
    await ctx.sleep(ctx.get_input("sleep", 0))
    if ctx.get_input("fail"):
        raise ValueError(f"child {ctx.get_input('x')} refuses")
    return await ctx.execute_activity(double, ctx.get_input("x"))


@workflow(name="ch_fan_out", retry_policy=NO_RETRY)
async def fan_out(ctx):
    handles = [await ctx.start_child_workflow("ch_child", {"x": x, "sleep": 0.05 * x})
               for x in ctx.get_input("xs")]
    results = await asyncio.gather(*handles)
    again = await handles[0]  # awaiting a handle again: the same outcome
    last = await ctx.execute_child_workflow("ch_child", {"x": 100}, workflow_id="last-one")
    return {"results": results, "again": again, "last": last,
            "ids": [h.run_id for h in handles]}


async def test_children_fan_out_and_return_their_results(client):
    calls.clear()
    run_id = await client.start_workflow("ch_fan_out", {"xs": [1, 2, 3]}, wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "completed", run.error
    out = run.output_data["result"]
    assert out["results"] == [2, 4, 6] and out["again"] == 2 and out["last"] == 200
    assert sorted(calls) == [("double", 1), ("double", 2), ("double", 3), ("double", 100)]
    children = [r for r in await client.list_workflow_executions(workflow_name="ch_child")]
    assert len(children) == 4
    assert {c.parent_run_id for c in children} == {run_id}
    assert {c.workflow_id for c in children} == {"ch_child", "last-one"}
    steps = await client.get_workflow_steps(run_id)
    assert [(s.kind, s.name, s.status) for s in steps] == [("child", "ch_child", "completed")] * 4
    assert [s.output["run_id"] for s in steps[:3]] == out["ids"]
    assert [s.output["result"] for s in steps] == [2, 4, 6, 200]
    kinds = [e.event_type for e in await client.get_workflow_events(run_id)]
    assert kinds.count("child_started") == 4 and kinds.count("child_completed") == 4


async def test_a_worker_executes_parent_and_children(db_url):
    calls.clear()
    async with TinyWorkflowClient(db_url, auto_start_worker=True, poll_interval=0.2) as c:
        run_id = await c.start_workflow("ch_fan_out", {"xs": [5, 6]})
        result = await c.wait_for_result(run_id, timeout=20)
    assert result["results"] == [10, 12] and result["last"] == 200
    assert len(calls) == 3


@workflow(name="ch_handles_failure", retry_policy=NO_RETRY)
async def handles_failure(ctx):
    try:
        await ctx.execute_child_workflow("ch_child", {"x": 7, "fail": True})
    except WorkflowFailedError as exc:
        return {"run_id": exc.run_id, "status": exc.status, "error": exc.error,
                "message": str(exc)}


async def test_a_failed_child_raises_workflow_failed_error_in_the_parent(client):
    run_id = await client.start_workflow("ch_handles_failure", wait=True)
    out = await client.wait_for_result(run_id)
    [kid] = await client.list_workflow_executions(workflow_name="ch_child")
    assert out == {"run_id": kid.run_id, "status": "failed",
                   "error": "ValueError: child 7 refuses",
                   "message": f"child run {kid.run_id} of workflow 'ch_child' failed: "
                              "ValueError: child 7 refuses"}
    [step] = await client.get_workflow_steps(run_id)
    assert (step.kind, step.status) == ("child", "failed")


# The parent fails after its child has completed; the retry replays the child's result.
parent_attempts: list = []


@workflow(name="ch_retried_parent", retry_policy=ONE_RETRY)
async def retried_parent(ctx):
    value = await ctx.execute_child_workflow("ch_child", {"x": 4})
    parent_attempts.append(ctx.retry_count)
    if ctx.retry_count == 0:
        raise RuntimeError("the parent trips after its child")
    return value


async def test_a_workflow_retry_replays_the_child_without_starting_it_again(client):
    calls.clear()
    parent_attempts.clear()
    run_id = await client.start_workflow("ch_retried_parent", wait=True)
    assert await client.wait_for_result(run_id) == 8
    assert parent_attempts == [0, 1]
    assert len(await client.list_workflow_executions(workflow_name="ch_child")) == 1
    assert calls == [("double", 4)]


# A child that failed in the parent's earlier attempt is started anew by the retry.
@workflow(name="ch_retry_failed_child", retry_policy=ONE_RETRY)
async def retry_failed_child(ctx):
    return await ctx.execute_child_workflow("ch_child", {"x": 3, "fail": ctx.retry_count == 0})


async def test_a_child_failed_in_an_earlier_attempt_is_started_anew(client):
    run_id = await client.start_workflow("ch_retry_failed_child", wait=True)
    assert await client.wait_for_result(run_id) == 6
    kids = await client.list_workflow_executions(workflow_name="ch_child")
    assert sorted(k.status for k in kids) == ["completed", "failed"]
    [step] = await client.get_workflow_steps(run_id)
    completed = next(k for k in kids if k.status == "completed")
    assert step.output == {"run_id": completed.run_id, "result": 6}


# Cancelling: a tree of parent -> child -> grandchild, all waiting for a signal.
@workflow(name="ch_waiter", retry_policy=NO_RETRY)
async def waiter(ctx):
    if ctx.get_input("depth", 0) > 0:
        handle = await ctx.start_child_workflow("ch_waiter", {"depth": ctx.get_input("depth") - 1})
        ctx.set_event("child", handle.run_id)
        try:
            return await handle
        except WorkflowFailedError as exc:
            return f"my child {exc.status}"
    ctx.set_event("child", None)
    return await ctx.wait_for_signal("go")


async def _chain(client, top: str) -> list:
    ids = [top]
    while True:
        below = await client.get_event(ids[-1], "child", timeout=10)
        if below is None:
            return ids
        ids.append(below)


async def test_cancelling_a_parent_cancels_every_descendant(db_url):
    async with TinyWorkflowClient(db_url, auto_start_worker=True, poll_interval=0.2) as c:
        top = await c.start_workflow("ch_waiter", {"depth": 2})
        ids = await _chain(c, top)
        assert len(ids) == 3
        outsider = await c.start_workflow("ch_waiter", {"depth": 0})
        assert await c.cancel_workflow(top) is True
        for run_id in ids:
            assert (await c.get_workflow_status(run_id)).status == "cancelled"
        events = await c.get_workflow_events(ids[2])
        assert events[-1].event_type == "workflow_cancelled"
        assert events[-1].event_data == {"with_ancestor": top}
        assert (await c.get_workflow_status(outsider)).status != "cancelled"
        await c.send_signal(outsider, "go", "free")
        assert await c.wait_for_result(outsider, timeout=10) == "free"


async def test_cancelling_a_child_alone_fails_the_parents_wait(db_url):
    async with TinyWorkflowClient(db_url, auto_start_worker=True, poll_interval=0.2) as c:
        top = await c.start_workflow("ch_waiter", {"depth": 1})
        _, kid = await _chain(c, top)
        await c.cancel_workflow(kid)
        assert await c.wait_for_result(top, timeout=10) == "my child cancelled"


@workflow(name="ch_bad_child", retry_policy=NO_RETRY)
async def bad_child(ctx):
    if ctx.get_input("what") == "unknown":
        await ctx.execute_child_workflow("ch_no_such_workflow")
    await ctx.execute_child_workflow("ch_child", {"x": object()})


@pytest.mark.parametrize("what, error", [("unknown", WorkflowNotFoundError),
                                         ("input", SerializationError)])
async def test_a_bad_child_fails_the_parent_and_stores_no_child(client, what, error):
    run_id = await client.start_workflow("ch_bad_child", {"what": what}, wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "failed" and run.error.startswith(error.__name__)
    assert await client.list_workflow_executions(workflow_name="ch_child") == []
    assert await client.get_workflow_steps(run_id) == []


# ---- a crash: the worker executing parent and child is killed ---------------------------

WORKER = """
import asyncio, json, os, sys, time
from tinyworkflow import RetryPolicy, TinyWorkflowClient, activity, workflow

@activity(name="ch_crash_work")
def work(path, x):
    with open(path, "a") as f:
        f.write(json.dumps(["work", x]) + "\\n")
    while not os.path.exists(path + ".go"):  # held until the test lets it finish
        time.sleep(0.02)
    return x * 10

@workflow(name="ch_crash_child", retry_policy=RetryPolicy(max_retries=0))
async def crash_child(ctx):
    return await ctx.execute_activity(work, ctx.get_input("log"), ctx.get_input("x"))

@workflow(name="ch_crash_parent", retry_policy=RetryPolicy(max_retries=0))
async def crash_parent(ctx):
    handles = [await ctx.start_child_workflow("ch_crash_child", {"log": ctx.get_input("log"),
                                                                 "x": x}) for x in (1, 2)]
    return sum(await asyncio.gather(*handles))
"""



@pytest.mark.crash
async def test_a_killed_worker_does_not_start_a_child_twice(db_url, tmp_path):
    log = tmp_path / "log.jsonl"
    worker = dbutil.start_worker_script(WORKER, db_url)
    try:
        async with TinyWorkflowClient(db_url) as client:
            await dbutil.until_served(client, "ch_crash_parent")
            top = await client.start_workflow("ch_crash_parent", {"log": str(log)})

            def both_working() -> bool:
                return log.exists() and len(log.read_text().splitlines()) == 2

            await dbutil.until(both_working, 15, "both children to be in their activity")
            worker.send_signal(signal.SIGKILL)  # the children's activities are in flight
            worker.wait(timeout=10)
            (tmp_path / "log.jsonl.go").touch()
            worker = dbutil.start_worker_script(WORKER, db_url)
            assert await client.wait_for_result(top, timeout=30) == 30
            kids = await client.list_workflow_executions(workflow_name="ch_crash_child")
            assert len(kids) == 2 and {k.parent_run_id for k in kids} == {top}
            steps = await client.get_workflow_steps(top)
            assert sorted(s.output["run_id"] for s in steps) == sorted(k.run_id for k in kids)
        # The activities in flight at the kill ran again (at least once); nothing else did.
        lines = sorted(tuple(json.loads(line)) for line in log.read_text().splitlines())
        assert lines == [("work", 1), ("work", 1), ("work", 2), ("work", 2)]
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)


# Review findings, kept as regression tests.
flaky_calls: list = []


@activity(name="ch_flaky_once", retry_policy=NO_RETRY)
async def flaky_once() -> None:
    flaky_calls.append(1)
    if len(flaky_calls) == 1:
        raise RuntimeError("first time")


@workflow(name="ch_started_before_a_retry", retry_policy=ONE_RETRY)
async def started_before_a_retry(ctx):
    handle = await ctx.start_child_workflow("ch_child", {"x": 1, "fail": True, "sleep": 0.3})
    await ctx.execute_activity(flaky_once)  # attempt 1 fails here; the child runs on
    try:
        await handle
        outcome = "child ok"
    except WorkflowFailedError:
        outcome = "child failed"
    await ctx.sleep(1.2)  # parks: the run replays the recorded failure after
    return outcome


async def test_a_child_that_fails_after_its_parents_retry_is_not_started_again(client):
    flaky_calls.clear()
    run_id = await client.start_workflow("ch_started_before_a_retry", wait=True)
    assert await client.wait_for_result(run_id) == "child failed"
    assert len(await client.list_workflow_executions(workflow_name="ch_child")) == 1


@workflow(name="ch_wait_for_a_handle", retry_policy=NO_RETRY)
async def wait_for_a_handle(ctx):
    handle = await ctx.start_child_workflow("ch_child", {"x": 21, "sleep": 0.3})
    try:
        return await asyncio.wait_for(handle, 0.05)
    except asyncio.TimeoutError:
        return await handle  # giving up on one wait leaves the handle usable


async def test_a_handle_waited_for_with_a_timeout_can_be_awaited_again(client):
    run_id = await client.start_workflow("ch_wait_for_a_handle", wait=True)
    assert await client.wait_for_result(run_id) == 42
