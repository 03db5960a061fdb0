"""Behaviour of the core library: replay, retries, timeouts, audit trail, bad input.
Runs on every backend (the db_url / client fixtures); fast: a few seconds on each."""

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from datetime import timezone

import pytest

import dbutil
import tinyworkflow
from tinyworkflow import (
    ActivityTimeoutError,
    RetryPolicy,
    RunNotFoundError,
    RunStateError,
    SerializationError,
    TinyWorkflowClient,
    WorkflowContext,
    WorkflowTimeoutError,
    activity,
    activity_info,
    workflow,
)
from tinyworkflow.models import WorkflowStatus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_RETRY = RetryPolicy(max_retries=0)
FAST = RetryPolicy(max_retries=2, initial_delay=0.001, jitter=False)
calls: Counter = Counter()


# ---- the public API ---------------------------------------------------------------------


def test_public_names_and_status_strings():
    assert set(tinyworkflow.__all__) >= {"workflow", "activity", "WorkflowContext",
                                         "TinyWorkflowClient", "RetryPolicy"}
    assert WorkflowStatus.COMPLETED == "completed"
    assert f"{WorkflowStatus.FAILED}" == "failed" and str(WorkflowStatus.PAUSED) == "paused"
    assert tinyworkflow.models.WorkflowStatus is WorkflowStatus


def test_single_file_works_alone(tmp_path):
    """Copied alone into a project, the file imports light and runs a workflow."""
    (tmp_path / "tinyworkflow.py").write_bytes(open(os.path.join(ROOT, "tinyworkflow.py"), "rb").read())
    script = tmp_path / "app.py"
    script.write_text(
        "import asyncio, sys\n"
        "import tinyworkflow\n"
        "from tinyworkflow.models import WorkflowStatus\n"
        "heavy = [m for m in ('asyncpg', 'aiomysql', 'croniter', 'http.server', 'aiosqlite')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from tinyworkflow import workflow, activity, TinyWorkflowClient\n"
        "@activity()\n"
        "def double(x): return 2 * x\n"
        "@workflow()\n"
        "async def alone(ctx): return await ctx.execute_activity(double, ctx.get_input('x'))\n"
        "async def main():\n"
        "    async with TinyWorkflowClient() as c:\n"
        "        run = await c.get_workflow_status(await c.start_workflow('alone', {'x': 21}, wait=True))\n"
        "        assert run.status == WorkflowStatus.COMPLETED, run\n"
        "        print(run.output_data)\n"
        "asyncio.run(main())\n")
    env = {k: v for k, v in os.environ.items() if k != "TINYWORKFLOW_DATABASE_URL"}
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{'result': 42}"
    assert (tmp_path / "tinyworkflow.db").exists()  # the default URL


def test_default_url_and_env(monkeypatch):
    monkeypatch.delenv("TINYWORKFLOW_DATABASE_URL", raising=False)
    assert TinyWorkflowClient().database_url == "sqlite+aiosqlite:///tinyworkflow.db"
    monkeypatch.setenv("TINYWORKFLOW_DATABASE_URL", "sqlite:///elsewhere.db")
    assert TinyWorkflowClient().database_url == "sqlite:///elsewhere.db"
    assert TinyWorkflowClient("sqlite:///given.db").database_url == "sqlite:///given.db"


async def test_durable_sqlite_settings(sqlite_url, tmp_path):
    async with TinyWorkflowClient(sqlite_url) as c:
        assert await tinyworkflow._internals.store(c).fetch("PRAGMA journal_mode") == [("wal",)]
        assert await tinyworkflow._internals.store(c).fetch("PRAGMA synchronous") == [(2,)]  # FULL
        # SQLite's busy handler is off: locks are waited for on aiosqlite's thread,
        # up to the store's timeout, never on the event loop.
        assert await tinyworkflow._internals.store(c).fetch("PRAGMA busy_timeout") == [(0,)]
        assert tinyworkflow._internals.store(c).driver.timeout == 15
    async with TinyWorkflowClient(f"sqlite:///{tmp_path}/fast.db?synchronous=normal&timeout=2") as c:
        assert await tinyworkflow._internals.store(c).fetch("PRAGMA synchronous") == [(1,)]
        assert tinyworkflow._internals.store(c).driver.timeout == 2


