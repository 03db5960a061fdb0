"""Issue 19: workflow code runs on its own deterministic event loop, so ordinary asyncio
composition inside a workflow is exact and durable.

Every failure the issue lists is a test here, on every backend: the workflow composes
steps with ``asyncio.gather`` / ``asyncio.wait`` / ``asyncio.wait_for`` / ``TaskGroup``
/ ``as_completed`` / ``asyncio.Event`` / ``asyncio.sleep``, the run parks (a wait longer
than a second) and is replayed, and the test checks the result and that each activity
ran exactly once (a module-level counter keyed by a token passed in the input: the
database records outcomes, not executions).

Also here: the plain-call API (``ctx.now()``, ``ctx.uuid4()``, ``ctx.random()``,
``ctx.set_event()``, ``ctx.add_compensation()`` are not awaited), the clear errors
(``RunStateError`` for a ``ctx`` or a step used from elsewhere, an error naming the run
and telling to use an activity for I/O on the workflow loop) and "a run ends only
after its steps in flight have ended and been recorded".

Tests that skip time use a ``TestClock`` at START: a timer's deadline, a wait's
timeout and a parked run's ``wake_at`` are then exact. A wait longer than a second
parks the run (``owner`` None, nothing in memory), so what follows is a replay.
"""

import asyncio
import collections
import random
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

import dbutil
from tinyworkflow import (RetryPolicy, RunStateError, TestClock, TinyWorkflowClient,
                          WorkflowFailedError, activity, workflow)

NO_RETRY = RetryPolicy(max_retries=0)
START = datetime(2030, 1, 1, tzinfo=timezone.utc)

# (token, label) -> how many executions of that activity started / finished. Each test
# uses a token of its own (passed in the workflow's input), so counts never mix.
STARTED: collections.Counter = collections.Counter()
FINISHED: collections.Counter = collections.Counter()


def new_token() -> str:
    return uuid.uuid4().hex


def started(token: str) -> dict:
    """label -> executions started, for one test's token."""
    return {label: n for (t, label), n in STARTED.items() if t == token}


def finished(token: str) -> dict:
    return {label: n for (t, label), n in FINISHED.items() if t == token}


@activity(name="loop_work", retry_policy=NO_RETRY)
async def work(token: str, label: str, value=None, delay: float = 0.0):
    """Counts its execution under ``label``, sleeps ``delay`` real seconds, returns
    ``value``."""
    STARTED[token, label] += 1
    if delay:
        await asyncio.sleep(delay)
    FINISHED[token, label] += 1
    return value


@activity(name="loop_charge", retry_policy=NO_RETRY)
async def charge(token: str, amount: int, delay: float = 0.2) -> dict:
    STARTED[token, "charge"] += 1
    await asyncio.sleep(delay)
    FINISHED[token, "charge"] += 1
    return {"charged": amount}


@pytest.fixture
async def clocked(db_url):
    """(client with an in-process worker, its TestClock at START)."""
    clock = TestClock(START)
    async with TinyWorkflowClient(db_url, auto_start_worker=True, clock=clock) as client:
        yield client, clock


@pytest.fixture
async def worker(db_url):
    """A client with an in-process worker, on the machine's clock."""
    async with TinyWorkflowClient(db_url, auto_start_worker=True) as client:
        yield client


async def parked(client, run_id, *, deadline: bool = True) -> bool:
    """The run is parked: running (or paused for an approval), held by nobody, and --
    with ``deadline`` -- with a wake time."""
    run = await client.get_workflow_status(run_id)
    return (run.status in ("running", "paused") and run.owner is None
            and (run.wake_at is not None or not deadline))


async def wait_parked(client, run_id, *, deadline: bool = True, timeout: float = 5) -> None:
    await dbutil.until(lambda: parked(client, run_id, deadline=deadline), timeout,
                       f"run {run_id} to park")


async def step_rows(client, run_id) -> list:
    return [(s.name, s.kind, s.status) for s in await client.get_workflow_steps(run_id)]


async def completed_step(client, run_id, name: str) -> bool:
    return any(s.name == name and s.status == "completed"
               for s in await client.get_workflow_steps(run_id))


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def near(when, expected: datetime, slack: float = 0.001) -> bool:
    return when is not None and abs((when - expected).total_seconds()) <= slack


# ---- gather: a durable wait beside an activity -------------------------------------------


@workflow(name="loop_gather_sleep_charge", retry_policy=NO_RETRY)
async def gather_sleep_charge(ctx):
    token = ctx.get_input("token")
    return await asyncio.gather(ctx.sleep(2), ctx.execute_activity(charge, token, 42))


async def test_gather_of_a_sleep_and_an_activity_charges_once(clocked):
    """``gather(ctx.sleep(2), execute_activity(charge))``: the run parks only once the
    charge is recorded (nothing in flight), wakes at the sleep's deadline, and the
    replay returns the recorded charge: ``charge`` ran exactly once."""
    client, clock = clocked
    token = new_token()
    run_id = await client.start_workflow("loop_gather_sleep_charge", {"token": token})
    await wait_parked(client, run_id)
    assert await completed_step(client, run_id, "loop_charge")  # parked when quiescent
    assert near((await client.get_workflow_status(run_id)).wake_at, at(2))
    await clock.advance(2.5)
    assert await client.wait_for_result(run_id, timeout=10) == [None, {"charged": 42}]
    assert started(token) == {"charge": 1} and finished(token) == {"charge": 1}
    steps = await client.get_workflow_steps(run_id)
    assert sorted((s.name, s.kind, s.status) for s in steps) == [
        ("loop_charge", "activity", "completed"), ("sleep", "timer", "completed")]
    assert [s.attempts for s in steps if s.kind == "activity"] == [1]


@workflow(name="loop_child", retry_policy=NO_RETRY)
async def loop_child(ctx):
    await ctx.sleep(ctx.get_input("sleep", 0))
    return await ctx.execute_activity(work, ctx.get_input("token"), "child",
                                      2 * ctx.get_input("x"))


