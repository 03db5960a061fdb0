"""Versioning with ``ctx.patched(change_id)``: a run in flight when new code is deployed
keeps the old path; runs that reach the change for the first time take the new one.
``ctx.deprecate_patch`` stands in once the old branch is gone. And published state:
``ctx.set_event`` / ``client.get_event``."""

import asyncio
import dataclasses

import pytest

import dbutil
import tinyworkflow
from tinyworkflow import (RetryPolicy, RunNotFoundError, RunStateError,
                          activity, workflow)

NO_RETRY = RetryPolicy(max_retries=0)
sent: list = []


@activity(name="ver_email")
async def email(order: int) -> str:
    sent.append(("email", order))
    return "email"


@activity(name="ver_sms")
async def sms(order: int) -> str:
    sent.append(("sms", order))
    return "sms"


flaky = {"left": 0}


@activity(name="ver_ship", retry_policy=NO_RETRY)
async def ship(order: int) -> str:
    if flaky["left"]:
        flaky["left"] -= 1
        raise RuntimeError("the carrier is down")
    sent.append(("ship", order))
    return "shipped"


# Version 1: wait for payment, email, wait for the delivery, ship. Version 2 texts
# instead of emailing, for the runs that reach that point on version 2.
@workflow(name="ver_order", retry_policy=NO_RETRY)
async def order_v1(ctx):
    await ctx.wait_for_signal("paid")
    notified = await ctx.execute_activity(email, ctx.get_input("order"))
    await ctx.wait_for_signal("delivered")
    return [notified, await ctx.execute_activity(ship, ctx.get_input("order"))]


async def order_v2(ctx):
    await ctx.wait_for_signal("paid")
    if ctx.patched("sms-instead-of-email"):
        notified = await ctx.execute_activity(sms, ctx.get_input("order"))
    else:
        notified = await ctx.execute_activity(email, ctx.get_input("order"))
    await ctx.wait_for_signal("delivered")
    return [notified, await ctx.execute_activity(ship, ctx.get_input("order"))]


async def order_v3(ctx):  # every email run has finished: the old branch is gone
    await ctx.wait_for_signal("paid")
    ctx.deprecate_patch("sms-instead-of-email")
    notified = await ctx.execute_activity(sms, ctx.get_input("order"))
    await ctx.wait_for_signal("delivered")
    return [notified, await ctx.execute_activity(ship, ctx.get_input("order"))]


def deploy(monkeypatch, fn) -> None:
    """What a deploy does to this process: the workflow's name now runs ``fn``."""
    current = tinyworkflow._internals.workflows["ver_order"]
    monkeypatch.setitem(tinyworkflow._internals.workflows, "ver_order",
                        dataclasses.replace(current, fn=fn))


async def start_and_park(client, order: int) -> str:
    run_id = await client.start_workflow("ver_order", {"order": order})
    await client.recover_workflows()  # parks at the signal wait
    return run_id


async def pay(client, run_id) -> None:
    await client.send_signal(run_id, "paid")
    await client.recover_workflows()  # notifies, parks at the delivery wait


async def finish(client, run_id):
    await client.send_signal(run_id, "paid")
    await client.send_signal(run_id, "delivered")
    await client.recover_workflows()
    return await client.wait_for_result(run_id, timeout=5)


async def test_a_run_in_flight_keeps_the_old_path_and_new_runs_take_the_new(client,
                                                                            monkeypatch):
    sent.clear()
    old = await start_and_park(client, 1)  # on version 1: emailed, waits for delivery
    await pay(client, old)
    deploy(monkeypatch, order_v2)
    new = await start_and_park(client, 2)
    await client.send_signal(old, "delivered")
    await client.recover_workflows()
    assert await client.wait_for_result(old, timeout=5) == ["email", "shipped"]
    assert await finish(client, new) == ["sms", "shipped"]
    assert sent == [("email", 1), ("ship", 1), ("sms", 2), ("ship", 2)]  # each once
    kinds = [(s.kind, s.name) for s in await client.get_workflow_steps(new)]
    assert kinds == [("signal", "paid"), ("patch", "sms-instead-of-email"),
                     ("activity", "ver_sms"), ("signal", "delivered"), ("activity", "ver_ship")]
    assert [s.kind for s in await client.get_workflow_steps(old)] == [
        "signal", "activity", "signal", "activity"]


