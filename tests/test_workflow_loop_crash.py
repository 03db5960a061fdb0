"""Issue 19 under SIGKILL: a workflow that composes its steps with ``asyncio.gather``,
``asyncio.wait(FIRST_COMPLETED)``, ``asyncio.wait_for`` and durable sleeps is executed
by a real worker process (tests/dbutil.py ``start_worker_script``, lease 1 s) that is
killed with SIGKILL at random moments and replaced by a new one, several times, until
one finishes the run.

Every activity appends its label to a log file when it starts (O_APPEND: whole lines
even when the writer dies), which counts executions across processes. After each kill
the test notes what had started (the log) and what was recorded (the steps in the
database); at the end it checks:

- the result equals the uninterrupted result, computed by running the same workflow in
  this process (on a database of its own);
- a step recorded before a kill never runs after it; a step runs more than once only
  if it was in flight at a kill, at most once more per such kill.

Also: ``asyncio.sleep(3)`` in a workflow survives a SIGKILL of the worker while the run
is parked and wakes at the original deadline; ``ctx.now()``, ``ctx.uuid4()`` and
``ctx.random()`` are the same in the execution after a crash.

Set TW_LOOP_CRASH_SEED to replay a failing seed.
"""

import asyncio
import collections
import json
import os
import random
import signal
import sys

import pytest

import dbutil
from tinyworkflow import TinyWorkflowClient

pytestmark = [pytest.mark.crash, pytest.mark.skipif(not hasattr(signal, "SIGKILL"),
                                                    reason="needs SIGKILL (POSIX)")]

LEASE = 1.0  # seconds: a killed worker's run is taken over this long after its last renewal
KILLS = 3
SLOTS = 3  # parametrised: each slot kills with its own random moments
_SEED = int(os.environ.get("TW_LOOP_CRASH_SEED", random.randrange(2**32)))
DONE_STEP = ("completed", "failed", "cancelled")  # a step whose outcome is recorded