@workflow(name="loop_gather_child_charge", retry_policy=NO_RETRY)
async def gather_child_charge(ctx):
    token = ctx.get_input("token")
    return await asyncio.gather(
        ctx.execute_child_workflow("loop_child", {"token": token, "x": 21, "sleep": 2}),
        ctx.execute_activity(charge, token, 7, 1.2))


async def test_gather_of_a_child_and_an_activity_charges_once(clocked):
    """``gather(execute_child_workflow(...), execute_activity(charge))`` where the child
    sleeps (parked) and the charge outlasts the parent's in-memory wait for the child:
    the parent parks after the charge is recorded, the child's end wakes it, and each
    activity (the parent's charge, the child's work) ran once."""
    client, clock = clocked
    token = new_token()
    run_id = await client.start_workflow("loop_gather_child_charge", {"token": token})
    await wait_parked(client, run_id, deadline=False)
    assert await completed_step(client, run_id, "loop_charge")
    await clock.advance(3)
    assert await client.wait_for_result(run_id, timeout=10) == [42, {"charged": 7}]
    assert started(token) == {"charge": 1, "child": 1}
    assert sorted(await step_rows(client, run_id)) == [
        ("loop_charge", "activity", "completed"), ("loop_child", "child", "completed")]
    children = await client.list_workflow_executions(workflow_name="loop_child",
                                                     parent_run_id=run_id)
    assert len(children) == 1  # started once, across the parent's replays


@workflow(name="loop_gather_parallel_sleep", retry_policy=NO_RETRY)
async def gather_parallel_sleep(ctx):
    token = ctx.get_input("token")
    return await asyncio.gather(
        ctx.execute_parallel((work, (token, "a", 1, 0.1), {}), (work, (token, "b", 2, 0.3), {})),
        ctx.sleep(1.5))


async def test_execute_parallel_inside_gather_with_a_sleep_runs_each_branch_once(clocked):
    """``gather(ctx.execute_parallel(a, b), ctx.sleep(1.5))``: the sleep parks the run
    only after both branches are recorded; the replay returns them: a and b ran once
    each."""
    client, clock = clocked
    token = new_token()
    run_id = await client.start_workflow("loop_gather_parallel_sleep", {"token": token})
    await wait_parked(client, run_id)
    await clock.advance(2)
    assert await client.wait_for_result(run_id, timeout=10) == [[1, 2], None]
    assert started(token) == {"a": 1, "b": 1} and finished(token) == {"a": 1, "b": 1}
    assert sorted(await step_rows(client, run_id)) == [
        ("loop_work", "activity", "completed"), ("loop_work", "activity", "completed"),
        ("sleep", "timer", "completed")]


@workflow(name="loop_gather_signal_charge", retry_policy=NO_RETRY)
async def gather_signal_charge(ctx):
    token = ctx.get_input("token")
    return await asyncio.gather(ctx.wait_for_signal("go"),
                                ctx.execute_activity(charge, token, 9, 1.3))


async def test_gather_of_a_signal_wait_and_an_activity_charges_once(worker):
    """``gather(wait_for_signal("go"), execute_activity(charge))`` with a charge that
    outlasts the signal wait's second in memory: the run parks only once the charge is
    recorded, the signal wakes it, and ``charge`` ran once."""
    token = new_token()
    run_id = await worker.start_workflow("loop_gather_signal_charge", {"token": token})
    await wait_parked(worker, run_id, deadline=False)
    assert await completed_step(worker, run_id, "loop_charge")
    await worker.send_signal(run_id, "go", {"ok": True})
    assert await worker.wait_for_result(run_id, timeout=10) == [{"ok": True}, {"charged": 9}]
    assert started(token) == {"charge": 1}
    assert sorted(await step_rows(worker, run_id)) == [
        ("go", "signal", "completed"), ("loop_charge", "activity", "completed")]


# ---- asyncio.wait(FIRST_COMPLETED): a signal against a timer ------------------------------


@workflow(name="loop_paid_or_remind", retry_policy=NO_RETRY)
async def paid_or_remind(ctx):
    token = ctx.get_input("token")
    paid = asyncio.ensure_future(ctx.wait_for_signal("paid"))
    timer = asyncio.ensure_future(ctx.sleep(3600))
    done, pending = await asyncio.wait({paid, timer}, return_when=asyncio.FIRST_COMPLETED)
    for future in pending:
        future.cancel()
    if paid in done:
        return "paid"
    await ctx.execute_activity(work, token, "remind", "sent")
    return "reminded"


async def test_first_completed_signal_before_the_timer(clocked):
    """``asyncio.wait({wait_for_signal("paid"), sleep(3600)}, FIRST_COMPLETED)``: the
    run waits (parked, woken at the timer's deadline at the latest) and takes the
    signal branch when the signal comes; no reminder is sent."""
    client, clock = clocked
    token = new_token()
    run_id = await client.start_workflow("loop_paid_or_remind", {"token": token})
    await wait_parked(client, run_id)
    assert near((await client.get_workflow_status(run_id)).wake_at, at(3600))
    await client.send_signal(run_id, "paid", {"amount": 10})
    assert await client.wait_for_result(run_id, timeout=10) == "paid"
    assert started(token) == {}
    assert ("paid", "signal", "completed") in await step_rows(client, run_id)


async def test_first_completed_timer_before_the_signal(clocked):
    """The same race, no signal: the private park is not a finished task, so nothing
    happens until the hour has passed (the issue: the reminder went out at t=0); then
    the timer branch is taken and the reminder sent once."""
    client, clock = clocked
    token = new_token()
    run_id = await client.start_workflow("loop_paid_or_remind", {"token": token})
    await wait_parked(client, run_id)
    run = await client.get_workflow_status(run_id)
    assert near(run.wake_at, at(3600)), run.wake_at
    await asyncio.sleep(0.5)  # real time passes, workflow time does not
    run = await client.get_workflow_status(run_id)
    assert run.status == "running" and run.output_data is None
    assert started(token) == {}
    await clock.advance(3599)
    assert (await client.get_workflow_status(run_id)).status == "running"
    assert started(token) == {}
    await clock.advance(2)
    assert await client.wait_for_result(run_id, timeout=10) == "reminded"
    assert started(token) == {"remind": 1}
    run = await client.get_workflow_status(run_id)
    assert near(run.completed_at, at(3600))


