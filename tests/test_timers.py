"""Durable timers: ``ctx.sleep`` / ``ctx.sleep_until`` record their deadline when first
reached. A short wait is held in memory; a longer one parks the run in the database
(nothing in memory) until the deadline, when any worker replays it. A run whose worker
dies while it sleeps wakes at the original deadline, and a timer that fired never
waits again."""

import asyncio
import json
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone

import pytest

import dbutil
from tinyworkflow import RetryPolicy, TinyWorkflowClient, activity, workflow


done: list = []


@activity(name="timers_mark")
async def mark(label: str) -> str:
    done.append(label)
    return label


@workflow(name="timers_wf", retry_policy=RetryPolicy(max_retries=0))
async def timers_wf(ctx):
    await ctx.execute_activity(mark, "before")
    await ctx.sleep(ctx.get_input("short"))  # held in memory
    await ctx.sleep(ctx.get_input("long"))  # parks the run
    await ctx.sleep_until(datetime.fromisoformat(ctx.get_input("until")))
    return await ctx.execute_activity(mark, "after")


async def test_sleep_waits_in_memory_or_parked_and_records_its_timers(client):
    done.clear()
    started = time.monotonic()
    until = datetime.now(timezone.utc) + timedelta(seconds=1.8)
    run_id = await client.start_workflow("timers_wf", {"short": 0.2, "long": 1.2,
                                                       "until": until.isoformat()}, wait=True)
    elapsed = time.monotonic() - started
    run = await client.get_workflow_status(run_id)
    assert run.status == "completed" and run.output_data == {"result": "after"}, run.error
    assert done == ["before", "after"]  # each activity once, across the parking
    assert 1.8 <= elapsed < 5, elapsed
    assert datetime.now(timezone.utc) >= until
    events = [e.event_type for e in await client.get_workflow_events(run_id)]
    assert events.count("timer_set") == 3 and events.count("timer_fired") == 3
    assert "workflow_waiting" in events  # the 1.2 s timer parked the run
    steps = await client.get_workflow_steps(run_id)
    assert [(s.name, s.kind, s.status) for s in steps] == [
        ("timers_mark", "activity", "completed"), ("sleep", "timer", "completed"),
        ("sleep", "timer", "completed"), ("sleep", "timer", "completed"),
        ("timers_mark", "activity", "completed")]


@workflow(name="timers_parked_wf", retry_policy=RetryPolicy(max_retries=0))
async def timers_parked_wf(ctx):
    await ctx.sleep(ctx.get_input("seconds"))
    return await ctx.execute_activity(mark, ctx.get_input("label"))


async def test_a_parked_run_is_woken_by_the_worker_and_holds_no_task(db_url):
    done.clear()
    async with TinyWorkflowClient(db_url, auto_start_worker=True, poll_interval=30) as client:
        run_id = await client.start_workflow("timers_parked_wf", {"seconds": 1.5,
                                                                  "label": "woken"})
        await asyncio.sleep(0.5)
        run = await client.get_workflow_status(run_id)
        assert run.status == "running" and run.owner is None  # parked, nobody holds it
        assert await client.wait_for_result(run_id, timeout=10) == "woken"
    assert done == ["woken"]


async def test_cancelling_a_sleeping_run_ends_it(client):
    done.clear()
    run_id = await client.start_workflow("timers_parked_wf", {"seconds": 60, "label": "never"})
    await client.recover_workflows()  # executes it until it parks
    assert (await client.get_workflow_status(run_id)).owner is None
    assert await client.cancel_workflow(run_id)
    assert (await client.get_workflow_status(run_id)).status == "cancelled"
    assert await client.recover_workflows() == []  # nothing due, ever
    assert done == []


flaky_attempts = {"n": 0}


@activity(name="timers_flaky", retry_policy=RetryPolicy(max_retries=0))
async def flaky() -> str:
    flaky_attempts["n"] += 1
    if flaky_attempts["n"] == 1:
        raise RuntimeError("first attempt fails")
    return "ok"


@workflow(name="timers_retried_wf", retry_policy=RetryPolicy(max_retries=1, initial_delay=0.01,
                                                             jitter=False))
async def timers_retried_wf(ctx):
    await ctx.sleep(1.2)
    return await ctx.execute_activity(flaky)


async def test_a_timer_that_fired_does_not_wait_again_on_replay(client):
    flaky_attempts["n"] = 0
    started = time.monotonic()
    run_id = await client.start_workflow("timers_retried_wf", wait=True)
    elapsed = time.monotonic() - started
    assert (await client.get_workflow_status(run_id)).status == "completed"
    assert flaky_attempts["n"] == 2
    assert 1.2 <= elapsed < 2.2, elapsed  # one wait of 1.2 s, not two
    events = [e.event_type for e in await client.get_workflow_events(run_id)]
    assert events.count("timer_set") == 1 and events.count("timer_fired") == 1