async def test_a_run_started_on_old_code_that_reaches_the_change_later_takes_it(
        client, monkeypatch):
    sent.clear()
    run_id = await start_and_park(client, 3)  # version 1, not yet at the change
    deploy(monkeypatch, order_v2)
    assert await finish(client, run_id) == ["sms", "shipped"]


async def test_deprecate_patch_replays_marked_runs_and_new_runs_record_nothing(client,
                                                                              monkeypatch):
    sent.clear()
    deploy(monkeypatch, order_v2)
    marked = await start_and_park(client, 4)
    await client.send_signal(marked, "paid")
    await client.send_signal(marked, "delivered")
    flaky["left"] = 1  # it fails after the patch marker; resumed on version 3
    await client.recover_workflows()
    assert (await client.get_workflow_status(marked)).status == "failed"
    deploy(monkeypatch, order_v3)
    await client.resume_workflow(marked)
    await client.recover_workflows()
    assert await client.wait_for_result(marked, timeout=5) == ["sms", "shipped"]
    fresh = await start_and_park(client, 5)
    assert await finish(client, fresh) == ["sms", "shipped"]
    assert [s.kind for s in await client.get_workflow_steps(fresh)] == [
        "signal", "activity", "signal", "activity"]
    assert sent.count(("sms", 4)) == 1  # replayed past the marker, not sent again


async def test_a_changed_step_without_patched_points_to_it(client, monkeypatch):
    run_id = await start_and_park(client, 6)

    async def reordered(ctx):  # version 2 without patched(): not deterministic
        await ctx.execute_activity(sms, 0)

    deploy(monkeypatch, reordered)
    await client.send_signal(run_id, "paid")
    await client.recover_workflows()
    run = await client.get_workflow_status(run_id)
    assert run.status == "failed" and "NonDeterminismError" in run.error
    assert 'branch new code with `if ctx.patched("change-id"):`' in run.error


@workflow(name="ver_patched_only", retry_policy=NO_RETRY)
async def patched_only(ctx):
    first = ctx.patched("a")
    return [first, ctx.patched("b")]


async def test_patch_markers_are_written_before_later_steps_only(client):
    run_id = await client.start_workflow("ver_patched_only", wait=True)
    assert await client.wait_for_result(run_id) == [True, True]
    # Nothing after the markers was recorded, so nothing needed them.
    assert await client.get_workflow_steps(run_id) == []
    bad = await client.start_workflow("ver_bad_patch", {"id": ""}, wait=True)
    run = await client.get_workflow_status(bad)
    assert run.status == "failed" and "a change id is a non-empty string" in run.error


@workflow(name="ver_bad_patch", retry_policy=NO_RETRY)
async def bad_patch(ctx):
    return ctx.patched(ctx.get_input("id"))


# ---- published state --------------------------------------------------------------------


@workflow(name="ver_progress", retry_policy=RetryPolicy(max_retries=1, initial_delay=0.01,
                                                        jitter=False))
async def progress(ctx):
    ctx.set_event("stage", "received")
    await ctx.wait_for_signal("go")
    ctx.set_event("stage", {"shipping": ctx.get_input("order")})
    if ctx.retry_count == 0:
        raise RuntimeError("fails once: the events replay, not written again")
    return "done"


