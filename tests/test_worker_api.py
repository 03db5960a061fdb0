"""The in-process worker and the client helpers of the worker issue: graceful stop,
waking without polling, wait_for_result, resume, fork, advertised workers."""

import asyncio
import json
import time
from collections import Counter

import pytest

import dbutil
import tinyworkflow
from tinyworkflow import (
    RetryPolicy,
    RunNotFoundError,
    RunStateError,
    TinyWorkflowClient,
    WorkflowFailedError,
    WorkflowNotFoundError,
    activity,
    workflow,
)

NO_RETRY = RetryPolicy(max_retries=0)
calls: Counter = Counter()
fail_at: dict = {}


@activity(name="wk_step", retry_policy=NO_RETRY)
async def wk_step(n, delay=0.0):
    calls[n] += 1
    if delay:
        await asyncio.sleep(delay)
    if fail_at.get(n):
        fail_at[n] -= 1
        raise RuntimeError(f"step {n} broke")
    return n


@workflow(name="wk_three", retry_policy=NO_RETRY)
async def wk_three(ctx):
    delay = ctx.get_input("delay", 0.0)
    return [await ctx.execute_activity(wk_step, n, delay) for n in (1, 2, 3)]


def reset():
    calls.clear()
    fail_at.clear()


async def events_of(client, run_id):
    return [e.event_type for e in await client.get_workflow_events(run_id)]


# ---- wait_for_result --------------------------------------------------------------------


async def test_wait_for_result_outcomes(db_url):
    reset()
    async with TinyWorkflowClient(db_url, auto_start_worker=True) as c:
        ok = await c.start_workflow("wk_three")
        assert await c.wait_for_result(ok, timeout=5) == [1, 2, 3]
        fail_at[2] = 1
        bad = await c.start_workflow("wk_three")
        with pytest.raises(WorkflowFailedError, match="failed: RuntimeError: step 2 broke") as e:
            await c.wait_for_result(bad, timeout=5)
        assert (e.value.run_id, e.value.status) == (bad, "failed")
        slow = await c.start_workflow("wk_three", {"delay": 0.5})
        with pytest.raises(TimeoutError, match="has not finished within 0.05 s"):
            await c.wait_for_result(slow, timeout=0.05)
        await c.cancel_workflow(slow)
        with pytest.raises(WorkflowFailedError, match="was cancelled"):
            await c.wait_for_result(slow, timeout=5)
        with pytest.raises(RunNotFoundError):
            await c.wait_for_result("nope")


async def test_wait_for_result_across_clients(db_url):
    """The run executes in another client (as in another process): polled."""
    reset()
    async with TinyWorkflowClient(db_url, poll_interval=0.05) as waiter, \
            TinyWorkflowClient(db_url, auto_start_worker=True) as _worker:
        run_id = await waiter.start_workflow("wk_three", {"delay": 0.05})
        started = time.monotonic()
        assert await waiter.wait_for_result(run_id, timeout=10) == [1, 2, 3]
        assert time.monotonic() - started < 3


# ---- waking -----------------------------------------------------------------------------


async def test_worker_starts_new_runs_at_once(db_url):
    async with TinyWorkflowClient(db_url, auto_start_worker=True, poll_interval=30) as c:
        await asyncio.sleep(0.05)  # the worker is idle, sleeping up to 30 s
        started = time.monotonic()
        run_id = await c.start_workflow("wk_three")
        await c.wait_for_result(run_id, timeout=5)
        assert time.monotonic() - started < 1


@workflow(name="wk_retry_soon", retry_policy=RetryPolicy(max_retries=1, initial_delay=0.3,
                                                        jitter=False))
async def wk_retry_soon(ctx):
    if ctx.retry_count == 0:
        raise RuntimeError("first attempt fails")
    return "second attempt"


async def test_worker_wakes_when_a_retry_is_due(db_url):
    async with TinyWorkflowClient(db_url, auto_start_worker=True, poll_interval=30) as c:
        started = time.monotonic()
        run_id = await c.start_workflow("wk_retry_soon")
        assert await c.wait_for_result(run_id, timeout=5) == "second attempt"
        assert 0.3 <= time.monotonic() - started < 2


# ---- graceful stop ----------------------------------------------------------------------