@workflow(name="timers_parallel_wf", retry_policy=RetryPolicy(max_retries=0))
async def timers_parallel_wf(ctx):
    # Two timers at once (a sleep is an awaitable step like an activity call).
    await asyncio.gather(ctx.sleep(2.0), ctx.sleep(1.2))
    return "both"


async def test_parallel_timers_end_with_the_longest(client):
    started = time.monotonic()
    run_id = await client.start_workflow("timers_parallel_wf", wait=True)
    elapsed = time.monotonic() - started
    assert (await client.get_workflow_status(run_id)).output_data == {"result": "both"}
    assert 2.0 <= elapsed < 3.5, elapsed


@workflow(name="timers_bad_wf", retry_policy=RetryPolicy(max_retries=0))
async def timers_bad_wf(ctx):
    kind = ctx.get_input("kind")
    if kind == "negative":
        await ctx.sleep(-1)
    elif kind == "text":
        await ctx.sleep("10")
    else:
        await ctx.sleep_until(datetime(2030, 1, 1))  # naive: which time zone?


@pytest.mark.parametrize("kind", ["negative", "text", "naive"])
async def test_bad_timer_arguments_fail_the_run_with_a_clear_error(client, kind):
    run_id = await client.start_workflow("timers_bad_wf", {"kind": kind}, wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "failed" and run.error.startswith("ValueError: sleep")
    assert await client.get_workflow_steps(run_id) == []  # nothing recorded


@workflow(name="timers_many_wf", retry_policy=RetryPolicy(max_retries=0))
async def timers_many_wf(ctx):
    await ctx.sleep(60)
    return "late"


@pytest.mark.slow
async def test_a_thousand_sleeping_runs_hold_no_coroutines(db_url):
    runs = 1000
    async with TinyWorkflowClient(db_url) as client:
        for _ in range(runs):
            await client.start_workflow("timers_many_wf")
        tasks_before = len(asyncio.all_tasks())
        await client.start_worker()

        async def parked() -> int:
            rows = await client.list_workflow_executions(status="running", limit=runs + 1)
            return sum(1 for run in rows if run.owner is None)

        deadline = time.monotonic() + 60
        while await parked() < runs:
            assert time.monotonic() < deadline, "the runs did not all park"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.2)  # executions finishing their last write
        # The worker loop and its helpers only: no task per sleeping run.
        assert len(asyncio.all_tasks()) - tasks_before < 20, len(asyncio.all_tasks())
        await client.stop_worker()


# ---- a worker process killed while its run sleeps --------------------------------------

WORKER = """
import asyncio, json, sys, time
from tinyworkflow import RetryPolicy, TinyWorkflowClient, activity, workflow

@activity(name="timers_crash_log")
async def log(path, label):
    with open(path, "a") as f:
        f.write(json.dumps({"label": label, "at": time.time()}) + "\\n")
    return label

@workflow(name="timers_crash_wf", retry_policy=RetryPolicy(max_retries=0))
async def crash_wf(ctx):
    path = ctx.get_input("log")
    await ctx.execute_activity(log, path, "before")
    await ctx.sleep(3)
    return await ctx.execute_activity(log, path, "after")

"""


def start_worker(db_url: str) -> subprocess.Popen:
    return dbutil.start_worker_script(WORKER, db_url, poll=0.2, lease=30)


@pytest.mark.crash
async def test_a_run_sleeping_when_its_worker_is_killed_wakes_at_the_original_deadline(
        db_url, tmp_path):
    log = tmp_path / "log.jsonl"
    worker = start_worker(db_url)
    try:
        async with TinyWorkflowClient(db_url) as client:  # no worker here
            # The workflow is defined in the worker process only: start it by the name
            # the worker advertises.
            deadline = time.monotonic() + 10
            while not any("timers_crash_wf" in w.workflows for w in await client.list_workers()):
                assert time.monotonic() < deadline, "the worker never advertised"
                await asyncio.sleep(0.05)
            run_id = await client.start_workflow("timers_crash_wf", {"log": str(log)})

            async def timer_set() -> list:
                return [e for e in await client.get_workflow_events(run_id)
                        if e.event_type == "timer_set"]

            async def parked() -> bool:  # else a kill before the park leaves its lease
                return bool(await timer_set()) and (
                    await client.get_workflow_status(run_id)).owner is None

            await dbutil.until(parked, 10, "the timer to be set and the run parked")
            wake_at = json.loads(log.read_text().splitlines()[0])["at"] + 3
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            await asyncio.sleep(1.0)  # everything is down for a second
            worker = start_worker(db_url)
            assert await client.wait_for_result(run_id, timeout=20) == "after"
            lines = [json.loads(line) for line in log.read_text().splitlines()]
            assert [line["label"] for line in lines] == ["before", "after"]  # each once
            # Woken at the original deadline: not 1 s (the downtime) later, not early.
            assert wake_at - 0.05 <= lines[1]["at"] <= wake_at + 0.8, (lines, wake_at)
            events = [e.event_type for e in await client.get_workflow_events(run_id)]
            assert events.count("timer_set") == 1 and events.count("timer_fired") == 1
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