async def test_schema_tables_and_version(db_url):
    async with TinyWorkflowClient(db_url) as c:
        await c.list_workflow_executions()
    assert await dbutil.table_names(db_url) == {
        "tinyworkflow_meta", "tinyworkflow_runs", "tinyworkflow_steps", "tinyworkflow_events",
        "tinyworkflow_workers", "tinyworkflow_signals", "tinyworkflow_schedules",
        "tinyworkflow_queues"}
    assert await dbutil.schema_version(db_url) == [
        ("schema_version", str(len(tinyworkflow._internals.migrations)))]


async def test_table_prefix(db_url):
    async with TinyWorkflowClient(db_url, table_prefix="app_wf_") as c:
        await c.list_workflow_executions()
    assert await dbutil.table_names(db_url) == {f"app_wf_{t}" for t in dbutil.TABLES}
    for bad in ("", "1x", "a;drop table x", "a-b"):
        with pytest.raises(ValueError, match="prefix"):
            TinyWorkflowClient(db_url, table_prefix=bad)


async def test_reopening_keeps_schema_and_data(db_url):
    @workflow(name="reopen_wf")
    async def reopen_wf(ctx):
        return 1

    async with TinyWorkflowClient(db_url) as c:
        run_id = await c.start_workflow("reopen_wf", wait=True)
    async with TinyWorkflowClient(db_url) as c:
        assert (await c.get_workflow_status(run_id)).output_data == {"result": 1}


# ---- replay -----------------------------------------------------------------------------


@activity(name="replay_one", retry_policy=NO_RETRY)
async def replay_one(x):
    calls["replay_one"] += 1
    return x + 1


@activity(name="replay_two", retry_policy=NO_RETRY)
def replay_two(x):  # sync: runs in a thread
    calls["replay_two"] += 1
    return x * 10


@activity(name="replay_three", retry_policy=NO_RETRY)
async def replay_three(x):
    calls["replay_three"] += 1
    if calls["replay_three"] == 1:
        raise ConnectionError("transient")
    return x - 3


@workflow(name="replay_wf", retry_policy=FAST)
async def replay_wf(ctx: WorkflowContext):
    a = await ctx.execute_activity(replay_one, ctx.get_input("x"))
    b = await ctx.execute_activity(replay_two, a)
    return await ctx.execute_activity(replay_three, b)


