"""Sagas: ``ctx.add_compensation(activity, *args)`` registers, as a step, what undoes
the work done so far. A run that finally fails, or is cancelled, runs its registered
compensations latest first, each a step with its activity's retries, and ends
``compensated``; a crash in the middle resumes compensating without repeating any
compensation that completed."""

import asyncio
import json
import signal

import pytest

import dbutil
from tinyworkflow import (RetryPolicy, TinyWorkflowClient, WorkflowFailedError, activity,
                          workflow)

NO_RETRY = RetryPolicy(max_retries=0)
ONE_RETRY = RetryPolicy(max_retries=1, initial_delay=0.01, jitter=False)
log: list = []
behaviour: dict = {}


class PaymentDeclined(Exception):
    pass


@activity(name="saga_book_hotel")
async def book_hotel(city: str) -> str:
    log.append("book hotel")
    return f"H-{city}"


@activity(name="saga_cancel_hotel")
async def cancel_hotel(booking: str) -> None:
    log.append(f"cancel hotel {booking}")


@activity(name="saga_book_flight")
async def book_flight(city: str) -> str:
    log.append("book flight")
    return f"F-{city}"


@activity(name="saga_cancel_flight",
          retry_policy=RetryPolicy(max_retries=2, initial_delay=0.01, jitter=False))
async def cancel_flight(booking: str) -> None:
    log.append(f"cancel flight {booking}")
    if behaviour.get("flight_cancel_fails", 0):
        behaviour["flight_cancel_fails"] -= 1
        raise RuntimeError("the airline is down")


@activity(name="saga_charge", retry_policy=NO_RETRY)
async def charge(amount: int) -> str:
    log.append("charge")
    if amount > 100:
        raise PaymentDeclined(f"{amount} is over the limit")
    return "paid"


async def _trip(ctx):
    city = ctx.get_input("city")
    hotel = await ctx.execute_activity(book_hotel, city)
    ctx.add_compensation(cancel_hotel, hotel)
    flight = await ctx.execute_activity(book_flight, city)
    ctx.add_compensation(cancel_flight, booking=flight)
    if ctx.get_input("wait"):
        await ctx.wait_for_signal("pay")
    return await ctx.execute_activity(charge, ctx.get_input("amount"))


@workflow(name="saga_trip", retry_policy=NO_RETRY)
async def trip(ctx):
    return await _trip(ctx)


@workflow(name="saga_trip_retried", retry_policy=ONE_RETRY)
async def trip_retried(ctx):
    return await _trip(ctx)


@pytest.fixture(autouse=True)
def _reset():
    log.clear()
    behaviour.clear()


UNDONE = ["book hotel", "book flight", "charge", "cancel flight F-Oslo", "cancel hotel H-Oslo"]