async def test_get_event_waits_for_the_latest_value(db_url):
    async with tinyworkflow.TinyWorkflowClient(db_url, auto_start_worker=True) as client:
        run_id = await client.start_workflow("ver_progress", {"order": 42})
        assert await client.get_event(run_id, "stage", timeout=5) == "received"
        waiting = asyncio.ensure_future(client.get_event(run_id, "eta", timeout=0.3))
        with pytest.raises(TimeoutError, match="has not published the event 'eta'"):
            await waiting
        await client.send_signal(run_id, "go")
        assert await client.wait_for_result(run_id, timeout=5) == "done"
        assert await client.get_event(run_id, "stage") == {"shipping": 42}
        events = [e.event_type for e in await client.get_workflow_events(run_id)]
        assert events.count("event_set") == 2  # the retry replayed them
        with pytest.raises(RunStateError, match="completed without publishing the event 'eta'"):
            await client.get_event(run_id, "eta")
        with pytest.raises(RunNotFoundError):
            await client.get_event("no-such-run", "stage")
        with pytest.raises(ValueError, match="an event key"):
            await client.get_event(run_id, "")


async def test_get_event_in_process_is_woken_at_once(client):
    run_id = await client.start_workflow("ver_progress", {"order": 1})
    reader = asyncio.ensure_future(client.get_event(run_id, "stage", timeout=5))
    await asyncio.sleep(1.6)  # between its polls (at 1.26 s and 2.26 s)
    recovering = asyncio.ensure_future(client.recover_workflows())
    # Set within milliseconds, read at once: before the next poll, and before the run
    # (waiting 1 s in memory for its signal) parks.
    assert await asyncio.wait_for(reader, 0.3) == "received"
    await recovering


# ---- a deploy: a worker process on version 1 killed, one on version 2 started ----------

WORKER = """
import asyncio, json, sys
from tinyworkflow import RetryPolicy, TinyWorkflowClient, activity, workflow

VERSION = int(sys.argv[2])

@activity(name="ver_crash_log")
async def log(path, run_id, label):
    with open(path, "a") as f:
        f.write(json.dumps([run_id, label]) + "\\n")
    return label

@workflow(name="ver_crash_wf", retry_policy=RetryPolicy(max_retries=0))
async def crash_wf(ctx):
    path = ctx.get_input("log")
    ctx.set_event("stage", "started")
    if VERSION == 2 and ctx.patched("text-first"):
        await ctx.execute_activity(log, path, ctx.run_id, "new")
    else:
        await ctx.execute_activity(log, path, ctx.run_id, "old")
    ctx.set_event("stage", "notified")
    await ctx.wait_for_signal("go")
    return await ctx.execute_activity(log, path, ctx.run_id, "end")
"""



def start_worker(db_url: str, version: int):
    return dbutil.start_worker_script(WORKER, db_url, str(version))


@pytest.mark.crash
async def test_a_deploy_over_a_killed_worker_keeps_each_run_on_its_path(db_url, tmp_path):
    import json
    import signal

    log = tmp_path / "log.jsonl"
    worker = start_worker(db_url, 1)
    try:
        async with tinyworkflow.TinyWorkflowClient(db_url) as client:
            await dbutil.until_served(client, "ver_crash_wf")
            old = await client.start_workflow("ver_crash_wf", {"log": str(log)})
            assert await client.get_event(old, "stage", timeout=10) in ("started", "notified")
            await dbutil.until(lambda: _stage_is(client, old, "notified"), 10, "old to notify")
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            worker = start_worker(db_url, 2)  # the deploy
            new = await client.start_workflow("ver_crash_wf", {"log": str(log)})
            await dbutil.until(lambda: _stage_is(client, new, "notified"), 10, "new to notify")
            for run_id in (old, new):
                await client.send_signal(run_id, "go")
            # Killed while waiting in memory (or parked): the new worker takes the old
            # run over once its lease (2 s) has expired.
            assert await client.wait_for_result(old, timeout=20) == "end"
            assert await client.wait_for_result(new, timeout=20) == "end"
        lines = [tuple(json.loads(line)) for line in log.read_text().splitlines()]
        assert sorted(lines) == sorted([(old, "old"), (old, "end"), (new, "new"),
                                        (new, "end")])  # each once
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)


async def _stage_is(client, run_id, stage) -> bool:
    try:
        return await client.get_event(run_id, "stage", timeout=0) == stage
    except TimeoutError:
        return False