async def test_workflow_retry_resumes_from_failure_point(client):
    calls.clear()
    run_id = await client.start_workflow("replay_wf", {"x": 1}, wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "completed" and run.output_data == {"result": 17}
    assert run.retry_count == 1 and run.error is None  # the failure stays in the events
    assert calls == Counter(replay_one=1, replay_two=1, replay_three=2)
    steps = await client.get_workflow_steps(run_id)
    assert [(s.step, s.name, s.status) for s in steps] == [
        (1, "replay_one", "completed"), (2, "replay_two", "completed"),
        (3, "replay_three", "completed")]
    types = [e.event_type for e in await client.get_workflow_events(run_id)]
    assert types == ["workflow_created", "workflow_started", "step_completed", "step_completed",
                     "step_failed", "workflow_retrying", "workflow_started", "step_completed",
                     "workflow_completed"]


@activity(name="par_slow", retry_policy=NO_RETRY)
async def par_slow(tag, delay):
    calls[f"par_{tag}"] += 1
    await asyncio.sleep(delay)
    return tag


@activity(name="par_fail_once", retry_policy=NO_RETRY)
async def par_fail_once():
    calls["par_fail_once"] += 1
    if calls["par_fail_once"] == 1:
        raise RuntimeError("after the fan-out")
    return "ok"


@workflow(name="par_wf", retry_policy=FAST)
async def par_wf(ctx):
    # On the first run "a" finishes last; on the replay every branch is recorded,
    # so numbering by completion would mismatch. Numbers are given at call time.
    first = await ctx.execute_parallel((par_slow, ("a", 0.05), {}), (par_slow, ("b", 0.0), {}),
                                       (par_slow, ("c", 0.01), {}))
    tail = await ctx.execute_activity(par_fail_once)
    return [first, tail]


async def test_parallel_steps_numbered_at_call_time(client):
    calls.clear()
    run_id = await client.start_workflow("par_wf", wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "completed", run.error
    assert run.output_data == {"result": [["a", "b", "c"], "ok"]}
    assert calls == Counter(par_a=1, par_b=1, par_c=1, par_fail_once=2)
    steps = await client.get_workflow_steps(run_id)
    assert [(s.step, s.input["args"][0] if s.input["args"] else None) for s in steps] == [
        (1, "a"), (2, "b"), (3, "c"), (4, None)]


@activity(name="par_boom", retry_policy=NO_RETRY)
async def par_boom(msg):
    raise ValueError(msg)


@workflow(name="par_err_wf", retry_policy=NO_RETRY)
async def par_err_wf(ctx):
    await ctx.execute_parallel((par_slow, ("x", 0.02), {}), (par_boom, ("first",), {}),
                               (par_boom, ("second",), {}))


async def test_parallel_failure_waits_for_all_branches(client):
    calls.clear()
    run_id = await client.start_workflow("par_err_wf", wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "failed" and run.error == "ValueError: first"
    steps = {s.step: s.status for s in await client.get_workflow_steps(run_id)}
    assert steps == {1: "completed", 2: "failed", 3: "failed"}


@activity(name="flaky_act", retry_policy=RetryPolicy(max_retries=3, initial_delay=0.001,
                                                      jitter=False))
async def flaky_act():
    info = activity_info()
    calls["flaky_keys"] += 0
    flaky_seen.append((info.attempt, info.idempotency_key, info.step, info.name))
    if info.attempt < 3:
        raise OSError(f"attempt {info.attempt}")
    return "done"


flaky_seen: list = []


@workflow(name="flaky_wf", retry_policy=NO_RETRY)
async def flaky_wf(ctx):
    await ctx.execute_activity(replay_one, 0)
    return await ctx.execute_activity(flaky_act)


async def test_activity_retries_are_recorded_with_stable_key(client):
    flaky_seen.clear()
    run_id = await client.start_workflow("flaky_wf", wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "completed" and run.output_data == {"result": "done"}
    assert flaky_seen == [(n, f"{run_id}:2", 2, "flaky_act") for n in (1, 2, 3)]
    step = (await client.get_workflow_steps(run_id))[1]
    assert step.attempts == 3 and step.status == "completed" and step.duration >= 0
    failures = [e.event_data for e in await client.get_workflow_events(run_id)
                if e.event_type == "step_failed"]
    assert [(f["attempt"], f["error"], f["retry_in"]) for f in failures] == [
        (1, "OSError: attempt 1", 0.001), (2, "OSError: attempt 2", 0.002)]


def test_activity_info_outside_an_activity():
    with pytest.raises(RuntimeError, match="inside a running activity"):
        activity_info()


@activity(name="nd_a", retry_policy=NO_RETRY)
async def nd_a():
    return "a"


@activity(name="nd_b", retry_policy=NO_RETRY)
async def nd_b():
    return "b"


nd_version = {"v": 1}


@workflow(name="nd_wf", retry_policy=RetryPolicy(max_retries=5, initial_delay=0.001))
async def nd_wf(ctx):
    if nd_version["v"] == 1:
        await ctx.execute_activity(nd_a)
        nd_version["v"] = 2  # "deploy" new code before the retry replays
        raise RuntimeError("fail so the run replays")
    try:
        await ctx.execute_activity(nd_b)
    except Exception:
        pass  # hiding the error must not let the run go on
    return "should not complete"


async def test_non_determinism_fails_the_run_with_a_clear_error(client):
    nd_version["v"] = 1
    run_id = await client.start_workflow("nd_wf", wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "failed" and run.retry_count == 1
    assert run.error.startswith("NonDeterminismError: step 1 of run " + run_id)
    assert "'nd_a'" in run.error and "'nd_b'" in run.error


@activity(name="caught_fail", retry_policy=NO_RETRY)
async def caught_fail():
    calls["caught_fail"] += 1
    raise KeyError("missing")


gate: dict = {}


@activity(name="caught_wait", retry_policy=NO_RETRY)
async def caught_wait():
    calls["caught_wait"] += 1
    if calls["caught_wait"] == 1:
        await gate["never"].wait()  # the "process" dies here
    return "late"


@workflow(name="caught_wf", retry_policy=NO_RETRY)
async def caught_wf(ctx):
    try:
        await ctx.execute_activity(caught_fail)
    except KeyError as exc:
        seen = f"caught {type(exc).__name__}"
    return [seen, await ctx.execute_activity(caught_wait)]


async def test_recorded_failure_replays_as_the_same_error(db_url):
    """A failure the workflow caught is part of its history: on resume in the same
    attempt it is raised again from the record, not by running the activity."""
    calls.clear()
    gate["never"] = asyncio.Event()
    async with TinyWorkflowClient(db_url, lease_seconds=0.2) as first:
        run_id = await first.start_workflow("caught_wf")
        await first.start_worker()
        for _ in range(200):
            if calls["caught_wait"]:
                break
            await asyncio.sleep(0.01)
        await first.stop_worker(grace=0)  # the run is given back mid-activity
    await asyncio.sleep(0.3)
    async with TinyWorkflowClient(db_url) as second:
        assert await second.recover_workflows() == [run_id]
        run = await second.get_workflow_status(run_id)
        events = [e.event_type for e in await second.get_workflow_events(run_id)]
    assert run.status == "completed", run.error
    assert run.output_data == {"result": ["caught KeyError", "late"]}
    assert calls == Counter(caught_fail=1, caught_wait=2)
    assert "workflow_resumed" in events


async def test_execute_activity_by_registered_name(client):
    @workflow(name="by_name_wf")
    async def by_name_wf(ctx):
        return await ctx.execute_activity("replay_one", 41)

    run = await client.get_workflow_status(await client.start_workflow("by_name_wf", wait=True))
    assert run.output_data == {"result": 42}


# ---- timeouts ---------------------------------------------------------------------------


@activity(name="slow_async", timeout=0.05, retry_policy=NO_RETRY)
async def slow_async():
    await asyncio.sleep(5)


@activity(name="slow_sync", timeout=0.05, retry_policy=NO_RETRY)
def slow_sync():
    import time
    time.sleep(0.3)


@activity(name="raises_timeout", retry_policy=NO_RETRY)
async def raises_timeout():
    raise TimeoutError("the remote end gave up")


@workflow(name="timeouts_wf", retry_policy=NO_RETRY)
async def timeouts_wf(ctx):
    out = []
    for act in (slow_async, slow_sync, raises_timeout):
        try:
            await ctx.execute_activity(act)
        except TimeoutError as exc:
            out.append([type(exc).__name__, str(exc)])
    return out


async def test_activity_timeouts_are_clear_and_recorded(client):
    run_id = await client.start_workflow("timeouts_wf", wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "completed"
    (a_type, a_msg), (s_type, s_msg), (u_type, u_msg) = run.output_data["result"]
    assert a_type == s_type == "ActivityTimeoutError"
    assert f"activity 'slow_async' (step 1 of run {run_id}) timed out after 0.05 s" == a_msg
    assert "'slow_sync'" in s_msg
    assert (u_type, u_msg) == ("TimeoutError", "the remote end gave up")
    assert issubclass(ActivityTimeoutError, TimeoutError)
    steps = await client.get_workflow_steps(run_id)
    assert [s.status for s in steps] == ["failed"] * 3
    assert steps[0].error["type"] == "tinyworkflow.ActivityTimeoutError"


@workflow(name="slow_wf", timeout=0.1, retry_policy=RetryPolicy(max_retries=1,
                                                                 initial_delay=0.001))
async def slow_wf(ctx):
    await ctx.execute_activity(replay_one, 1)
    await asyncio.sleep(5)


async def test_workflow_timeout_fails_each_attempt(client):
    run_id = await client.start_workflow("slow_wf", wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "failed" and run.retry_count == 1
    assert run.error == (f"WorkflowTimeoutError: workflow 'slow_wf' (run {run_id}) "
                         "timed out after 0.1 s")
    assert issubclass(WorkflowTimeoutError, TimeoutError)
    events = [e.event_type for e in await client.get_workflow_events(run_id)]
    assert events.count("workflow_retrying") == 1 and events[-1] == "workflow_failed"


async def test_sync_activities_run_in_a_thread(client):
    threads = []

    @activity(name="where_am_i")
    def where_am_i():
        threads.append(threading.current_thread() is threading.main_thread())
        return None

    @workflow(name="thread_wf")
    async def thread_wf(ctx):
        await ctx.execute_parallel(where_am_i, where_am_i)

    await client.start_workflow("thread_wf", wait=True)
    assert threads == [False, False]


# ---- audit trail, status, listing -------------------------------------------------------


async def test_audit_trail_of_a_completed_run(client):
    run_id = await client.start_workflow("replay_wf", {"x": 5}, workflow_id="group-1", wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.workflow_id == "group-1" and run.workflow_name == "replay_wf"
    assert run.input_data == {"x": 5} and run.max_retries == 2
    assert run.created_at <= run.started_at <= run.completed_at
    assert run.created_at.tzinfo is timezone.utc and run.owner is None
    events = await client.get_workflow_events(run_id)
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert all(e.run_id == run_id and e.timestamp.tzinfo is timezone.utc for e in events)
    assert [e.event_type for e in events].count("workflow_completed") == 1
    assert events[2].event_data["name"] == "replay_one"
    assert len(await client.get_workflow_events(run_id, limit=2)) == 2
    assert await client.get_workflow_events("no-such-run") == []
    assert await client.get_workflow_status("no-such-run") is None


async def test_wait_true_returns_its_own_run_id(client):
    @workflow(name="echo_wf")
    async def echo_wf(ctx):
        await asyncio.sleep(0.01 * ctx.get_input("n"))
        return ctx.get_input("n")

    ids = await asyncio.gather(*(client.start_workflow("echo_wf", {"n": n}, wait=True)
                                 for n in (3, 1, 2)))
    assert len(set(ids)) == 3
    results = [(await client.get_workflow_status(i)).output_data for i in ids]
    assert results == [{"result": 3}, {"result": 1}, {"result": 2}]


async def test_list_workflow_executions(client):
    @workflow(name="list_ok")
    async def list_ok(ctx):
        return 1

    @workflow(name="list_bad", retry_policy=NO_RETRY)
    async def list_bad(ctx):
        raise ValueError("no")

    done = [await client.start_workflow("list_ok", wait=True) for _ in range(3)]
    bad = await client.start_workflow("list_bad", wait=True)
    pending = await client.start_workflow("list_ok")
    everything = await client.list_workflow_executions()
    assert [r.run_id for r in everything] == [pending, bad, *reversed(done)]
    assert {r.run_id for r in await client.list_workflow_executions(
        status=WorkflowStatus.COMPLETED)} == set(done)
    assert [r.run_id for r in await client.list_workflow_executions(status="failed")] == [bad]
    assert [r.run_id for r in await client.list_workflow_executions(
        workflow_name="list_ok", status="pending")] == [pending]
    page = await client.list_workflow_executions(limit=2, offset=1)
    assert [r.run_id for r in page] == [bad, done[2]]
    with pytest.raises(ValueError, match="unknown status 'done'"):
        await client.list_workflow_executions(status="done")
    with pytest.raises(ValueError, match="limit"):
        await client.list_workflow_executions(limit=-1)


def test_registered_names(client):
    names = client.list_registered_workflows()
    assert "replay_wf" in names and names == sorted(names)
    assert "replay_one" in client.list_registered_activities()


# ---- cancel, worker, recovery, cleanup --------------------------------------------------


async def test_cancel(client):
    @workflow(name="cancel_pending")
    async def cancel_pending(ctx):
        return 1

    run_id = await client.start_workflow("cancel_pending")
    assert await client.cancel_workflow(run_id) is True
    assert (await client.get_workflow_status(run_id)).status == "cancelled"
    with pytest.raises(RunStateError, match="already finished \\(cancelled\\)"):
        await client.cancel_workflow(run_id)
    assert await client.recover_workflows() == []  # a cancelled run never runs
    done = await client.start_workflow("cancel_pending", wait=True)
    with pytest.raises(RunStateError, match="already finished \\(completed\\)") as err:
        await client.cancel_workflow(done)
    assert isinstance(err.value, ValueError) and err.value.status == "completed"
    assert (await client.get_workflow_status(done)).status == "completed"
    with pytest.raises(RunNotFoundError, match="no run with id 'nope'"):
        await client.cancel_workflow("nope")
    assert isinstance(RunNotFoundError("x"), LookupError)
    types = [e.event_type for e in await client.get_workflow_events(run_id)]
    assert types == ["workflow_created", "workflow_cancelled"]


async def test_cancel_stops_a_run_executing_here(db_url):
    started, released = asyncio.Event(), asyncio.Event()

    @activity(name="blocker")
    async def blocker():
        started.set()
        await released.wait()
        calls["blocker_finished"] += 1

    @workflow(name="cancel_running")
    async def cancel_running(ctx):
        await ctx.execute_activity(blocker)
        await ctx.execute_activity(replay_one, 1)

    calls.clear()
    async with TinyWorkflowClient(db_url, auto_start_worker=True) as c:
        run_id = await c.start_workflow("cancel_running")
        await asyncio.wait_for(started.wait(), 5)
        assert await c.cancel_workflow(run_id)
        released.set()
        await asyncio.sleep(0.05)
        run = await c.get_workflow_status(run_id)
        assert run.status == "cancelled" and run.output_data is None
        assert await c.get_workflow_steps(run_id) == []
    assert calls["blocker_finished"] == 0 and calls["replay_one"] == 0


async def test_cancel_during_wait_true(client):
    @workflow(name="cancel_waiting")
    async def cancel_waiting(ctx):
        await asyncio.sleep(10)

    task = asyncio.ensure_future(client.start_workflow("cancel_waiting", wait=True))
    for _ in range(100):
        runs = await client.list_workflow_executions(workflow_name="cancel_waiting")
        if runs and runs[0].status == "running":
            break
        await asyncio.sleep(0.01)
    assert await client.cancel_workflow(runs[0].run_id)
    assert await asyncio.wait_for(task, 5) == runs[0].run_id


async def test_worker_executes_started_runs(db_url):
    async with TinyWorkflowClient(db_url, auto_start_worker=True) as c:
        ids = [await c.start_workflow("echo_worker", {"n": n}) for n in range(5)]
        for _ in range(300):
            runs = [await c.get_workflow_status(i) for i in ids]
            if all(r.status == "completed" for r in runs):
                break
            await asyncio.sleep(0.01)
        assert [r.output_data for r in runs] == [{"result": n} for n in range(5)]


@workflow(name="echo_worker")
async def _echo_worker(ctx):
    return ctx.get_input("n")


async def test_recover_executes_due_runs_once(client):
    ids = [await client.start_workflow("echo_worker", {"n": n}) for n in range(3)]
    assert sorted(await client.recover_workflows()) == sorted(ids)
    assert await client.recover_workflows() == []
    for i in ids:
        events = [e.event_type for e in await client.get_workflow_events(i)]
        assert events == ["workflow_created", "workflow_started", "workflow_completed"]


async def test_cleanup_old_workflows(client, db_url):
    old = await client.start_workflow("echo_worker", {"n": 1}, wait=True)
    waiting = await client.start_workflow("echo_worker", {"n": 2})
    assert await client.cleanup_old_workflows(days=1) == 0
    assert await client.cleanup_old_workflows(days=0) == 1
    assert await client.get_workflow_status(old) is None
    assert await client.get_workflow_events(old) == []
    assert await client.get_workflow_status(waiting) is not None
    with pytest.raises(ValueError, match="days"):
        await client.cleanup_old_workflows(days=-1)


# ---- bad input --------------------------------------------------------------------------


async def test_unknown_workflow_stores_nothing(client, db_url):
    await client.list_workflow_executions()
    before = await dbutil.snapshot(db_url)
    with pytest.raises(ValueError, match="no workflow named 'nope' is registered; "
                                         "registered workflows: .*replay_wf") as err:
        await client.start_workflow("nope", {"a": 1})
    assert isinstance(err.value, tinyworkflow.WorkflowNotFoundError)
    assert await dbutil.snapshot(db_url) == before


class Opaque:
    pass


async def test_unserialisable_input_stores_nothing(client, db_url):
    await client.list_workflow_executions()
    before = await dbutil.snapshot(db_url)
    for bad in ({"when": Opaque()}, {"x": float("nan")}, {1, 2}):
        with pytest.raises(TypeError, match="the input of workflow 'replay_wf' is not "
                                            "JSON-serialisable"):
            await client.start_workflow("replay_wf", bad)
    with pytest.raises(SerializationError, match="Opaque"):
        await client.start_workflow("replay_wf", {"when": Opaque()})
    assert await dbutil.snapshot(db_url) == before


@activity(name="returns_opaque", retry_policy=NO_RETRY)
async def returns_opaque():
    return Opaque()


@workflow(name="bad_activity_result_wf", retry_policy=RetryPolicy(max_retries=3))
async def bad_activity_result_wf(ctx):
    return await ctx.execute_activity(returns_opaque)


@workflow(name="bad_result_wf", retry_policy=RetryPolicy(max_retries=3))
async def bad_result_wf(ctx):
    return Opaque()


async def test_unserialisable_results_fail_the_run(client):
    run = await client.get_workflow_status(
        await client.start_workflow("bad_activity_result_wf", wait=True))
    assert run.status == "failed" and run.retry_count == 0  # not retried: it cannot succeed
    assert run.error.startswith("SerializationError: the result of activity 'returns_opaque' "
                                "(step 1 of run")
    assert "Opaque" in run.error
    run = await client.get_workflow_status(await client.start_workflow("bad_result_wf", wait=True))
    assert run.status == "failed" and run.retry_count == 0
    assert "the result of workflow 'bad_result_wf' is not JSON-serialisable" in run.error


@pytest.mark.parametrize("url", ["", "redis://localhost", "sqlite:/x.db", "sqlite://x.db",
                                 "postgresql", "sqlite:///x.db?journal=off",
                                 "sqlite:///x.db?synchronous=maybe"])
def test_invalid_database_url(url):
    with pytest.raises(ValueError) as err:
        TinyWorkflowClient(url or None) if url else tinyworkflow._internals.parse_url(url)
    assert "sqlite" in str(err.value).lower()


def test_accepted_urls():
    parse = tinyworkflow._internals.parse_url
    assert parse("sqlite+aiosqlite:///data/app.db") == ("sqlite", "data/app.db", {})
    assert parse("sqlite:////var/app.db") == ("sqlite", "/var/app.db", {})
    assert parse(":memory:")[1] == parse("sqlite://")[1] == ":memory:"
    assert parse("sqlite+aiosqlite:///:memory:")[1] == ":memory:"
    assert parse("sqlite:///a.db?synchronous=normal&timeout=2")[2] == {
        "synchronous": "normal", "timeout": "2"}
    for url in ("postgresql+asyncpg://u:p@h/db", "postgres://h/db", "mysql+asyncmy://h/db"):
        assert parse(url)[0] in ("postgresql", "mysql")


async def test_in_memory_database():
    async with TinyWorkflowClient(":memory:") as c:
        run = await c.get_workflow_status(await c.start_workflow("echo_worker", {"n": 7},
                                                                 wait=True))
        assert run.output_data == {"result": 7}


def test_sync_workflow_is_rejected_at_decoration():
    with pytest.raises(TypeError, match="workflow 'sync_wf' must be defined with 'async def'"):
        @workflow(name="sync_wf")
        def sync_wf(ctx):
            return 1
    assert "sync_wf" not in tinyworkflow._internals.workflows


def test_bad_decorator_options():
    with pytest.raises(TypeError, match="RetryPolicy"):
        activity(name="x1", retry_policy={"max_retries": 3})(lambda: 1)
    with pytest.raises(ValueError, match="timeout"):
        @workflow(name="x2", timeout=0)
        async def x2(ctx):
            return 1
    with pytest.raises(ValueError, match="already registered"):
        @workflow(name="replay_wf")
        async def another(ctx):
            return 1
    with pytest.raises(ValueError, match="lease"):
        TinyWorkflowClient(":memory:", lease_seconds=0)


async def test_bad_parallel_call_fails_the_run(client):
    @workflow(name="bad_parallel", retry_policy=NO_RETRY)
    async def bad_parallel(ctx):
        return await ctx.execute_parallel((replay_one, 5, {}))

    run = await client.get_workflow_status(await client.start_workflow("bad_parallel", wait=True))
    assert run.status == "failed" and "(fetch_user, (user_id,), {})" in run.error


def test_bare_decorators_and_defaults():
    @activity
    def bare_act():
        return 1

    @workflow
    async def bare_wf(ctx):
        return 1

    assert bare_act() == 1  # still a plain function
    assert tinyworkflow._internals.activities["bare_act"].retry_policy == RetryPolicy()
    assert tinyworkflow._internals.workflows["bare_wf"].retry_policy.max_retries == 3
    assert json.loads(json.dumps(RetryPolicy().__dict__))["jitter_factor"] == 0.1


async def test_writes_never_block_the_event_loop_on_another_writer(sqlite_url):
    """While another connection holds SQLite's write lock, a step's write waits on
    aiosqlite's thread, not on the event loop; it goes through once the lock is free."""
    path = dbutil.sqlite_path(sqlite_url)
    async with TinyWorkflowClient(sqlite_url) as c:
        await c.list_workflow_executions()  # schema in place
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick_task = asyncio.ensure_future(ticker())
        run_task = asyncio.ensure_future(c.start_workflow("echo_worker", {"n": 9}, wait=True))
        await asyncio.sleep(0.3)
        assert not run_task.done() and ticks >= 15  # the loop kept running
        blocker.execute("COMMIT")
        blocker.close()
        run = await c.get_workflow_status(await asyncio.wait_for(run_task, 10))
        tick_task.cancel()
        assert run.status == "completed" and run.output_data == {"result": 9}
