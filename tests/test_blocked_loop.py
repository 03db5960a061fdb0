"""Issue 20, item 5: an ``async def`` activity (or workflow code) that blocks the event
loop longer than the lease. A second worker process waits for the lease to expire; the
worker whose loop is blocked keeps it (its watchdog thread renews it), so the step runs
once and the run completes there, and the worker logs a warning that names what blocks.
On every backend."""

import asyncio
import collections
import contextlib
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

import blocking_workflows  # noqa: F401  (registers the workflows here too)
from dbutil import child_env, sqlite_only, until
from tinyworkflow import TinyWorkflowClient, activity, workflow

TESTS = os.path.dirname(os.path.abspath(__file__))
LEASE = 1.2


@pytest.fixture
def second_worker(db_url, tmp_path):
    """Another worker process on the same database, polling every 0.1 s: it takes over
    any run whose lease expires."""
    out = tmp_path / "worker.out"
    with open(out, "wb") as stdout, open(tmp_path / "worker.err", "wb") as stderr:
        proc = subprocess.Popen([sys.executable, os.path.join(TESTS, "blocking_workflows.py"),
                                 db_url, str(LEASE)], cwd=tmp_path, env=child_env(),
                                stdout=stdout, stderr=stderr)
    try:
        deadline = time.monotonic() + 30
        while "worker started" not in out.read_text():
            assert proc.poll() is None, (tmp_path / "worker.err").read_text()
            assert time.monotonic() < deadline, "the second worker did not start"
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)


def warnings(caplog) -> list:
    return [r.getMessage() for r in caplog.records
            if r.name == "tinyworkflow" and r.levelno == logging.WARNING]


async def test_a_blocking_activity_keeps_its_lease_and_runs_once(db_url, tmp_path,
                                                                   second_worker, caplog):
    log = tmp_path / "executions.log"
    caplog.set_level(logging.WARNING, logger="tinyworkflow")
    async with TinyWorkflowClient(db_url, lease_seconds=LEASE) as client:
        # Executed here, on this loop, which the activity blocks for three leases.
        # (Without the watchdog the two workers take it from each other for ever.)
        run_id = await asyncio.wait_for(client.start_workflow(
            "blocking_activity", {"log": str(log), "seconds": 3 * LEASE}, wait=True), 60)
        run = await client.get_workflow_status(run_id)
        events = [e.event_type for e in await client.get_workflow_events(run_id)]
    assert log.read_text().split() == [str(os.getpid())]  # once, here
    assert (run.status.value, run.output_data) == ("completed", {"result": os.getpid()})
    assert "workflow_released" not in events and second_worker.poll() is None
    blocked = [m for m in warnings(caplog) if "event loop has been blocked" in m]
    assert blocked, warnings(caplog)
    assert "in activity 'blocking_sleeper', at " in blocked[0]
    assert "blocking_workflows.py:" in blocked[0] and "in sleeper" in blocked[0]
    assert any("the event loop runs again" in m for m in warnings(caplog))


async def test_workflow_code_that_blocks_is_named_too(sqlite_url, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="tinyworkflow")
    async with TinyWorkflowClient(sqlite_url, lease_seconds=0.6) as client:
        run_id = await client.start_workflow("blocking_workflow", {"seconds": 1.0}, wait=True)
        assert (await client.get_workflow_status(run_id)).output_data == {"result": "done"}
    blocked = [m for m in warnings(caplog) if "event loop has been blocked" in m]
    assert blocked and "in workflow 'blocking_workflow', at " in blocked[0], warnings(caplog)


async def test_an_in_memory_database_only_warns(caplog):
    caplog.set_level(logging.WARNING, logger="tinyworkflow")
    async with TinyWorkflowClient("sqlite+aiosqlite:///:memory:", lease_seconds=0.6) as client:
        run_id = await client.start_workflow("blocking_workflow", {"seconds": 1.0}, wait=True)
        assert (await client.get_workflow_status(run_id)).output_data == {"result": "done"}
    assert any("event loop has been blocked" in m for m in warnings(caplog))
    assert not any("could not" in m for m in warnings(caplog))


async def test_a_run_cancelled_while_its_step_blocks_keeps_its_lease_until_the_step_ends(
        db_url, tmp_path, second_worker):
    """The cancellation comes from another client while the loop is blocked; the run's
    compensation, which the second worker would run once the lease expired, must not
    start before the blocked step has ended."""
    log, run_id = tmp_path / "saga.log", "blocked-saga"

    def cancel_soon():
        async def cancel():
            async with TinyWorkflowClient(db_url) as other:
                await other.cancel_workflow(run_id)
        time.sleep(0.5)
        asyncio.run(cancel())

    canceller = threading.Thread(target=cancel_soon)
    canceller.start()
    try:
        async with TinyWorkflowClient(db_url, lease_seconds=LEASE) as client:
            with contextlib.suppress(Exception):  # cancelled: the wait says so
                await asyncio.wait_for(client.start_workflow(
                    "blocking_saga", {"log": str(log), "seconds": 3 * LEASE}, run_id=run_id,
                    wait=True), 60)

            async def compensated():
                return (await client.get_workflow_status(run_id)).status.value in (
                    "compensated", "cancelled") and "compensated" in log.read_text()
            await until(compensated, 30, "the compensation")
    finally:
        canceller.join()
    assert log.read_text().split("\n")[:-1] == [
        "booked", "paid", "step started", "step ended", "compensated"]