async def test_the_booking_saga_undoes_flight_then_hotel_once_each(client):
    run_id = await client.start_workflow("saga_trip", {"city": "Oslo", "amount": 500},
                                         wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "compensated"
    assert run.error == "PaymentDeclined: 500 is over the limit"
    assert log == UNDONE
    with pytest.raises(WorkflowFailedError, match="failed and was compensated") as failed:
        await client.wait_for_result(run_id)
    assert failed.value.status == "compensated"
    steps = await client.get_workflow_steps(run_id)
    assert [(s.kind, s.name, s.status) for s in steps] == [
        ("activity", "saga_book_hotel", "completed"),
        ("compensation", "saga_cancel_hotel", "completed"),
        ("activity", "saga_book_flight", "completed"),
        ("compensation", "saga_cancel_flight", "completed"),
        ("activity", "saga_charge", "failed")]
    assert steps[3].input == {"args": [], "kwargs": {"booking": "F-Oslo"}}
    kinds = [e.event_type for e in await client.get_workflow_events(run_id)
             if e.event_type.startswith("workflow_")]
    assert kinds[-2:] == ["workflow_compensating", "workflow_compensated"]


async def test_a_run_that_succeeds_runs_no_compensation(client):
    run_id = await client.start_workflow("saga_trip", {"city": "Oslo", "amount": 50}, wait=True)
    assert await client.wait_for_result(run_id) == "paid"
    assert log == ["book hotel", "book flight", "charge"]
    steps = await client.get_workflow_steps(run_id)
    assert [s.status for s in steps if s.kind == "compensation"] == ["registered"] * 2


async def test_compensations_wait_for_the_last_retry_and_replay_registrations(client):
    run_id = await client.start_workflow("saga_trip_retried", {"city": "Oslo", "amount": 500},
                                         wait=True)
    run = await client.get_workflow_status(run_id)
    assert (run.status, run.retry_count) == ("compensated", 1)
    # The bookings and registrations replayed in the retry; the charge ran in each attempt.
    assert log == ["book hotel", "book flight", "charge", "charge",
                   "cancel flight F-Oslo", "cancel hotel H-Oslo"]
    assert len(await client.get_workflow_steps(run_id)) == 5


async def test_a_compensation_retries_by_its_activitys_policy(client):
    behaviour["flight_cancel_fails"] = 1
    run_id = await client.start_workflow("saga_trip", {"city": "Oslo", "amount": 500},
                                         wait=True)
    assert (await client.get_workflow_status(run_id)).status == "compensated"
    assert log == UNDONE[:3] + ["cancel flight F-Oslo"] * 2 + ["cancel hotel H-Oslo"]
    flight = [s for s in await client.get_workflow_steps(run_id)
              if s.name == "saga_cancel_flight"][0]
    assert (flight.status, flight.attempts) == ("completed", 2)


async def test_a_compensation_that_fails_for_good_fails_the_run_after_the_others(client):
    behaviour["flight_cancel_fails"] = 3  # one try and two retries
    run_id = await client.start_workflow("saga_trip", {"city": "Oslo", "amount": 500},
                                         wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "failed"
    assert run.error == ("compensation failed: saga_cancel_flight (step 4): RuntimeError: the "
                         "airline is down (after: PaymentDeclined: 500 is over the limit)")
    assert log[-1] == "cancel hotel H-Oslo" and log.count("cancel flight F-Oslo") == 3


async def test_cancelling_a_saga_compensates_it_and_a_second_cancel_stops_that(db_url):
    async with TinyWorkflowClient(db_url, auto_start_worker=True, poll_interval=0.2) as c:
        run_id = await c.start_workflow("saga_trip", {"city": "Oslo", "amount": 5,
                                                      "wait": True})
        await dbutil.until(lambda: len(log) == 2, 10, "both bookings")
        await asyncio.sleep(0.1)  # the second registration is recorded
        assert await c.cancel_workflow(run_id) is True
        with pytest.raises(WorkflowFailedError) as failed:
            await c.wait_for_result(run_id, timeout=10)
        assert (failed.value.status, failed.value.error) == ("compensated", "cancelled")
        assert log == ["book hotel", "book flight", "cancel flight F-Oslo",
                       "cancel hotel H-Oslo"]
        # Cancelled without a worker: compensating until one takes it; cancelling that
        # again stops it as cancelled, nothing compensated.
        await c.stop_worker()
        log.clear()
        other = await c.start_workflow("saga_trip", {"city": "Oslo", "amount": 5,
                                                     "wait": True})
        await c.recover_workflows()
        assert (await c.get_workflow_status(other)).status == "running"  # parked
        await c.cancel_workflow(other)
        assert (await c.get_workflow_status(other)).status == "compensating"
        await c.cancel_workflow(other)
        assert (await c.get_workflow_status(other)).status == "cancelled"
        assert await c.recover_workflows() == []
        assert log == ["book hotel", "book flight"]


@activity(name="saga_slow")
async def slow() -> None:
    log.append("slow")
    await asyncio.sleep(30)


@workflow(name="saga_busy", retry_policy=NO_RETRY)
async def busy(ctx):
    hotel = await ctx.execute_activity(book_hotel, "Oslo")
    ctx.add_compensation(cancel_hotel, hotel)
    await ctx.execute_activity(slow)


@pytest.mark.parametrize("how", ["worker", "wait"])
async def test_cancelling_a_saga_in_the_middle_of_an_activity_compensates_it(db_url, how):
    async with TinyWorkflowClient(db_url, auto_start_worker=how == "worker",
                                  poll_interval=0.2) as c:
        if how == "worker":
            run_id = await c.start_workflow("saga_busy")
        else:  # start_workflow(wait=True) executes the compensations too
            waiting = asyncio.ensure_future(c.start_workflow("saga_busy", wait=True))
            await dbutil.until(lambda: "slow" in log, 10, "the slow activity")
            [run] = await c.list_workflow_executions(workflow_name="saga_busy")
            run_id = run.run_id
        await dbutil.until(lambda: "slow" in log, 10, "the slow activity")
        await c.cancel_workflow(run_id)  # stops the activity here at once
        with pytest.raises(WorkflowFailedError, match="compensated: cancelled"):
            await c.wait_for_result(run_id, timeout=10)
        if how == "wait":
            assert await waiting == run_id
    assert log == ["book hotel", "slow", "cancel hotel H-Oslo"]


@activity(name="saga_sync_charge")
def sync_charge(seconds: float) -> None:  # a thread: cannot be interrupted
    import time
    log.append("charge start")
    time.sleep(seconds)
    log.append("charge done")


@activity(name="saga_refund")
async def refund() -> None:
    log.append("refund")


@workflow(name="saga_sync", retry_policy=NO_RETRY)
async def saga_sync(ctx):
    ctx.add_compensation(refund)
    await ctx.execute_activity(sync_charge, 1.5)


async def test_a_compensation_never_overlaps_the_activity_still_running(db_url):
    # The lease (0.6 s) runs out several times over during the 1.5 s activity: the
    # cancelled execution keeps it until its thread has returned.
    async with TinyWorkflowClient(db_url, auto_start_worker=True, poll_interval=0.1,
                                  lease_seconds=0.6) as c:
        run_id = await c.start_workflow("saga_sync")
        await dbutil.until(lambda: "charge start" in log, 10, "the charge to start")
        await c.cancel_workflow(run_id)
        with pytest.raises(WorkflowFailedError, match="compensated"):
            await c.wait_for_result(run_id, timeout=10)
    assert log == ["charge start", "charge done", "refund"]


@workflow(name="saga_child_fails", retry_policy=NO_RETRY)
async def saga_child_fails(ctx):
    ctx.add_compensation(refund)
    await ctx.wait_for_signal("go")
    raise RuntimeError("the child gives up")


@workflow(name="saga_parent_of_failing", retry_policy=NO_RETRY)
async def saga_parent_of_failing(ctx):
    await ctx.execute_child_workflow("saga_child_fails")


async def test_start_workflow_wait_runs_the_compensations_of_cancelled_children(client):
    waiting = asyncio.ensure_future(client.start_workflow("saga_parent_of_failing", wait=True))

    async def parked_child() -> bool:
        kids = await client.list_workflow_executions(workflow_name="saga_child_fails")
        return bool(kids) and kids[0].status == "running" and kids[0].owner is None

    await dbutil.until(parked_child, 10, "the child to wait for its signal")
    [kid] = await client.list_workflow_executions(workflow_name="saga_child_fails")
    await client.cancel_workflow(kid.parent_run_id)
    await asyncio.wait_for(waiting, 10)  # returns once the child has compensated too
    assert (await client.get_workflow_status(kid.run_id)).status == "compensated"
    assert log == ["refund"]


@workflow(name="saga_parent", retry_policy=NO_RETRY)
async def saga_parent(ctx):
    return await ctx.execute_child_workflow("saga_trip", {"city": "Rome", "amount": 5,
                                                          "wait": True})


async def test_cancelling_a_parent_compensates_its_saga_child(db_url):
    async with TinyWorkflowClient(db_url, auto_start_worker=True, poll_interval=0.2) as c:
        top = await c.start_workflow("saga_parent")
        await dbutil.until(lambda: len(log) == 2, 10, "both bookings")
        await asyncio.sleep(0.1)
        await c.cancel_workflow(top)
        [kid] = await c.list_workflow_executions(workflow_name="saga_trip")
        with pytest.raises(WorkflowFailedError):
            await c.wait_for_result(kid.run_id, timeout=10)
        assert (await c.get_workflow_status(kid.run_id)).status == "compensated"
        assert (await c.get_workflow_status(top)).status == "cancelled"
        assert log[2:] == ["cancel flight F-Rome", "cancel hotel H-Rome"]


def undecorated(booking):
    pass


@workflow(name="saga_bad_compensation", retry_policy=NO_RETRY)
async def bad_compensation(ctx):
    ctx.add_compensation(undecorated, "x")


async def test_a_compensation_must_be_a_registered_activity(client):
    run_id = await client.start_workflow("saga_bad_compensation", wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "failed" and "registered @activity" in run.error
    assert await client.get_workflow_steps(run_id) == []


# ---- a crash in the middle of compensating ------------------------------------------------

WORKER = """
import asyncio, json, os, sys, time
from tinyworkflow import RetryPolicy, TinyWorkflowClient, activity, workflow

def note(path, what):
    with open(path, "a") as f:
        f.write(json.dumps(what) + "\\n")

@activity(name="saga_crash_book")
def book(path, what):
    note(path, "book " + what)
    return what

@activity(name="saga_crash_cancel")
def cancel(path, what):
    note(path, "cancel " + what)
    while what == "hotel" and not os.path.exists(path + ".go"):  # held until let go
        time.sleep(0.02)

@activity(name="saga_crash_charge", retry_policy=RetryPolicy(max_retries=0))
def charge(path):
    note(path, "charge")
    raise RuntimeError("declined")

@workflow(name="saga_crash_trip", retry_policy=RetryPolicy(max_retries=0))
async def trip(ctx):
    path = ctx.get_input("log")
    for what in ("hotel", "flight"):
        await ctx.execute_activity(book, path, what)
        ctx.add_compensation(cancel, path, what)
    await ctx.execute_activity(charge, path)
"""



@pytest.mark.crash
async def test_a_crash_while_compensating_resumes_without_repeating_a_done_one(db_url,
                                                                             tmp_path):
    path = tmp_path / "log.jsonl"
    worker = dbutil.start_worker_script(WORKER, db_url)
    try:
        async with TinyWorkflowClient(db_url) as client:
            await dbutil.until_served(client, "saga_crash_trip")
            run_id = await client.start_workflow("saga_crash_trip", {"log": str(path)})
            await dbutil.until(lambda: path.exists() and '"cancel hotel"' in path.read_text(),
                               15, "the hotel's cancellation to be in flight")
            assert (await client.get_workflow_status(run_id)).status == "compensating"
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            (tmp_path / "log.jsonl.go").touch()
            worker = dbutil.start_worker_script(WORKER, db_url)
            with pytest.raises(WorkflowFailedError) as failed:
                await client.wait_for_result(run_id, timeout=30)
            assert failed.value.status == "compensated"
            assert failed.value.error == "RuntimeError: declined"
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        # The flight's cancellation had completed: not again. The hotel's was in flight.
        assert lines == ["book hotel", "book flight", "charge", "cancel flight",
                         "cancel hotel", "cancel hotel"]
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
