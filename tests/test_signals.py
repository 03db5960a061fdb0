"""Signals: ``client.send_signal`` stores a signal; ``ctx.wait_for_signal`` takes the
oldest one of that name as a step. Buffered, ordered, consumed once (also under
replay), with a recorded timeout; a waiting run is parked and woken by the signal."""

import asyncio
import time

import pytest

import dbutil
from tinyworkflow import (RetryPolicy, RunNotFoundError, RunStateError, SerializationError,
                          TinyWorkflowClient, activity, workflow)

NO_RETRY = RetryPolicy(max_retries=0)


@workflow(name="signals_two", retry_policy=NO_RETRY)
async def signals_two(ctx):
    return [await ctx.wait_for_signal("item"), await ctx.wait_for_signal("item")]


async def test_signals_sent_before_the_wait_are_buffered_and_received_in_order(client):
    run_id = await client.start_workflow("signals_two")
    await client.send_signal(run_id, "item", {"n": 1})  # no execution has started yet
    await client.send_signal(run_id, "item", [2, "two"])
    await client.send_signal(run_id, "other", "not for this wait")
    await client.recover_workflows()
    assert await client.wait_for_result(run_id, timeout=5) == [{"n": 1}, [2, "two"]]
    steps = await client.get_workflow_steps(run_id)
    assert [(s.name, s.kind, s.status) for s in steps] == [
        ("item", "signal", "completed"), ("item", "signal", "completed")]
    kinds = [e.event_type for e in await client.get_workflow_events(run_id)]
    assert kinds.count("signal_received") == 3
    # Each consumed once; the other stays stored (and goes with the run at cleanup).
    rows = await dbutil.rows(client.database_url, "SELECT name, consumed_step FROM "
                             "tinyworkflow_signals WHERE run_id = ? ORDER BY id", (run_id,))
    assert rows == [("item", 1), ("item", 2), ("other", None)]


async def test_a_parked_run_is_woken_by_a_signal_at_once(db_url):
    async with TinyWorkflowClient(db_url, auto_start_worker=True, poll_interval=30) as client:
        run_id = await client.start_workflow("signals_two")
        await dbutil.until(lambda: _parked(client, run_id), 5, "the run to park")
        started = time.monotonic()
        await client.send_signal(run_id, "item", 1)
        await dbutil.until(lambda: _parked(client, run_id, steps=1), 5, "the run to park again")
        await client.send_signal(run_id, "item", 2)
        assert await client.wait_for_result(run_id, timeout=5) == [1, 2]
        assert time.monotonic() - started < 3  # the poll interval is 30 s: woken, not polled


async def _parked(client, run_id, steps=0) -> bool:
    run = await client.get_workflow_status(run_id)
    done = [s for s in await client.get_workflow_steps(run_id) if s.status == "completed"]
    return run.status == "running" and run.owner is None and len(done) == steps


attempts = {"n": 0}


@activity(name="signals_flaky", retry_policy=NO_RETRY)
async def flaky(payload):
    attempts["n"] += 1
    if attempts["n"] == 1:
        raise RuntimeError("first attempt fails")
    return payload


@workflow(name="signals_replayed", retry_policy=RetryPolicy(max_retries=1, initial_delay=0.01,
                                                            jitter=False))
async def signals_replayed(ctx):
    payload = await ctx.wait_for_signal("go")
    return await ctx.execute_activity(flaky, payload)


async def test_a_consumed_signal_replays_and_the_next_one_stays(client):
    attempts["n"] = 0
    run_id = await client.start_workflow("signals_replayed")
    await client.send_signal(run_id, "go", "first")
    await client.send_signal(run_id, "go", "second")
    await client.recover_workflows()  # attempt 1 fails after consuming "first"
    await asyncio.sleep(0.05)  # the retry's backoff
    await client.recover_workflows()  # attempt 2 replays the consumed signal
    assert await client.wait_for_result(run_id, timeout=5) == "first"
    assert attempts["n"] == 2
    rows = await dbutil.rows(client.database_url, "SELECT payload, consumed_step FROM "
                             "tinyworkflow_signals WHERE run_id = ? ORDER BY id", (run_id,))
    assert rows == [('"first"', 1), ('"second"', None)]


@workflow(name="signals_timeout", retry_policy=RetryPolicy(max_retries=1, initial_delay=0.01,
                                                           jitter=False))
async def signals_timeout(ctx):
    try:
        await ctx.wait_for_signal("late", timeout=1.2)
    except TimeoutError as exc:
        if ctx.retry_count == 0:
            raise RuntimeError("fail after the timeout, to be replayed") from exc
        return f"timed out: {exc}"
    return "signalled"


async def test_a_timeout_is_recorded_and_replayed(client):
    started = time.monotonic()
    run_id = await client.start_workflow("signals_timeout", wait=True)
    elapsed = time.monotonic() - started
    run = await client.get_workflow_status(run_id)
    assert run.status == "completed", run.error
    assert run.output_data["result"].startswith("timed out: no signal 'late' came within 1.2 s")
    assert 1.2 <= elapsed < 2.5, elapsed  # the retry did not wait again
    kinds = [e.event_type for e in await client.get_workflow_events(run_id)]
    assert kinds.count("signal_timed_out") == 1 and kinds.count("signal_waiting") == 1
    # A signal after the timeout is stored but no wait takes it.
    steps = await client.get_workflow_steps(run_id)
    assert [(s.kind, s.status) for s in steps] == [("signal", "failed")]


async def test_signal_to_an_unknown_or_finished_run_is_a_clear_error(client):
    with pytest.raises(RunNotFoundError, match="no run with id 'nope'"):
        await client.send_signal("nope", "go")
    run_id = await client.start_workflow("signals_two")
    assert await client.cancel_workflow(run_id)
    with pytest.raises(RunStateError, match="cancelled"):
        await client.send_signal(run_id, "item", 1)
    with pytest.raises(SerializationError):
        await client.send_signal(run_id, "item", object())
    with pytest.raises(ValueError):
        await client.send_signal(run_id, "", 1)
    assert await dbutil.rows(client.database_url,
                             "SELECT COUNT(*) FROM tinyworkflow_signals") == [(0,)]


@workflow(name="signals_parallel", retry_policy=NO_RETRY)
async def signals_parallel(ctx):
    a, b = await asyncio.gather(ctx.wait_for_signal("a"), ctx.wait_for_signal("b"))
    return [a, b]


async def test_two_waits_at_once_each_get_their_signal(db_url):
    async with TinyWorkflowClient(db_url, auto_start_worker=True) as client:
        run_id = await client.start_workflow("signals_parallel")
        await asyncio.sleep(0.2)
        await client.send_signal(run_id, "b", "B")
        await asyncio.sleep(0.2)
        await client.send_signal(run_id, "a", "A")
        assert await client.wait_for_result(run_id, timeout=5) == ["A", "B"]