WORKFLOWS = r'''
import asyncio, json, os, sys, time
from tinyworkflow import RetryPolicy, TinyWorkflowClient, activity, workflow


def loop_crash_log(path, line):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@activity(name="loop_crash_step", retry_policy=RetryPolicy(max_retries=0))
async def loop_crash_step(path, label, value, delay):
    loop_crash_log(path, label)
    await asyncio.sleep(delay)
    return {"label": label, "value": value}


@workflow(name="loop_crash_program", retry_policy=RetryPolicy(max_retries=0))
async def loop_crash_program(ctx):
    path = ctx.get_input("log")

    def act(label, value, delay):
        return ctx.execute_activity(loop_crash_step, path, label, value, delay)

    out = []
    # gather: two activities and a short (in-memory) sleep
    first, second, _ = await asyncio.gather(act("g1", 1, 0.15), act("g2", 2, 0.05),
                                            ctx.sleep(0.3))
    out.append([first["value"], second["value"]])
    # FIRST_COMPLETED: the fast one wins by a wide margin; the slow one is awaited too
    fast = asyncio.ensure_future(act("w_fast", 3, 0.02))
    slow = asyncio.ensure_future(act("w_slow", 4, 0.4))
    done, _ = await asyncio.wait({fast, slow}, return_when=asyncio.FIRST_COMPLETED)
    out.append(["fast" if fast in done else "slow", (await slow)["value"]])
    # wait_for: the timeout wins by a wide margin
    try:
        await asyncio.wait_for(act("wf_slow", 5, 0.5), 0.05)
        out.append("quoted")
    except asyncio.TimeoutError:
        out.append("timed out")
    # wait_for: the activity wins by a wide margin
    out.append((await asyncio.wait_for(act("wf_fast", 6, 0.02), 60))["value"])
    # a park: a durable sleep longer than a second
    await ctx.sleep(1.2)
    # gather after the park
    out.append([r["value"] for r in await asyncio.gather(act("h1", 7, 0.1),
                                                         act("h2", 8, 0.05))])
    return out


@workflow(name="loop_crash_asyncio_sleep", retry_policy=RetryPolicy(max_retries=0))
async def loop_crash_asyncio_sleep(ctx):
    path = ctx.get_input("log")
    await ctx.execute_activity(loop_crash_stamp, path, "before")
    await asyncio.sleep(3)
    return await ctx.execute_activity(loop_crash_stamp, path, "after")


@activity(name="loop_crash_stamp", retry_policy=RetryPolicy(max_retries=0))
async def loop_crash_stamp(path, label):
    loop_crash_log(path, json.dumps({"label": label, "at": time.time()}))
    return label


@activity(name="loop_crash_hold", retry_policy=RetryPolicy(max_retries=0))
def loop_crash_hold(path, values):
    loop_crash_log(path, json.dumps(values))
    while not os.path.exists(path + ".go"):  # held until the test lets it finish
        time.sleep(0.02)
    return "released"


@activity(name="loop_crash_book", retry_policy=RetryPolicy(max_retries=0))
async def loop_crash_book(path, name, fail):
    loop_crash_log(path, "book " + name)
    if fail:
        raise RuntimeError("declined " + name)
    while name == "X" and not os.path.exists(path + ".go"):  # held until the test says
        await asyncio.sleep(0.02)
    return name


@activity(name="loop_crash_undo", retry_policy=RetryPolicy(max_retries=0))
async def loop_crash_undo(path, name):
    loop_crash_log(path, "undo " + name)


@workflow(name="loop_crash_saga", retry_policy=RetryPolicy(max_retries=0))
async def loop_crash_saga(ctx):
    path = ctx.get_input("log")

    async def branch(name, fail=False):
        booked = await ctx.execute_activity(loop_crash_book, path, name, fail)
        ctx.add_compensation(loop_crash_undo, path, booked)

    await asyncio.gather(branch("F", True), branch("Y"), branch("X"))


@workflow(name="loop_crash_values", retry_policy=RetryPolicy(max_retries=0))
async def loop_crash_values(ctx):
    rng = ctx.random()
    values = [ctx.now().isoformat(), str(ctx.uuid4()), rng.random(), rng.randint(1, 10**9)]
    await ctx.execute_activity(loop_crash_hold, ctx.get_input("log"), values)
    return values
'''

# The same workflows in this process, for the uninterrupted reference run.
exec(compile(WORKFLOWS, "<loop_crash_workflows>", "exec"), {"__name__": "loop_crash_workflows"})

LABELS = ("g1", "g2", "w_fast", "w_slow", "wf_slow", "wf_fast", "h1", "h2")
EXPECTED = [[1, 2], ["fast", 4], "timed out", 6, [7, 8]]  # by design: every race has a margin


def read_lines(path) -> list:
    return path.read_text().splitlines() if path.exists() else []


def start_worker(db_url: str):
    return dbutil.start_worker_script(WORKFLOWS, db_url, poll=0.1, lease=LEASE)