# ---- several waits, one with a timeout --------------------------------------------------


def outcome(results) -> list:
    return [type(r).__name__ if isinstance(r, BaseException) else r for r in results]


@workflow(name="loop_two_waits_one_timeout", retry_policy=NO_RETRY)
async def two_waits_one_timeout(ctx):
    return outcome(await asyncio.gather(ctx.wait_for_signal("a"),
                                        ctx.wait_for_signal("b", timeout=3),
                                        return_exceptions=True))


async def test_two_waits_with_one_timeout_wake_at_the_timeout(clocked):
    """``gather(wait_for_signal("a"), wait_for_signal("b", timeout=3))``: the parked run
    has a wake time (the issue: running with no wake time, forever); "a" wakes it and
    it parks again with the same deadline; at the deadline "b" times out."""
    client, clock = clocked
    run_id = await client.start_workflow("loop_two_waits_one_timeout")
    await wait_parked(client, run_id)
    run = await client.get_workflow_status(run_id)
    assert run.status == "running" and near(run.wake_at, at(3)), run.wake_at
    await client.send_signal(run_id, "a", "A!")
    await dbutil.until(lambda: completed_step(client, run_id, "a"), 5, "signal a to be taken")
    await wait_parked(client, run_id)
    assert near((await client.get_workflow_status(run_id)).wake_at, at(3))
    await clock.advance(4)
    assert await client.wait_for_result(run_id, timeout=10) == ["A!", "TimeoutError"]
    steps = {s.name: s.status for s in await client.get_workflow_steps(run_id)}
    assert steps == {"a": "completed", "b": "failed"}


@workflow(name="loop_approval_and_signal", retry_policy=NO_RETRY)
async def approval_and_signal(ctx):
    return outcome(await asyncio.gather(ctx.wait_for_approval("ok"),
                                        ctx.wait_for_signal("s", timeout=3),
                                        return_exceptions=True))


async def test_approval_and_a_signal_with_timeout_both_arrive(clocked):
    """``gather(wait_for_approval("ok"), wait_for_signal("s", timeout=3))``: parked with
    a wake time (the issue: paused with none); approving a run that waits for the
    approval among other things works, and so does the signal."""
    client, clock = clocked
    run_id = await client.start_workflow("loop_approval_and_signal")
    await wait_parked(client, run_id)
    assert near((await client.get_workflow_status(run_id)).wake_at, at(3))
    assert await client.approve_workflow(run_id) is True
    # The approver records the decision and makes the run due (wake_at now); a worker
    # takes it and parks the run again, with the signal's deadline.

    async def parked_again() -> bool:
        run = await client.get_workflow_status(run_id)
        return run.owner is None and near(run.wake_at, at(3)) and any(
            e.event_type == "workflow_waiting" for e in
            (await client.get_workflow_events(run_id))[-1:])
    await dbutil.until(parked_again, 5, "the run to take the decision and park again")
    assert await completed_step(client, run_id, "ok")
    await client.send_signal(run_id, "s", {"n": 1})
    assert await client.wait_for_result(run_id, timeout=10) == [True, {"n": 1}]
    assert await client.get_pending_approvals() == []


async def test_approval_given_and_the_signal_times_out(clocked):
    """The same, the signal never comes: approved, then at the deadline the signal wait
    raises TimeoutError."""
    client, clock = clocked
    run_id = await client.start_workflow("loop_approval_and_signal")
    await wait_parked(client, run_id)
    assert await client.approve_workflow(run_id) is True
    await dbutil.until(lambda: completed_step(client, run_id, "ok"), 5, "the approval taken")
    await clock.advance(4)
    assert await client.wait_for_result(run_id, timeout=10) == [True, "TimeoutError"]


@workflow(name="loop_approval_or_signal", retry_policy=NO_RETRY)
async def approval_or_signal(ctx):
    approval = asyncio.ensure_future(ctx.wait_for_approval("ok"))
    signal = asyncio.ensure_future(ctx.wait_for_signal("s"))
    done, pending = await asyncio.wait({approval, signal}, return_when=asyncio.FIRST_COMPLETED)
    for future in pending:
        future.cancel()
    if signal in done:
        return ["signal", signal.result()]
    return ["approval", approval.result()]


async def test_approval_or_signal_the_signal_comes_first(clocked):
    """``asyncio.wait({wait_for_approval, wait_for_signal}, FIRST_COMPLETED)``: the
    parked run is woken by the signal, returns the signal branch, and is no longer
    listed as waiting for an approval; approving it afterwards is a RunStateError."""
    client, clock = clocked
    run_id = await client.start_workflow("loop_approval_or_signal")
    await wait_parked(client, run_id, deadline=False)
    await client.send_signal(run_id, "s", "first")
    assert await client.wait_for_result(run_id, timeout=10) == ["signal", "first"]
    assert await client.get_pending_approvals() == []
    with pytest.raises(RunStateError):
        await client.approve_workflow(run_id)


# ---- wait_for around a slow activity, then a park and a replay ---------------------------


@activity(name="loop_slow_quote", retry_policy=NO_RETRY)
async def slow_quote(token: str) -> int:
    STARTED[token, "quote"] += 1
    execution = STARTED[token, "quote"]
    if execution == 1:
        await asyncio.sleep(1.0)  # slow the first time only: a re-run would be fast
    FINISHED[token, "quote"] += 1
    return 100 * execution


@workflow(name="loop_wait_for_quote", retry_policy=NO_RETRY)
async def wait_for_quote(ctx):
    token = ctx.get_input("token")
    try:
        branch = f"quoted {await asyncio.wait_for(ctx.execute_activity(slow_quote, token), 0.5)}"
    except asyncio.TimeoutError:
        branch = "timed out"
    await ctx.sleep(1.5)  # parks: what follows is a replay
    return [branch, await ctx.execute_activity(work, token, "after", branch)]


