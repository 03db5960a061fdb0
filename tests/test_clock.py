"""Skipping time in tests: ``TinyWorkflowClient(clock=TestClock())`` runs timers, timeouts
and retry delays on a clock that moves only with ``await clock.advance(seconds)``, so a
workflow that sleeps a week finishes in milliseconds. Leases keep the machine's time."""

import asyncio
import contextlib
import time
from datetime import datetime, timedelta, timezone

import pytest

from tinyworkflow import (RetryPolicy, TestClock, TinyWorkflowClient, WorkflowFailedError,
                          activity, workflow)

NO_RETRY = RetryPolicy(max_retries=0)
START = datetime(2030, 1, 1, tzinfo=timezone.utc)
DAY = 86400


@pytest.fixture
async def clocked(db_url):
    """(client with a worker, its TestClock at START)."""
    clock = TestClock(START)
    async with TinyWorkflowClient(db_url, auto_start_worker=True, clock=clock) as client:
        yield client, clock


@activity(name="clock_stamp")
async def stamp(label: str) -> str:
    return label


@workflow(name="clock_week", retry_policy=NO_RETRY)
async def clock_week(ctx):
    started = ctx.now()
    await ctx.sleep(7 * DAY)
    await ctx.execute_activity(stamp, "a week later")
    await ctx.sleep(0.5)  # short: held in memory, on the clock too
    await ctx.sleep_until(START + timedelta(days=8))
    return [started.isoformat(), ctx.now().isoformat()]


async def test_a_week_of_sleeping_passes_in_milliseconds(clocked):
    client, clock = clocked
    run_id = await client.start_workflow("clock_week")
    started = time.monotonic()
    await clock.advance(timedelta(days=8))
    assert await client.wait_for_result(run_id, timeout=5) == [
        START.isoformat(), (START + timedelta(days=8)).isoformat()]
    assert time.monotonic() - started < 3
    fired = [e.event_data for e in await client.get_workflow_events(run_id)
             if e.event_type == "timer_fired"]
    assert [f["late_ms"] for f in fired] == [0, 0, 0]  # each at its deadline, in order
    run = await client.get_workflow_status(run_id)
    assert run.completed_at == START + timedelta(days=8)


async def test_time_does_not_move_without_advance(clocked):
    client, clock = clocked
    run_id = await client.start_workflow("clock_week")
    await clock.advance(6 * DAY)
    with pytest.raises(TimeoutError):
        await client.wait_for_result(run_id, timeout=0.3)  # the timeout is real seconds
    assert clock.time() == START.timestamp() + 6 * DAY
    await clock.advance(2 * DAY)
    assert await client.wait_for_result(run_id, timeout=5)


flaky_calls: list = []


@activity(name="clock_flaky", retry_policy=RetryPolicy(max_retries=2, initial_delay=3600,
                                                       max_delay=DAY, jitter=False))
async def flaky() -> str:
    flaky_calls.append(time.monotonic())
    if len(flaky_calls) < 3:
        raise RuntimeError("not yet")
    return "third time"


@workflow(name="clock_retries", retry_policy=RetryPolicy(max_retries=1, initial_delay=600,
                                                         max_delay=DAY, jitter=False))
async def clock_retries(ctx):
    result = await ctx.execute_activity(flaky)
    if ctx.retry_count == 0:
        raise RuntimeError("the workflow fails once too")
    return result


async def test_retry_delays_of_hours_pass_with_the_clock(clocked):
    client, clock = clocked
    flaky_calls.clear()
    run_id = await client.start_workflow("clock_retries")
    await clock.advance(3600 + 7200 + 600)  # two activity backoffs, one workflow backoff
    assert await client.wait_for_result(run_id, timeout=5) == "third time"
    assert len(flaky_calls) == 3
    run = await client.get_workflow_status(run_id)
    assert run.retry_count == 1
    assert run.completed_at == START + timedelta(seconds=3600 + 7200 + 600)


@workflow(name="clock_waits", retry_policy=NO_RETRY)
async def clock_waits(ctx):
    outcomes = []
    for wait in (ctx.wait_for_signal("never", timeout=DAY),
                 ctx.wait_for_approval("nobody", timeout=2 * DAY)):
        try:
            await wait
        except TimeoutError:
            outcomes.append(ctx.now())
    return [o.isoformat() for o in outcomes]


async def test_signal_and_approval_timeouts_follow_the_clock(clocked):
    client, clock = clocked
    run_id = await client.start_workflow("clock_waits")
    await clock.advance(3 * DAY)
    # Both waits began when called, at the start: their timeouts count from there.
    assert await client.wait_for_result(run_id, timeout=5) == [
        (START + timedelta(days=1)).isoformat(), (START + timedelta(days=2)).isoformat()]


@workflow(name="clock_deadline", retry_policy=NO_RETRY, timeout=3600)
async def clock_deadline(ctx):
    await ctx.sleep(2 * 3600)


async def test_a_workflow_timeout_follows_the_clock(clocked):
    client, clock = clocked
    run_id = await client.start_workflow("clock_deadline")
    await clock.advance(2 * 3600)
    with pytest.raises(WorkflowFailedError, match="timed out after 3600 s"):
        await client.wait_for_result(run_id, timeout=5)
    run = await client.get_workflow_status(run_id)
    assert run.completed_at == START + timedelta(seconds=3600)