async def test_graceful_stop_finishes_the_step_then_releases(db_url):
    reset()
    async with TinyWorkflowClient(db_url, lease_seconds=30) as first:
        run_id = await first.start_workflow("wk_three", {"delay": 0.3})
        await first.start_worker()
        while not calls[1]:
            await asyncio.sleep(0.01)
        await first.stop_worker(grace=5)  # step 1 finishes, step 2 does not start
        run = await first.get_workflow_status(run_id)
        assert run.status == "running" and run.owner is None
        assert [s.step for s in await first.get_workflow_steps(run_id)] == [1]
        assert (await events_of(first, run_id))[-1] == "workflow_released"
    async with TinyWorkflowClient(db_url, lease_seconds=30) as second:
        assert await second.recover_workflows() == [run_id]  # no wait for the 30 s lease
        assert (await second.get_workflow_status(run_id)).output_data == {"result": [1, 2, 3]}
    assert calls == Counter({1: 1, 2: 1, 3: 1})


async def test_stop_after_grace_cancels_the_step_and_releases(db_url):
    reset()
    async with TinyWorkflowClient(db_url, lease_seconds=30) as c:
        run_id = await c.start_workflow("wk_three", {"delay": 5})
        await c.start_worker()
        while not calls[1]:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await c.stop_worker(grace=0.1)
        assert time.monotonic() - started < 2
        assert await c.get_workflow_steps(run_id) == []
        assert (await events_of(c, run_id))[-1] == "workflow_released"
        assert (await c.get_workflow_status(run_id)).owner is None
        await c.cancel_workflow(run_id)


# ---- resume and fork --------------------------------------------------------------------


async def test_resume_a_failed_run_from_its_failure_point(client):
    reset()
    fail_at[3] = 1
    run_id = await client.start_workflow("wk_three", wait=True)
    assert (await client.get_workflow_status(run_id)).status == "failed"
    assert await client.resume_workflow(run_id) == run_id
    assert (await client.get_workflow_status(run_id)).status == "pending"
    assert await client.recover_workflows() == [run_id]
    run = await client.get_workflow_status(run_id)
    assert run.status == "completed" and run.output_data == {"result": [1, 2, 3]}
    assert calls == Counter({1: 1, 2: 1, 3: 2}) and run.retry_count == 1
    assert "workflow_resume_requested" in await events_of(client, run_id)
    with pytest.raises(RunStateError, match="only a failed or cancelled run can be resumed"):
        await client.resume_workflow(run_id)
    with pytest.raises(RunNotFoundError):
        await client.resume_workflow("nope")


async def test_resume_a_cancelled_run(client):
    reset()
    run_id = await client.start_workflow("wk_three")
    await client.cancel_workflow(run_id)
    await client.resume_workflow(run_id)
    assert await client.recover_workflows() == [run_id]
    assert (await client.get_workflow_status(run_id)).output_data == {"result": [1, 2, 3]}


async def test_fork_reuses_the_steps_before_the_chosen_one(client):
    reset()
    first = await client.start_workflow("wk_three", {"delay": 0}, workflow_id="order-7",
                                        wait=True)
    fork = await client.fork_workflow(first, from_step=3)
    assert fork != first
    run = await client.get_workflow_status(fork)
    assert (run.status, run.workflow_id, run.input_data) == ("pending", "order-7", {"delay": 0})
    assert [s.step for s in await client.get_workflow_steps(fork)] == [1, 2]
    await client.recover_workflows()
    assert (await client.get_workflow_status(fork)).output_data == {"result": [1, 2, 3]}
    assert calls == Counter({1: 1, 2: 1, 3: 2})
    created = (await client.get_workflow_events(fork))[0]
    assert created.event_data["forked_from"] == first and created.event_data["from_step"] == 3
    for bad in (0, -1, "2", 1.5, True):
        with pytest.raises(ValueError, match="from_step"):
            await client.fork_workflow(first, bad)
    with pytest.raises(RunNotFoundError):
        await client.fork_workflow("nope", 1)


# ---- advertised workers -----------------------------------------------------------------


async def test_workers_advertise_what_they_serve(db_url):
    async with TinyWorkflowClient(db_url, auto_start_worker=True) as c:
        await asyncio.sleep(0.05)
        (worker,) = await c.list_workers()
        assert "wk_three" in worker.workflows and worker.heartbeat_at is not None
        await c.stop_worker()
        assert await c.list_workers() == []


async def test_start_a_run_served_only_by_a_live_worker(db_url):
    async with TinyWorkflowClient(db_url) as c:
        now = time.time()
        await tinyworkflow._internals.store(c).advertise({
            "worker_id": "elsewhere:1", "host": "elsewhere", "pid": 1,
            "workflows": json.dumps({"remote_only": {"max_retries": 7, "timeout": 12.5}}),
            "started_at": now, "heartbeat_at": now, "expires_at": now + 30})
        run_id = await c.start_workflow("remote_only", {"a": 1})
        run = await c.get_workflow_status(run_id)
        assert (run.status, run.max_retries) == ("pending", 7)
        # wait=True stores the run for the worker that serves it and waits (here, for
        # ever: that worker is only advertised). tests/test_cli_remote.py has a real one.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(c.start_workflow("remote_only", {"b": 2}, wait=True), 0.5)
        waiting = [r for r in await c.list_workflow_executions() if r.input_data == {"b": 2}]
        assert [r.status for r in waiting] == ["pending"]
        await tinyworkflow._internals.store(c).advertise({
            "worker_id": "elsewhere:1", "host": "elsewhere", "pid": 1,
            "workflows": json.dumps({"remote_only": {"max_retries": 7, "timeout": None}}),
            "started_at": now, "heartbeat_at": now - 60, "expires_at": now - 30})
        with pytest.raises(WorkflowNotFoundError, match="served by live workers: \\(none\\)"):
            await c.start_workflow("remote_only")