def kill(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


def label_of(step) -> str:
    if isinstance(step.output, dict) and "label" in step.output:
        return step.output["label"]
    return step.input["args"][1]  # (path, label, value, delay)


async def recorded_labels(client, run_id) -> dict:
    """label -> status of its activity step, as recorded now."""
    return {label_of(s): s.status for s in await client.get_workflow_steps(run_id)
            if s.kind == "activity"}


async def reference_result(tmp_path) -> list:
    """The program run uninterrupted in this process, on a database of its own."""
    url = f"sqlite+aiosqlite:///{tmp_path}/reference.db"
    async with TinyWorkflowClient(url, auto_start_worker=True) as client:
        run_id = await client.start_workflow("loop_crash_program",
                                             {"log": str(tmp_path / "reference.log")})
        result = await client.wait_for_result(run_id, timeout=30)
    lines = read_lines(tmp_path / "reference.log")
    assert sorted(lines) == sorted(LABELS), lines  # uninterrupted: each activity once
    return result


@pytest.mark.parametrize("slot", range(SLOTS))
async def test_killed_workers_never_repeat_a_recorded_step_and_give_the_same_result(
        db_url, tmp_path, slot):
    """gather / FIRST_COMPLETED / wait_for / a park, with the worker SIGKILLed at random
    moments KILLS times and a new one started each time: each activity step runs once,
    or once more per kill that found it in flight, never after it was recorded; the
    result equals the uninterrupted run's."""
    rng = random.Random(_SEED * 100 + slot)
    where = f"(TW_LOOP_CRASH_SEED={_SEED}, slot {slot})"
    log = tmp_path / "steps.log"
    kills = []  # per kill: (Counter of lines started before it, {label: step status})
    # Started on a thread: start_worker blocks until the worker is ready, which must not
    # stall the reference run going on meanwhile on this event loop.
    worker = await asyncio.to_thread(start_worker, db_url)
    reference = asyncio.ensure_future(reference_result(tmp_path))
    try:
        async with TinyWorkflowClient(db_url) as client:  # no worker here
            await dbutil.until_served(client, "loop_crash_program")
            run_id = await client.start_workflow("loop_crash_program", {"log": str(log)})
            for _ in range(KILLS):
                # Somewhere in: the takeover after the last kill (about a lease), then
                # the run's own ~2.5 s.
                await asyncio.sleep(rng.uniform(0.05, 1.3))
                if (await client.get_workflow_status(run_id)).status == "completed":
                    break
                kill(worker)
                await asyncio.sleep(0.2)  # a commit the server had in hand is visible now
                kills.append((collections.Counter(read_lines(log)),
                              await recorded_labels(client, run_id)))
                worker = await asyncio.to_thread(start_worker, db_url)
            result = await client.wait_for_result(run_id, timeout=30)
            final = await recorded_labels(client, run_id)
            calls = [s for s in await client.get_workflow_steps(run_id) if s.kind == "activity"]
    finally:
        await asyncio.to_thread(kill, worker)
        if not reference.done() and sys.exc_info()[0] is not None:
            reference.cancel()
    expected = await reference
    assert expected == EXPECTED, f"the uninterrupted run: {expected}"
    assert result == expected, where

    lines = collections.Counter(read_lines(log))
    assert set(lines) == set(LABELS), (lines, where)
    # One step per activity call, whatever the kills.
    assert sorted(label_of(s) for s in calls) == sorted(LABELS), (final, where)
    for label in LABELS:
        assert final[label] in DONE_STEP, (label, final, where)
        in_flight, previous = 0, collections.Counter()
        for number, (before, statuses) in enumerate(kills, 1):
            if statuses.get(label) in DONE_STEP:
                # Recorded before this kill: it never ran after it.
                assert lines[label] == before[label], (
                    f"{label} ran again after kill {number} although it was recorded "
                    f"{where}; log counts {dict(lines)}")
            elif before[label] > previous[label]:
                in_flight += 1  # started by the worker killed here, not recorded
            previous = before
        assert 1 <= lines[label] <= 1 + in_flight, (
            f"{label} ran {lines[label]} times, in flight at {in_flight} kill(s) {where}")


async def test_asyncio_sleep_survives_a_killed_worker_and_wakes_at_its_deadline(
        db_url, tmp_path):
    """``asyncio.sleep(3)`` in a workflow is a durable timer: the worker is SIGKILLed
    while the run is parked on it, a new worker starts a second later, and the run
    wakes at the original deadline (not the downtime later, not early), with each
    activity executed once."""
    log = tmp_path / "stamps.log"
    worker = start_worker(db_url)
    try:
        async with TinyWorkflowClient(db_url) as client:
            await dbutil.until_served(client, "loop_crash_asyncio_sleep")
            run_id = await client.start_workflow("loop_crash_asyncio_sleep", {"log": str(log)})

            async def parked() -> bool:
                run = await client.get_workflow_status(run_id)
                return (bool(read_lines(log)) and run.status == "running"
                        and run.owner is None and run.wake_at is not None)

            await dbutil.until(parked, 10, "the run to park on asyncio.sleep(3)")
            (before,) = [s for s in await client.get_workflow_steps(run_id)
                         if s.status == "completed"]
            deadline = (await client.get_workflow_status(run_id)).wake_at.timestamp()
            assert abs(deadline - (before.completed_at.timestamp() + 3)) < 0.5, (
                deadline, before.completed_at)
            kill(worker)
            await asyncio.sleep(1.0)  # everything is down for a second
            worker = start_worker(db_url)
            assert await client.wait_for_result(run_id, timeout=20) == "after"
            run = await client.get_workflow_status(run_id)
    finally:
        kill(worker)
    stamps = [json.loads(line) for line in read_lines(log)]
    assert [s["label"] for s in stamps] == ["before", "after"]  # each once
    assert run.completed_at.timestamp() >= deadline, (run.completed_at, deadline)
    assert stamps[1]["at"] >= deadline - 0.01, (stamps, deadline)
    assert stamps[1]["at"] <= deadline + 1.0, (stamps, deadline)  # the worker polls at 0.1 s


async def test_now_uuid4_random_are_the_same_after_a_crash(db_url, tmp_path):
    """``ctx.now()``, ``ctx.uuid4()``, ``ctx.random()`` (plain calls, no step written)
    give the same values in the execution that replays the run after its worker was
    SIGKILLed as in the one that was killed."""
    log = tmp_path / "values.log"
    worker = start_worker(db_url)
    try:
        async with TinyWorkflowClient(db_url) as client:
            await dbutil.until_served(client, "loop_crash_values")
            run_id = await client.start_workflow("loop_crash_values", {"log": str(log)})
            await dbutil.until(lambda: read_lines(log), 10, "the activity to start")
            kill(worker)  # the activity is in flight: it runs again after the takeover
            (tmp_path / "values.log.go").touch()
            worker = start_worker(db_url)
            result = await client.wait_for_result(run_id, timeout=20)
            steps = await client.get_workflow_steps(run_id)
    finally:
        kill(worker)
    first, second = [json.loads(line) for line in read_lines(log)]
    assert first == second == result
    assert [s.kind for s in steps] == ["activity"]  # nothing recorded for the values


async def test_a_failing_gather_killed_while_a_branch_runs_still_compensates_every_booking(
        db_url, tmp_path):
    """Branch F fails, Y books and registers its compensation, X is still booking when
    the worker is SIGKILLed. The new worker replays the failure with Y's outcome in its
    recorded place, X books again and registers its compensation, and both are undone
    (before: X's booking was never undone, or a false NonDeterminismError)."""
    log = tmp_path / "saga.log"
    worker = start_worker(db_url)
    try:
        async with TinyWorkflowClient(db_url) as client:
            await dbutil.until_served(client, "loop_crash_saga")
            run_id = await client.start_workflow("loop_crash_saga", {"log": str(log)})

            async def y_registered() -> bool:
                return "book X" in read_lines(log) and any(
                    s.kind == "compensation" for s in await client.get_workflow_steps(run_id))

            await dbutil.until(y_registered, 10, "Y's compensation while X books")
            kill(worker)
            (tmp_path / "saga.log.go").touch()
            worker = start_worker(db_url)

            async def finished() -> bool:
                return (await client.get_workflow_status(run_id)).status in (
                    "compensated", "failed")

            await dbutil.until(finished, 20, "the run to compensate")
            run = await client.get_workflow_status(run_id)
    finally:
        kill(worker)
    lines = read_lines(log)
    assert run.status == "compensated", run.error
    assert sorted(line for line in lines if line.startswith("undo")) == ["undo X", "undo Y"]
    assert lines.count("book Y") == 1 and lines.count("book F") == 1
    assert lines.count("book X") == 2  # in flight at the kill: booked again
