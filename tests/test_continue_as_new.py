"""``ctx.continue_as_new(input)``: the run ends as ``continued`` and a fresh run of the
same workflow and ``workflow_id`` starts with an empty history, in one transaction;
``wait_for_result`` and a parent's wait follow the chain."""

import asyncio
import json
import signal

import pytest

import dbutil
from tinyworkflow import (RetryPolicy, TinyWorkflowClient, WorkflowStatus, activity,
                          workflow)

NO_RETRY = RetryPolicy(max_retries=0)
ONE_RETRY = RetryPolicy(max_retries=1, initial_delay=0.01, jitter=False)
calls: list = []


@activity(name="can_note")
async def note(n: int) -> int:
    calls.append(n)
    return n


@workflow(name="can_counter", retry_policy=NO_RETRY)
async def counter(ctx):
    n = await ctx.execute_activity(note, ctx.get_input("n"))
    if n < ctx.get_input("until"):
        ctx.continue_as_new({"n": n + 1, "until": ctx.get_input("until")})
    return n


async def _chain(client, first: str) -> list:
    runs = [await client.get_workflow_status(first)]
    while runs[-1].status == "continued":
        runs.append(await client.get_workflow_status(runs[-1].output_data["continued_as"]))
    return runs


async def test_each_run_continues_as_a_fresh_one_until_the_last_returns(client):
    calls.clear()
    first = await client.start_workflow("can_counter", {"n": 0, "until": 3},
                                        workflow_id="counter-7", wait=True)
    assert await client.wait_for_result(first) == 3
    runs = await _chain(client, first)
    assert [r.status for r in runs] == ["continued"] * 3 + ["completed"]
    assert [r.input_data["n"] for r in runs] == [0, 1, 2, 3]
    assert {r.workflow_id for r in runs} == {"counter-7"}
    assert calls == [0, 1, 2, 3]
    for run in runs:  # every history holds only its own step
        steps = await client.get_workflow_steps(run.run_id)
        assert [(s.step, s.output) for s in steps] == [(1, run.input_data["n"])]
    events = await client.get_workflow_events(runs[1].run_id)
    assert events[0].event_data == {"workflow_name": "can_counter",
                                    "continued_from": runs[0].run_id}
    assert events[-1].event_type == "workflow_continued_as_new"
    assert events[-1].event_data == {"run_id": runs[2].run_id}
    assert runs[0].completed_at is not None and runs[0].error is None
    assert WorkflowStatus("continued") is WorkflowStatus.CONTINUED


async def test_a_worker_follows_the_chain(db_url):
    calls.clear()
    async with TinyWorkflowClient(db_url, auto_start_worker=True, poll_interval=0.2) as c:
        first = await c.start_workflow("can_counter", {"n": 5, "until": 7})
        assert await c.wait_for_result(first, timeout=20) == 7
    assert calls == [5, 6, 7]


# Signals the old run had not consumed pass to its successor.
@workflow(name="can_inbox", retry_policy=NO_RETRY)
async def inbox(ctx):
    seen = ctx.get_input("seen")
    seen.append(await ctx.wait_for_signal("item"))
    if len(seen) < 5:
        ctx.continue_as_new({"seen": seen})
    return seen


async def test_unconsumed_signals_pass_to_the_successor(db_url):
    async with TinyWorkflowClient(db_url, auto_start_worker=True, poll_interval=0.2) as c:
        first = await c.start_workflow("can_inbox", {"seen": []})
        for i in range(5):  # a burst: most reach a run that will continue before taking them
            await c.send_signal(first, "item", i)
        assert await c.wait_for_result(first, timeout=20) == [0, 1, 2, 3, 4]


# Replay after a workflow-level retry: the step before is replayed, not run again.
@workflow(name="can_retried", retry_policy=ONE_RETRY)
async def retried(ctx):
    n = await ctx.execute_activity(note, ctx.get_input("n"))
    if n == 0 and ctx.retry_count == 0:
        raise RuntimeError("trips before continuing")
    if n == 0:
        ctx.continue_as_new({"n": 1})
    return n


async def test_a_retried_run_replays_its_steps_then_continues(client):
    calls.clear()
    first = await client.start_workflow("can_retried", {"n": 0}, wait=True)
    assert await client.wait_for_result(first) == 1
    runs = await _chain(client, first)
    assert [(r.status, r.retry_count) for r in runs] == [("continued", 1), ("completed", 0)]
    assert calls == [0, 1]


# A child that continues as new: its parent waits for the end of the chain.
@workflow(name="can_parent", retry_policy=NO_RETRY)
async def parent(ctx):
    return await ctx.execute_child_workflow("can_counter", {"n": 1, "until": 3})


async def test_a_parent_waits_for_the_end_of_its_childs_chain(client):
    first = await client.start_workflow("can_parent", wait=True)
    assert await client.wait_for_result(first) == 3
    kids = await client.list_workflow_executions(workflow_name="can_counter")
    assert sorted(k.status for k in kids) == ["completed", "continued", "continued"]
    assert {k.parent_run_id for k in kids} == {first}


@workflow(name="can_bad_input", retry_policy=NO_RETRY)
async def bad_input(ctx):
    ctx.continue_as_new({"n": {1, 2}})


async def test_an_input_that_is_not_json_fails_the_run_and_starts_nothing(client):
    run_id = await client.start_workflow("can_bad_input", wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "failed" and run.error.startswith("SerializationError")
    assert len(await client.list_workflow_executions(workflow_name="can_bad_input")) == 1


# ---- a crash in the middle of the chain ---------------------------------------------------

WORKER = """
import asyncio, json, os, sys, time
from tinyworkflow import RetryPolicy, TinyWorkflowClient, activity, workflow

@activity(name="can_crash_work")
def work(path, n):
    with open(path, "a") as f:
        f.write(json.dumps(n) + "\\n")
    while n == 2 and not os.path.exists(path + ".go"):  # generation 2 is held
        time.sleep(0.02)
    return n

@workflow(name="can_crash_loop", retry_policy=RetryPolicy(max_retries=0))
async def loop(ctx):
    n = await ctx.execute_activity(work, ctx.get_input("log"), ctx.get_input("n"))
    if n < 4:
        ctx.continue_as_new({"log": ctx.get_input("log"), "n": n + 1})
    return n
"""



@pytest.mark.crash
async def test_a_killed_worker_resumes_the_chain_where_it_was(db_url, tmp_path):
    log = tmp_path / "log.jsonl"
    worker = dbutil.start_worker_script(WORKER, db_url)
    try:
        async with TinyWorkflowClient(db_url) as client:
            await dbutil.until_served(client, "can_crash_loop")
            first = await client.start_workflow("can_crash_loop", {"log": str(log), "n": 0})
            await dbutil.until(lambda: log.exists() and "2" in log.read_text().split(), 15,
                               "generation 2 to be in its activity")
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            (tmp_path / "log.jsonl.go").touch()
            worker = dbutil.start_worker_script(WORKER, db_url)
            assert await client.wait_for_result(first, timeout=30) == 4
            runs = await client.list_workflow_executions(workflow_name="can_crash_loop")
            assert sorted(r.status for r in runs) == ["completed"] + ["continued"] * 4
        # Only the activity in flight at the kill ran twice; no generation started twice.
        assert [json.loads(line) for line in log.read_text().splitlines()] == [0, 1, 2, 2, 3, 4]
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        await asyncio.sleep(0)