@sqlite_only
async def test_the_watchdog_finds_a_relative_database_after_a_chdir(tmp_path, second_worker,
                                                                    monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "executions.log"
    async with TinyWorkflowClient("sqlite+aiosqlite:///tw.db", lease_seconds=LEASE) as client:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        run_id = await asyncio.wait_for(client.start_workflow(
            "blocking_activity", {"log": str(log), "seconds": 3 * LEASE}, wait=True), 60)
        assert (await client.get_workflow_status(run_id)).status.value == "completed"
    assert log.read_text().split() == [str(os.getpid())]
    assert not (elsewhere / "tw.db").exists()


class SlowHandler(logging.Handler):
    """A log handler that takes its time over the application's "progress" message (a
    full pipe, a slow log server), holding its lock meanwhile."""

    def emit(self, record):
        if record.getMessage() == "progress":
            time.sleep(3 * LEASE)


async def test_a_log_handler_that_blocks_the_loop_does_not_stop_the_renewals(
        db_url, tmp_path, second_worker):
    log, handler = tmp_path / "executions.log", SlowHandler()
    logging.getLogger().addHandler(handler)
    try:
        async with TinyWorkflowClient(db_url, lease_seconds=LEASE) as client:
            run_id = await asyncio.wait_for(client.start_workflow(
                "blocking_log_handler", {"log": str(log)}, wait=True), 60)
            assert (await client.get_workflow_status(run_id)).status.value == "completed"
    finally:
        logging.getLogger().removeHandler(handler)
    assert log.read_text().split() == [str(os.getpid())]


async def test_without_a_watchdog_thread_runs_still_execute(sqlite_url, monkeypatch, caplog):
    """A process that cannot start one more thread executes its runs all the same (the
    heartbeats keep the leases while the loop runs), and says so once."""
    start = threading.Thread.start

    def refuse_the_watchdog(thread):
        if thread.name.startswith("tinyworkflow watchdog"):
            raise RuntimeError("can't start new thread")
        start(thread)
    monkeypatch.setattr(threading.Thread, "start", refuse_the_watchdog)
    caplog.set_level(logging.WARNING, logger="tinyworkflow")
    async with TinyWorkflowClient(sqlite_url, lease_seconds=LEASE) as client:
        for _ in range(2):
            run_id = await asyncio.wait_for(client.start_workflow(
                "blocking_workflow", {"seconds": 0}, wait=True), 30)
            assert (await client.get_workflow_status(run_id)).status.value == "completed"
    assert sum("no watchdog thread" in m for m in warnings(caplog)) == 1


GATE: dict = {}  # test id -> the asyncio.Event the activity waits for
RUNNING = collections.Counter()  # test id -> executions of the activity at this moment
MOST = collections.Counter()  # test id -> the most at any moment


@activity(name="blocked_loop_gated")
async def gated(token: str) -> str:
    RUNNING[token] += 1
    MOST[token] = max(MOST[token], RUNNING[token])
    try:
        await GATE[token].wait()
    finally:
        RUNNING[token] -= 1
    return token


@workflow(name="blocked_loop_gated_flow")
async def gated_flow(ctx):
    return await ctx.execute_activity(gated, ctx.get_input("token"))


def owner(path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT owner FROM tinyworkflow_runs").fetchone()[0]


async def test_a_run_claimed_again_by_the_engine_executing_it_never_runs_twice_at_once(
        sqlite_url, tmp_path):
    """The watchdog could not keep the lease (say a transaction of this very process
    held the database) and this process's own worker claims the run again: the old
    execution stops before the new one starts."""
    token, path = str(tmp_path), tmp_path / "tw.db"
    GATE[token] = asyncio.Event()
    async with TinyWorkflowClient(sqlite_url) as client:
        first = asyncio.ensure_future(client.start_workflow(
            "blocked_loop_gated_flow", {"token": token}, wait=True))
        await until(lambda: RUNNING[token] == 1, 10, "the first execution")
        was = owner(path)
        with contextlib.closing(sqlite3.connect(path)) as db, db:  # its lease ran out
            db.execute("UPDATE tinyworkflow_runs SET lease_expires_at = 0")
        again = asyncio.ensure_future(client.recover_workflows())
        await until(lambda: owner(path) != was, 10, "the second claim")
        await asyncio.sleep(0.3)  # the new execution reaches the activity, if it may
        GATE[token].set()
        run_id = await asyncio.wait_for(first, 30)
        await asyncio.wait_for(again, 30)
        assert (await client.get_workflow_status(run_id)).output_data == {"result": token}
    assert MOST[token] == 1