async def test_wait_for_around_a_slow_activity_replays_the_same_branch(worker):
    """``asyncio.wait_for(execute_activity(slow_quote), 0.5)`` times out; the run then
    parks and replays. The issue: the timed-out step was not recorded, the replay ran
    ``slow_quote`` again (fast this time), took the other branch and failed with a
    NonDeterminismError. Now: the timeout branch again, ``slow_quote`` ran once."""
    token = new_token()
    run_id = await worker.start_workflow("loop_wait_for_quote", {"token": token})
    result = await worker.wait_for_result(run_id, timeout=15)
    run = await worker.get_workflow_status(run_id)
    assert run.status == "completed" and run.error is None
    assert result == ["timed out", "timed out"]
    assert started(token) == {"quote": 1, "after": 1}
    names = [s.name for s in await worker.get_workflow_steps(run_id)]
    assert names.count("loop_slow_quote") == 1 and names.count("loop_work") == 1
    kinds = [e.event_type for e in await worker.get_workflow_events(run_id)]
    assert "workflow_waiting" in kinds  # it did park, so the result came from a replay


# ---- TaskGroup, as_completed, Event -----------------------------------------------------


@workflow(name="loop_task_group", retry_policy=NO_RETRY)
async def task_group(ctx):
    token = ctx.get_input("token")

    async def charged():
        return await ctx.execute_activity(charge, token, 5, 0.1)

    async def rested():
        await ctx.sleep(1.5)
        return "rested"

    async with asyncio.TaskGroup() as group:
        first, second = group.create_task(charged()), group.create_task(rested())
    return [first.result(), second.result()]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.TaskGroup is Python 3.11+")
async def test_task_group_with_an_activity_and_a_sleep_finishes(clocked):
    """``asyncio.TaskGroup`` with an activity task and a ``ctx.sleep(1.5)`` task (the
    issue: never finished): parks, wakes, completes; the activity ran once."""
    client, clock = clocked
    token = new_token()
    run_id = await client.start_workflow("loop_task_group", {"token": token})
    await wait_parked(client, run_id)
    await clock.advance(2)
    assert await client.wait_for_result(run_id, timeout=10) == [{"charged": 5}, "rested"]
    assert started(token) == {"charge": 1}


@workflow(name="loop_as_completed", retry_policy=NO_RETRY)
async def as_completed_order(ctx):
    token = ctx.get_input("token")
    calls = [ctx.execute_activity(work, token, label, label, delay)
             for label, delay in (("a", 0.45), ("b", 0.05), ("c", 0.25))]
    order = [await next_done for next_done in asyncio.as_completed(calls)]
    await ctx.sleep(1.5)  # parks: the order returned is the replay's
    return order


async def test_as_completed_replays_the_recorded_order(clocked):
    """``asyncio.as_completed`` over three activities of different durations: the order
    they finished in (b, c, a) is part of the history, so the replay after the park
    sees the same order (not call order); each ran once."""
    client, clock = clocked
    token = new_token()
    run_id = await client.start_workflow("loop_as_completed", {"token": token})
    await wait_parked(client, run_id)
    await clock.advance(2)
    assert await client.wait_for_result(run_id, timeout=10) == ["b", "c", "a"]
    assert started(token) == {"a": 1, "b": 1, "c": 1}


@workflow(name="loop_event", retry_policy=NO_RETRY)
async def event_between_tasks(ctx):
    token = ctx.get_input("token")
    ready = asyncio.Event()

    async def producer():
        value = await ctx.execute_activity(work, token, "produce", 3, 0.2)
        ready.set()
        return value

    async def consumer():
        await ready.wait()
        return await ctx.execute_activity(work, token, "consume", 4)

    results = await asyncio.gather(consumer(), producer())
    await ctx.sleep(1.5)  # parks: the result is the replay's
    return results


async def test_an_asyncio_event_between_two_workflow_tasks(clocked):
    """An ``asyncio.Event`` set by one workflow task after its activity and awaited by
    another before its own: both orders of events hold on the first execution and on
    the replay after the park; each activity ran once."""
    client, clock = clocked
    token = new_token()
    run_id = await client.start_workflow("loop_event", {"token": token})
    await wait_parked(client, run_id)
    await clock.advance(2)
    assert await client.wait_for_result(run_id, timeout=10) == [4, 3]
    assert started(token) == {"produce": 1, "consume": 1}


# ---- asyncio.sleep is a durable timer -----------------------------------------------------


@workflow(name="loop_asyncio_sleep", retry_policy=NO_RETRY)
async def plain_asyncio_sleep(ctx):
    await asyncio.sleep(2)
    return await ctx.execute_activity(work, ctx.get_input("token"), "after", "woke")


async def test_plain_asyncio_sleep_is_a_durable_timer(clocked):
    """``asyncio.sleep(2)`` in a workflow runs on workflow time: the run parks (nobody
    holds it, wake_at at the deadline), nothing happens while real time passes, and it
    completes at the deadline once the clock gets there."""
    client, clock = clocked
    token = new_token()
    run_id = await client.start_workflow("loop_asyncio_sleep", {"token": token})
    await wait_parked(client, run_id)
    run = await client.get_workflow_status(run_id)
    assert run.owner is None and near(run.wake_at, at(2)), run.wake_at
    await asyncio.sleep(0.5)
    assert (await client.get_workflow_status(run_id)).status == "running"
    assert started(token) == {}
    await clock.advance(2.5)
    assert await client.wait_for_result(run_id, timeout=10) == "woke"
    assert started(token) == {"after": 1}
    assert near((await client.get_workflow_status(run_id)).completed_at, at(2))


# ---- plain calls: now, uuid4, random, set_event, add_compensation ------------------------

VALUES: dict = {}  # token -> [what each attempt saw]


@workflow(name="loop_values", retry_policy=RetryPolicy(max_retries=1, initial_delay=0.01,
                                                      jitter=False))
async def deterministic_values(ctx):
    now, ident, rng = ctx.now(), ctx.uuid4(), ctx.random()
    draws = ([rng.random(), rng.randint(1, 6), rng.random()]
             if isinstance(rng, random.Random) else None)
    VALUES.setdefault(ctx.get_input("token"), []).append(
        {"now": now, "uuid": ident, "rng": rng, "draws": draws})
    if ctx.retry_count == 0:
        raise RuntimeError("the first attempt fails on purpose")
    return [str(now), str(ident), draws]