gate: dict = {}


@activity(name="clock_gated")
async def gated() -> str:
    await gate["event"].wait()  # real work in flight: time must not skip under it
    return "done"


@workflow(name="clock_busy", retry_policy=NO_RETRY)
async def clock_busy(ctx):
    await ctx.execute_activity(gated)
    await ctx.sleep(DAY)
    return "slept"


async def test_advance_waits_for_an_activity_in_flight_and_leases_hold(clocked):
    client, clock = clocked
    gate["event"] = asyncio.Event()
    run_id = await client.start_workflow("clock_busy")
    asyncio.get_running_loop().call_later(0.3, gate["event"].set)
    started = time.monotonic()
    await clock.advance(DAY)  # settles first: the activity ends, then the day passes
    assert time.monotonic() - started >= 0.25
    assert await client.wait_for_result(run_id, timeout=5) == "slept"
    events = [e.event_type for e in await client.get_workflow_events(run_id)]
    assert "workflow_resumed" not in [e for e in events[:events.index("timer_set")]]


async def test_start_with_wait_finishes_while_another_task_advances(db_url):
    clock = TestClock(START)
    async with TinyWorkflowClient(db_url, clock=clock) as client:  # no worker
        starter = asyncio.ensure_future(client.start_workflow("clock_week", wait=True))
        await clock.advance(8 * DAY)
        run_id = await asyncio.wait_for(starter, 5)
        assert (await client.get_workflow_status(run_id)).status == "completed"


def test_bad_clock_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="timezone-aware"):
        TestClock(datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="datetime or epoch seconds"):
        TestClock("2030")
    with pytest.raises(TypeError, match="clock must be a tinyworkflow Clock"):
        TinyWorkflowClient("sqlite+aiosqlite:///:memory:", clock=time.time)
    assert TestClock(1.5).time() == 1.5


async def test_advance_rejects_negative_or_non_numbers():
    clock = TestClock(0)
    for bad in (-1, float("nan"), "1", True):
        with pytest.raises(ValueError, match="advance needs seconds from 0 to"):
            await clock.advance(bad)
    await clock.advance(timedelta(minutes=1))
    assert clock.time() == 60


async def test_advance_settles_beside_fast_polls_and_heartbeats(sqlite_url):
    clock = TestClock(START)
    async with TinyWorkflowClient(sqlite_url, auto_start_worker=True, clock=clock,
                                  poll_interval=0.01, lease_seconds=0.06) as client:
        run_id = await client.start_workflow("clock_deadline")  # sleeps 2 h, timeout 1 h
        started = time.monotonic()
        await asyncio.wait_for(clock.advance(2 * 3600), 5)
        assert time.monotonic() - started < 2
        with pytest.raises(WorkflowFailedError):
            await client.wait_for_result(run_id, timeout=5)


@activity(name="clock_stuck", timeout=0.2, retry_policy=NO_RETRY)
def stuck() -> None:
    time.sleep(3)  # a sync activity's thread cannot be stopped: abandoned at its timeout


@workflow(name="clock_abandons", retry_policy=NO_RETRY)
async def clock_abandons(ctx):
    try:
        await ctx.execute_activity(stuck)
    except Exception as exc:
        await ctx.sleep(DAY)
        return type(exc).__name__


async def test_advance_does_not_wait_for_an_abandoned_activity(clocked):
    client, clock = clocked
    run_id = await client.start_workflow("clock_abandons")
    started = time.monotonic()
    await clock.advance(DAY)
    assert time.monotonic() - started < 2
    assert await client.wait_for_result(run_id, timeout=5) == "ActivityTimeoutError"


@workflow(name="clock_now", retry_policy=NO_RETRY)
async def clock_now(ctx):
    return ctx.now().timestamp()


@pytest.mark.parametrize("how", ["instance", "class", "time.time"])
async def test_a_clock_patched_the_usual_ways_gives_the_workflow_that_time(sqlite_url, how):
    """A ``Clock`` whose ``time`` is replaced on the instance or on the class
    (``mock.patch.object``) before the client is made, or ``time.time`` patched after
    (freezegun-style: the machine's clock looks it up at each use), gives the workflow
    and the run's record that time."""
    from unittest import mock

    from tinyworkflow import Clock
    fake = START.timestamp()
    clock = Clock()
    before = {"instance": lambda: mock.patch.object(clock, "time", lambda: fake, create=True),
              "class": lambda: mock.patch.object(Clock, "time", lambda self: fake),
              "time.time": contextlib.nullcontext}[how]
    after = mock.patch.object(time, "time", lambda: fake) if how == "time.time" \
        else contextlib.nullcontext()
    with before():
        async with TinyWorkflowClient(sqlite_url, auto_start_worker=True,
                                      clock=clock) as client:
            with after:
                run_id = await client.start_workflow("clock_now")
                assert await client.wait_for_result(run_id, timeout=10) == fake
                assert (await client.get_workflow_status(run_id)).created_at == START