# ---- schema migration -------------------------------------------------------------------


async def test_migrates_a_version_1_database(db_url):
    # The version 1 schema in the backend's own DDL (the store's SQL text, no connection).
    store = tinyworkflow._internals.store(TinyWorkflowClient(db_url))
    await dbutil.execute(db_url, store.sql(
        "CREATE TABLE {p}meta (name {key} PRIMARY KEY, value {text} NOT NULL){table}"))
    for statement in tinyworkflow._internals.migrations[0]:
        await dbutil.execute(db_url, store.sql(statement))
    await dbutil.execute(db_url, "INSERT INTO tinyworkflow_meta VALUES (?, ?)",
                         ("schema_version", "1"))
    await dbutil.execute(db_url, "INSERT INTO tinyworkflow_runs (run_id, workflow_id, "
                         "workflow_name, status, created_at, updated_at) "
                         "VALUES ('old', 'w', 'w', 'completed', 1, 1)")
    async with TinyWorkflowClient(db_url) as c:
        assert (await c.get_workflow_status("old")).status == "completed"
        assert await c.list_workers() == []
    assert await dbutil.schema_version(db_url) == [
        ("schema_version", str(len(tinyworkflow._internals.migrations)))]
    assert "tinyworkflow_workers" in await dbutil.table_names(db_url)


async def test_resume_right_after_cancelling_an_executing_run(db_url):
    """The cancelled execution here stops first (its lease is dropped then), so the
    resumed run neither overlaps it nor waits for the lease to run out."""
    reset()
    async with TinyWorkflowClient(db_url, auto_start_worker=True, lease_seconds=30) as c:
        run_id = await c.start_workflow("wk_three", {"delay": 0.2})
        while not calls[1]:
            await asyncio.sleep(0.01)
        await c.cancel_workflow(run_id)
        started = time.monotonic()
        await c.resume_workflow(run_id)
        assert await c.wait_for_result(run_id, timeout=10) == [1, 2, 3]
        assert time.monotonic() - started < 3
    assert calls[1] == 2 and calls[2] == 1 and calls[3] == 1


flaky_world = {"down": True}


@workflow(name="wk_fail_then_step", retry_policy=RetryPolicy(max_retries=3, initial_delay=0.3,
                                                            jitter=False))
async def wk_fail_then_step(ctx):
    await ctx.execute_activity(wk_step, 10)
    if flaky_world["down"]:  # outside state: the next execution takes another path
        flaky_world["down"] = False
        raise RuntimeError("first attempt fails")
    return await ctx.execute_activity(wk_step, 11)


async def test_cancel_during_wait_true_backoff_runs_nothing_more(client):
    """Cancelled while start_workflow(wait=True) sleeps through a retry backoff: the
    call returns, and no activity of the cancelled run executes again."""
    reset()
    flaky_world["down"] = True
    task = asyncio.ensure_future(client.start_workflow("wk_fail_then_step", wait=True))
    while True:
        runs = await client.list_workflow_executions(workflow_name="wk_fail_then_step")
        if runs and runs[0].status == "retrying":
            break
        await asyncio.sleep(0.01)
    await client.cancel_workflow(runs[0].run_id)
    assert await asyncio.wait_for(task, 5) == runs[0].run_id
    await asyncio.sleep(0.4)  # past the backoff
    assert calls == Counter({10: 1}) and (await client.get_workflow_status(
        runs[0].run_id)).status == "cancelled"


async def test_a_run_started_by_another_client_of_the_process_starts_at_once(db_url):
    async with TinyWorkflowClient(db_url, auto_start_worker=True, poll_interval=30) as worker, \
            TinyWorkflowClient(db_url, poll_interval=0.02) as other:
        await asyncio.sleep(0.05)  # the worker is idle, sleeping up to 30 s
        started = time.monotonic()
        run_id = await other.start_workflow("wk_three")
        assert await other.wait_for_result(run_id, timeout=5) == [1, 2, 3]
        assert time.monotonic() - started < 1
        assert worker is not other