async def test_now_uuid4_random_are_plain_calls_equal_across_a_retry(client):
    """``ctx.now()``, ``ctx.uuid4()``, ``ctx.random()`` are called without ``await``:
    an aware UTC datetime, a uuid.UUID, a random.Random seeded from the run. The
    workflow-level retry (a replay from the top) sees the very same values, and no
    step row is written for them. Another run gets another uuid."""
    token, other = new_token(), new_token()
    run_id = await client.start_workflow("loop_values", {"token": token}, wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "completed" and run.retry_count == 1, run.error
    first, second = VALUES[token]
    assert isinstance(first["now"], datetime) and first["now"].utcoffset() == timedelta(0)
    assert abs((first["now"] - datetime.now(timezone.utc)).total_seconds()) < 60
    assert isinstance(first["uuid"], uuid.UUID)
    assert isinstance(first["rng"], random.Random)
    assert (first["now"], first["uuid"], first["draws"]) == (
        second["now"], second["uuid"], second["draws"])
    assert run.output_data["result"] == [str(first["now"]), str(first["uuid"]), first["draws"]]
    steps = await client.get_workflow_steps(run_id)
    assert [s for s in steps if s.kind == "value"] == [] and steps == []
    await client.start_workflow("loop_values", {"token": other}, wait=True)
    assert VALUES[other][0]["uuid"] != first["uuid"]


@activity(name="loop_undo", retry_policy=NO_RETRY)
async def undo(token: str, booking: str) -> None:
    STARTED[token, f"undo {booking}"] += 1


@activity(name="loop_declined", retry_policy=NO_RETRY)
async def declined(token: str) -> None:
    STARTED[token, "declined"] += 1
    raise RuntimeError("card declined")


@workflow(name="loop_saga", retry_policy=NO_RETRY)
async def saga(ctx):
    token = ctx.get_input("token")
    booking = await ctx.execute_activity(work, token, "book", "B-1")
    ctx.add_compensation(undo, token, booking)  # plain calls: no await
    ctx.set_event("stage", {"booked": booking})
    await ctx.execute_activity(declined, token)


async def test_add_compensation_and_set_event_are_plain_calls(client):
    """``ctx.add_compensation(undo, x)`` and ``ctx.set_event(key, v)`` without
    ``await`` (the issue: a forgotten await dropped the saga's compensation): the
    later failure ends the run ``compensated`` with ``undo`` run once, and the event
    is published."""
    token = new_token()
    run_id = await client.start_workflow("loop_saga", {"token": token}, wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "compensated", (run.status, run.error)
    assert "card declined" in run.error
    assert started(token) == {"book": 1, "declined": 1, "undo B-1": 1}
    assert await client.get_event(run_id, "stage", timeout=2) == {"booked": "B-1"}


# ---- RunStateError: a ctx or a step used where it does not belong ------------------------

STASH: dict = {}  # token -> {"ctx": ..., "step": ...} left behind by a workflow
GATES: dict = {}  # token -> asyncio.Event the gated activity waits for


@activity(name="loop_gated", retry_policy=NO_RETRY)
async def gated(token: str) -> str:
    STARTED[token, "gated"] += 1
    await GATES[token].wait()
    return "opened"


@workflow(name="loop_stash_ctx", retry_policy=NO_RETRY)
async def stash_ctx(ctx):
    STASH[ctx.get_input("token")] = {"ctx": ctx}
    return "stashed"


@workflow(name="loop_hold_step", retry_policy=NO_RETRY)
async def hold_step(ctx):
    token = ctx.get_input("token")
    step = ctx.execute_activity(gated, token)
    STASH[token] = {"ctx": ctx, "step": step}
    return await step


@workflow(name="loop_intruder", retry_policy=NO_RETRY)
async def intruder(ctx):
    token, use = ctx.get_input("token"), ctx.get_input("use")
    try:
        if use == "step":
            await STASH[token]["step"]
        else:
            await STASH[token]["ctx"].execute_activity(work, token, "intruder", 1)
    except RunStateError as exc:
        return type(exc).__name__
    return "no error"


async def test_ctx_of_a_finished_run_raises_run_state_error(worker):
    """A ``ctx`` kept after its run ended: using it from another run's workflow, or
    from outside any workflow, is a RunStateError, and runs nothing."""
    token = new_token()
    stasher = await worker.start_workflow("loop_stash_ctx", {"token": token})
    assert await worker.wait_for_result(stasher, timeout=10) == "stashed"
    run_id = await worker.start_workflow("loop_intruder", {"token": token, "use": "ctx"})
    assert await worker.wait_for_result(run_id, timeout=10) == "RunStateError"
    with pytest.raises(RunStateError):
        await STASH[token]["ctx"].execute_activity(work, token, "outside", 1)
    assert started(token) == {}
    assert await worker.get_workflow_steps(stasher) == []
    assert await worker.get_workflow_steps(run_id) == []


@pytest.mark.parametrize("use", ["ctx", "step"])
async def test_ctx_or_step_of_another_live_run_raises_run_state_error(worker, use):
    """While run A is inside an activity, run B uses A's ``ctx`` to call a step, or
    awaits A's step itself: B gets a RunStateError (never a private exception or an
    unrecorded activity), A is unaffected."""
    token = new_token()
    GATES[token] = asyncio.Event()
    holder = await worker.start_workflow("loop_hold_step", {"token": token})
    await dbutil.until(lambda: started(token).get("gated") == 1 and token in STASH, 5,
                       "run A to be inside its activity")
    run_id = await worker.start_workflow("loop_intruder", {"token": token, "use": use})
    assert await worker.wait_for_result(run_id, timeout=10) == "RunStateError"
    GATES[token].set()
    assert await worker.wait_for_result(holder, timeout=10) == "opened"
    assert started(token) == {"gated": 1}
    assert await step_rows(worker, holder) == [("loop_gated", "activity", "completed")]
    assert await worker.get_workflow_steps(run_id) == []


async def test_ctx_outside_any_workflow_raises_run_state_error(worker):
    """A ``ctx`` called from plain code (the test itself) while its run still waits:
    RunStateError, nothing runs."""
    token = new_token()
    GATES[token] = asyncio.Event()
    holder = await worker.start_workflow("loop_hold_step", {"token": token})
    await dbutil.until(lambda: token in STASH, 5, "the run to stash its ctx")
    with pytest.raises(RunStateError):
        await STASH[token]["ctx"].execute_activity(work, token, "outside", 1)
    GATES[token].set()
    assert await worker.wait_for_result(holder, timeout=10) == "opened"
    assert started(token) == {"gated": 1}


# ---- I/O on the workflow loop is an error that says: use an activity ----------------------


@workflow(name="loop_io", retry_policy=NO_RETRY)
async def io_on_the_workflow_loop(ctx):
    kind = ctx.get_input("kind")
    if kind == "executor":
        await asyncio.get_running_loop().run_in_executor(None, time.time)
    elif kind == "to_thread":
        await asyncio.to_thread(time.time)
    elif kind == "socket":
        reader, writer = await asyncio.open_connection("127.0.0.1", 9)
        writer.close()
    elif kind == "subprocess":
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
        await proc.wait()
    return "no error"


@pytest.mark.parametrize("kind", ["executor", "to_thread", "socket", "subprocess"])
async def test_io_on_the_workflow_loop_fails_the_run_naming_it_and_activities(client, kind):
    """Workflow code that does I/O itself (``run_in_executor``, ``to_thread``, a
    socket, a subprocess) fails its run with an error that names the run and says to
    use an activity."""
    run_id = await client.start_workflow("loop_io", {"kind": kind}, wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "failed", (run.status, run.output_data)
    assert run_id in run.error and "activity" in run.error.lower(), run.error


# ---- a failing run waits for its steps in flight ------------------------------------------


@activity(name="loop_fails_fast", retry_policy=NO_RETRY)
async def fails_fast(token: str) -> None:
    STARTED[token, "fails"] += 1
    await asyncio.sleep(0.05)
    raise RuntimeError("boom")


@workflow(name="loop_no_orphan", retry_policy=NO_RETRY)
async def no_orphan(ctx):
    token = ctx.get_input("token")
    return await asyncio.gather(ctx.execute_activity(fails_fast, token),
                                ctx.execute_activity(work, token, "slow", "done", 0.8))


async def test_a_failing_run_ends_only_after_its_activity_in_flight_is_recorded(client):
    """``gather(failing, slow)`` without return_exceptions: the run fails with the
    first error, but only once the slow activity has finished and been recorded (no
    orphan outlives its run; a saga would compensate it); the slow one ran once."""
    token = new_token()
    run_id = await client.start_workflow("loop_no_orphan", {"token": token}, wait=True)
    finished_then = finished(token)
    run = await client.get_workflow_status(run_id)
    assert run.status == "failed" and run.error == "RuntimeError: boom", run.error
    assert finished_then == {"slow": 1}  # the slow activity had ended when the run did
    steps = {s.name: s for s in await client.get_workflow_steps(run_id)}
    assert steps["loop_work"].status == "completed" and steps["loop_work"].output == "done"
    assert steps["loop_fails_fast"].status == "failed"
    assert steps["loop_work"].completed_at <= run.completed_at
    assert started(token) == {"fails": 1, "slow": 1}


# ---- runs recorded by an older version -------------------------------------------------


@workflow(name="loop_upgraded", retry_policy=NO_RETRY)
async def upgraded(ctx):
    token = ctx.get_input("token")
    first = await ctx.execute_activity(work, token, "first", 1)
    await ctx.sleep(5)
    return [first, await ctx.execute_activity(work, token, "second", 2)]


async def test_a_run_recorded_without_outcome_order_replays_and_gets_one(client):
    """Steps recorded by a version before the workflow loop have no ``seq``: a run in
    flight across the upgrade replays them (in step order), gives each a seq once, and
    executes nothing twice."""
    clock = TestClock(START)
    token = new_token()
    async with TinyWorkflowClient(client.database_url, clock=clock) as c:
        run_id = await c.start_workflow("loop_upgraded", {"token": token})
        await c.recover_workflows()
        await dbutil.until(lambda: parked(c, run_id), 5, "the run to park on its timer")
        await dbutil.rows(client.database_url, "UPDATE tinyworkflow_steps SET seq = NULL, "
                          "deadline = NULL WHERE run_id = ?", (run_id,))
        await clock.advance(6)
        await c.recover_workflows()
        assert await c.wait_for_result(run_id, timeout=10) == [1, 2]
    assert started(token) == {"first": 1, "second": 1}
    seqs = await dbutil.rows(client.database_url, "SELECT step, seq FROM tinyworkflow_steps "
                             "WHERE run_id = ? ORDER BY step", (run_id,))
    assert [step for step, _ in seqs] == [1, 2, 3]
    assert all(seq is not None for _, seq in seqs)
    assert len({seq for _, seq in seqs}) == 3


# ---- found by a red-team pass: each was a hang, a lost signal or a wrong branch ---------


@workflow(name="loop_fire_and_forget", retry_policy=NO_RETRY)
async def fire_and_forget(ctx):
    ctx.execute_activity(work, ctx.get_input("token"), "forgotten", 1)  # never awaited
    return "done"


async def test_an_activity_never_awaited_runs_and_is_recorded_before_the_run_ends(client):
    token = new_token()
    run_id = await client.start_workflow("loop_fire_and_forget", {"token": token}, wait=True)
    assert await client.wait_for_result(run_id, timeout=5) == "done"
    assert finished(token) == {"forgotten": 1}
    assert await step_rows(client, run_id) == [("loop_work", "activity", "completed")]


@workflow(name="loop_cancel_at_once", retry_policy=NO_RETRY)
async def cancel_at_once(ctx):
    token = ctx.get_input("token")
    given_up = ctx.execute_activity(work, token, "given up", 1)
    given_up.cancel()  # before it could start: it never does
    kept = await ctx.execute_activity(work, token, "kept", 2)
    return [given_up.cancelled(), kept]


async def test_a_step_cancelled_before_it_started_never_runs_and_the_run_ends(client):
    token = new_token()
    run_id = await client.start_workflow("loop_cancel_at_once", {"token": token}, wait=True)
    assert await client.wait_for_result(run_id, timeout=5) == [True, 2]
    assert started(token) == {"kept": 1}


FLAKY: collections.Counter = collections.Counter()


@activity(name="loop_flaky_once", retry_policy=NO_RETRY)
async def flaky_once(token: str) -> str:
    FLAKY[token] += 1
    if FLAKY[token] == 1:
        raise RuntimeError("first time")
    return "ok"


@workflow(name="loop_retry_after_wait_for",
          retry_policy=RetryPolicy(max_retries=1, initial_delay=0.01, jitter=False))
async def retry_after_wait_for(ctx):
    token = ctx.get_input("token")
    try:
        quote = await asyncio.wait_for(ctx.execute_activity(work, token, "slow", 1, 0.5), 0.1)
    except asyncio.TimeoutError:
        quote = "fallback"
    return [quote, await ctx.execute_activity(flaky_once, token)]


async def test_a_workflow_retry_replays_a_step_cancelled_by_wait_for(worker):
    """The retried attempt meets the step recorded as cancelled and the timer that
    cancelled it, in their order: same branch, the slow activity not run again."""
    token = new_token()
    run_id = await worker.start_workflow("loop_retry_after_wait_for", {"token": token})
    assert await worker.wait_for_result(run_id, timeout=10) == ["fallback", "ok"]
    assert started(token) == {"slow": 1} and FLAKY[token] == 2


@workflow(name="loop_two_signal_race", retry_policy=NO_RETRY)
async def two_signal_race(ctx):
    a = asyncio.ensure_future(ctx.wait_for_signal("a"))
    b = asyncio.ensure_future(ctx.wait_for_signal("b"))
    done, pending = await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
    for loser in pending:
        loser.cancel()
    first = "a" if a in done else "b"
    try:
        again = await ctx.wait_for_signal("b", timeout=10)
    except TimeoutError:
        again = "LOST"
    return [first, again]


async def test_a_signal_taken_for_a_wait_the_workflow_gave_up_is_given_back(client):
    """Both signals are there at the first look; "a" wins the race and the workflow
    gives the "b" wait up before "b" reaches it: "b" goes back, the next wait gets it."""
    run_id = await client.start_workflow("loop_two_signal_race")
    await client.send_signal(run_id, "a", "A")
    await client.send_signal(run_id, "b", "B")
    await client.recover_workflows()
    assert await client.wait_for_result(run_id, timeout=10) == ["a", "B"]
    rows = await dbutil.rows(client.database_url, "SELECT name, consumed_step FROM "
                             "tinyworkflow_signals WHERE run_id = ? ORDER BY id", (run_id,))
    assert rows == [("a", 1), ("b", 3)]
    events = [e.event_type for e in await client.get_workflow_events(run_id)]
    assert events.count("signal_returned") == 1


@workflow(name="loop_paid_in_time", retry_policy=NO_RETRY)
async def paid_in_time(ctx):
    try:
        return await ctx.wait_for_signal("paid", timeout=60)
    except TimeoutError:
        return "timed out"


async def test_a_signal_sent_before_the_deadline_is_taken_after_downtime(db_url):
    """Sent at t=30 while no worker runs, the run taken up again at t=100: the signal
    came in time, so the wait gets it (the old engine's behaviour too)."""
    clock = TestClock(START)
    async with TinyWorkflowClient(db_url, clock=clock) as client:  # no worker
        run_id = await client.start_workflow("loop_paid_in_time")
        await client.recover_workflows()
        await dbutil.until(lambda: parked(client, run_id), 5, "the run to park")
        await clock.advance(30)
        await client.send_signal(run_id, "paid", {"amount": 5})
        await clock.advance(70)
        await client.recover_workflows()
        assert await client.wait_for_result(run_id, timeout=10) == {"amount": 5}


RESUMED_FIXED = {"fixed": False}


@workflow(name="loop_resumed_wait", retry_policy=NO_RETRY)
async def resumed_wait(ctx):
    await ctx.execute_activity(work, ctx.get_input("token"), "before", 1)
    if not RESUMED_FIXED["fixed"]:
        raise ValueError("a bug, fixed before the resume")
    try:
        return await ctx.wait_for_signal("go", timeout=3600)
    except TimeoutError:
        return "timed out"


async def test_a_resumed_attempt_counts_its_new_waits_from_the_resume(clocked):
    """Resumed a day after it failed, the run's new wait times out an hour after the
    resume, not at once (its replayed history is a day old)."""
    client, clock = clocked
    RESUMED_FIXED["fixed"] = False
    token = new_token()
    run_id = await client.start_workflow("loop_resumed_wait", {"token": token})
    with pytest.raises(WorkflowFailedError):
        await client.wait_for_result(run_id, timeout=5)
    await clock.advance(86400)
    RESUMED_FIXED["fixed"] = True
    await client.resume_workflow(run_id)
    await dbutil.until(lambda: parked(client, run_id), 5, "the resumed run to park")
    assert near((await client.get_workflow_status(run_id)).wake_at, at(86400 + 3600))
    await clock.advance(3599)
    assert (await client.get_workflow_status(run_id)).status == "running"
    await clock.advance(2)
    assert await client.wait_for_result(run_id, timeout=5) == "timed out"
    assert started(token) == {"before": 1}


DEPLOYED = {"new": False}


@workflow(name="loop_patched_before_sleep", retry_policy=NO_RETRY)
async def patched_before_sleep(ctx):
    token = ctx.get_input("token")
    await ctx.execute_activity(work, token, "first", 1)
    took_new = DEPLOYED["new"] and ctx.patched("extra-step")
    if took_new:
        await ctx.execute_activity(work, token, "new step", 2)
    await asyncio.sleep(3600)
    return took_new


async def test_a_run_parked_on_asyncio_sleep_keeps_its_path_and_deadline_after_a_deploy(
        clocked):
    """The pending timer is recorded when the run parks: ctx.patched() added before it
    by a deploy knows the run has passed there, and the deadline stays the one set."""
    client, clock = clocked
    DEPLOYED["new"] = False
    token = new_token()
    run_id = await client.start_workflow("loop_patched_before_sleep", {"token": token})
    await wait_parked(client, run_id)
    assert near((await client.get_workflow_status(run_id)).wake_at, at(3600))
    DEPLOYED["new"] = True
    await clock.advance(3601)
    assert await client.wait_for_result(run_id, timeout=5) is False
    assert started(token) == {"first": 1}
    run = await client.get_workflow_status(run_id)
    assert near(run.completed_at, at(3600), slack=1.5)


APPROVER: dict = {}


@activity(name="loop_approve_meanwhile", retry_policy=NO_RETRY)
async def approve_meanwhile() -> str:
    """Decides the run's approval while the workflow races it against this activity, so
    the decision lands just before the workflow gives the approval wait up."""
    from tinyworkflow import activity_info
    client, run_id = APPROVER["client"], activity_info().run_id
    await dbutil.until(lambda: client.get_pending_approvals(), 5, "the approval request")
    APPROVER["answer"] = await client.approve_workflow(run_id, key="ok")
    return "activity"


@workflow(name="loop_approval_race", retry_policy=NO_RETRY)
async def approval_race(ctx):
    approval = asyncio.ensure_future(ctx.wait_for_approval("ok"))
    work_done = asyncio.ensure_future(ctx.execute_activity(approve_meanwhile))
    done, pending = await asyncio.wait({approval, work_done},
                                       return_when=asyncio.FIRST_COMPLETED)
    for loser in pending:
        loser.cancel()
    return "approval" if approval in done else await work_done


async def test_a_decision_given_as_the_workflow_gives_the_wait_up_stays_recorded(client):
    """The activity's outcome comes first, so the workflow gives the approval wait up;
    the decision given a moment before is kept with the step (not overwritten as
    cancelled), and a later decision is refused."""
    APPROVER.update(client=client, answer=None)
    run_id = await client.start_workflow("loop_approval_race", wait=True)
    assert await client.wait_for_result(run_id, timeout=10) in ("activity", "approval")
    assert APPROVER["answer"] is True
    (approval,) = [s for s in await client.get_workflow_steps(run_id) if s.kind == "approval"]
    assert (approval.status, approval.output) == ("completed", True)
    with pytest.raises(RunStateError):
        await client.approve_workflow(run_id, key="ok")


lost_runs: list = []


@activity(name="wl_slow_quote")
async def wl_slow_quote() -> str:
    lost_runs.append("ran")
    await asyncio.sleep(0.5)
    return "quote"


@workflow(name="wl_gave_up", retry_policy=RetryPolicy(max_retries=0))
async def wl_gave_up(ctx) -> str:
    try:
        outcome = await asyncio.wait_for(ctx.execute_activity(wl_slow_quote), 0.05)
    except asyncio.TimeoutError:
        outcome = "timed out"
    await ctx.wait_for_signal("go")
    return outcome


async def test_a_step_given_up_before_its_task_began_is_recorded_not_run(sqlite_url):
    """A worker killed after the timeout's record but before the given-up step's: the
    replay gets the timeout at once, before the step's task has begun. The step is
    recorded as given up, and its activity does not run again."""
    import sqlite3
    lost_runs.clear()
    async with TinyWorkflowClient(sqlite_url) as client:
        run_id = await client.start_workflow(wl_gave_up)
        await client.recover_workflows()  # the quote given up, then parked at the wait
        steps = sorted(await client.get_workflow_steps(run_id), key=lambda s: s.step)
        assert [(s.kind, s.status) for s in steps][:2] == [("activity", "cancelled"),
                                                           ("timer", "completed")]
        with sqlite3.connect(sqlite_url.split("///", 1)[1]) as db:  # as if never written
            db.execute("DELETE FROM tinyworkflow_steps WHERE run_id = ? AND step = 1",
                       (run_id,))
        await client.send_signal(run_id, "go")
        await client.recover_workflows()
        assert await client.wait_for_result(run_id, timeout=10) == "timed out"
        steps = sorted(await client.get_workflow_steps(run_id), key=lambda s: s.step)
    assert (steps[0].kind, steps[0].status, steps[0].name) == ("activity", "cancelled",
                                                               "wl_slow_quote")
    assert lost_runs == ["ran"]  # the first time only


# ---- a step given up during its retry's backoff keeps its record's time ---------------

@activity(name="loop_always_fails",
          retry_policy=RetryPolicy(max_retries=3, initial_delay=30.0, jitter=False))
async def always_fails(token: str):
    STARTED[token, "always_fails"] += 1
    raise RuntimeError("boom")


@workflow(name="loop_gives_up_in_backoff", retry_policy=NO_RETRY)
async def gives_up_in_backoff(ctx):
    step = ctx.execute_activity(always_fails, ctx.get_input("token"))
    await asyncio.sleep(0.3)  # the first attempt has failed: its retry waits 30 s
    step.cancel()
    return "gave up"


async def test_a_step_given_up_in_its_retry_backoff_keeps_the_failed_attempts_time(worker):
    """The step's row was recorded 'retrying' when the attempt failed; given up during
    the backoff, it is recorded 'cancelled' with that time, not the time it was given up
    (the workflow's clock moves to a step's recorded time when the step is delivered)."""
    token = new_token()
    run_id = await worker.start_workflow("loop_gives_up_in_backoff", {"token": token})
    assert await worker.wait_for_result(run_id, timeout=10) == "gave up"
    assert started(token) == {"always_fails": 1}
    run = await worker.get_workflow_status(run_id)
    (step,) = [s for s in await worker.get_workflow_steps(run_id) if s.kind == "activity"]
    failed = [e for e in await worker.get_workflow_events(run_id)
              if e.event_type == "step_failed"]
    assert step.status == "cancelled" and len(failed) == 1
    assert step.completed_at - run.started_at < timedelta(seconds=0.25)
