"""Robustness of the SQLite store, the client and the worker under cancellation,
contention and failure (each test once reproduced a defect found in review).
Every test cleans up its connections itself, so a failure cannot hang pytest's exit
on aiosqlite's non-daemon thread.

The tests of SQLite's locks and files stay on SQLite; those of the client and the
worker (first use, a stale heartbeat, cancelling a backoff) run on every backend."""

import asyncio
import contextlib
import sqlite3
import threading
import time

import aiosqlite
import pytest

import dbutil
from tinyworkflow import RetryPolicy, TinyWorkflowClient, TinyWorkflowError, activity, workflow
from tinyworkflow import _internals

_calls: dict = {}


@workflow(name="review_noop")
async def review_noop(ctx):
    return 1


@activity(name="review_always_fails",
          retry_policy=RetryPolicy(max_retries=0))
async def review_always_fails():
    raise RuntimeError("boom")


@workflow(name="review_retry_backoff",
          retry_policy=RetryPolicy(max_retries=3, initial_delay=5.0, jitter=False))
async def review_retry_backoff(ctx):
    return await ctx.execute_activity(review_always_fails)


@activity(name="review_slow")
async def review_slow():
    _calls["slow"] = _calls.get("slow", 0) + 1
    await asyncio.sleep(1.0)
    return "ok"


@workflow(name="review_slow_wf")
async def review_slow_wf(ctx):
    return await ctx.execute_activity(review_slow)


def _release_later(conn: sqlite3.Connection, seconds: float) -> threading.Thread:
    def release():
        time.sleep(seconds)
        conn.execute("COMMIT")
    thread = threading.Thread(target=release)
    thread.start()
    return thread


async def test_cancelled_claim_leaves_no_transaction_open(tmp_path):
    """A claim cancelled while it waits for another writer's lock leaves the connection
    out of any transaction: later writes work and other processes are not locked out."""
    path = tmp_path / "tw.db"
    async with TinyWorkflowClient(f"sqlite+aiosqlite:///{path}") as client:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.recover_workflows(), 0.2)
        other.execute("COMMIT")
        await asyncio.sleep(0.3)
        try:
            assert not _internals.store(client).driver.db.in_transaction
            await client.start_workflow("review_noop")
        finally:
            other.close()


async def test_worker_survives_a_transient_database_error(tmp_path):
    """A 'database is locked' from a claim is logged and retried; the worker keeps
    executing runs, and close() still closes the store."""
    path = tmp_path / "tw.db"
    client = TinyWorkflowClient(f"sqlite+aiosqlite:///{path}?timeout=0.05",
                                auto_start_worker=True, poll_interval=0.05)
    await client.initialize()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        await asyncio.sleep(0.3)
        other.execute("COMMIT")
        run_id = await client.start_workflow("review_noop")
        for _ in range(40):
            await asyncio.sleep(0.05)
            if (await client.get_workflow_status(run_id)).status == "completed":
                break
        assert (await client.get_workflow_status(run_id)).status == "completed"
        await client.close()  # must not raise the worker's old error
    finally:
        other.close()
        if _internals.store(client).driver.connection is not None:
            await _internals.store(client).close()


async def test_failed_connect_does_not_leak_the_connection_thread(tmp_path):
    """When connecting fails (not a database), the connection and its thread are closed,
    so the process can exit."""
    path = tmp_path / "not-a-db.db"
    path.write_bytes(b"this is not a sqlite database" * 100)
    client = TinyWorkflowClient(f"sqlite+aiosqlite:///{path}")
    with pytest.raises(TinyWorkflowError, match="cannot open the database .*not-a-db.db") as err:
        await client.initialize()
    assert isinstance(err.value.__cause__, sqlite3.DatabaseError)
    leaked = _internals.store(client).driver.connection
    try:
        assert leaked is None, "the aiosqlite connection (and its thread) was left open"
    finally:
        if leaked is not None:
            await leaked.close()


async def test_first_connect_waits_for_another_writer(tmp_path):
    """Opening a database another connection is writing waits for it (up to the
    timeout) instead of failing: several processes may start at once on a new file."""
    path = tmp_path / "tw.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE t (x)")
    other.execute("BEGIN IMMEDIATE")
    releaser = _release_later(other, 0.3)
    client = TinyWorkflowClient(f"sqlite+aiosqlite:///{path}")
    try:
        await client.initialize()
    finally:
        releaser.join()
        other.close()
        if _internals.store(client).driver.connection is not None:
            await _internals.store(client).close()


async def test_concurrent_first_use_initialises_once(sqlite_url, monkeypatch):
    """Concurrent first calls on a client that is not open yet open one connection."""
    opened = []
    real_connect = aiosqlite.connect

    def tracking_connect(*args, **kwargs):
        conn = real_connect(*args, **kwargs)
        opened.append(conn)
        return conn

    monkeypatch.setattr(aiosqlite, "connect", tracking_connect)
    client = TinyWorkflowClient(sqlite_url)
    try:
        await asyncio.gather(client.get_workflow_status("a"), client.get_workflow_status("b"))
        assert len(opened) == 1
    finally:
        await client.close()
        for conn in opened:
            with contextlib.suppress(Exception):  # closed by the client already, most likely
                await conn.close()


async def test_concurrent_first_use_connects_the_store_once(db_url):
    """Concurrent first calls on a client that is not open yet connect (and migrate) once,
    whatever the backend: one connection, or one pool."""
    client = TinyWorkflowClient(db_url)
    store, calls = _internals.store(client), []
    real_connect, real_migrate = store.connect, store.migrate

    async def connect():
        calls.append("connect")
        await asyncio.sleep(0.05)  # the other callers arrive meanwhile
        await real_connect()

    async def migrate():
        calls.append("migrate")
        await real_migrate()

    store.connect, store.migrate = connect, migrate
    try:
        statuses = await asyncio.gather(*(client.get_workflow_status(f"r{i}") for i in range(5)))
        assert statuses == [None] * 5 and calls == ["connect", "migrate"]
    finally:
        await client.close()


async def test_inline_batch_never_blocks_the_loop_after_a_cancelled_thread_call(tmp_path):
    """A thread call whose caller was cancelled keeps the connection until it has ended,
    so a following write never runs beside it or waits for a lock on the event loop."""
    path = tmp_path / "tw.db"
    async with TinyWorkflowClient(f"sqlite+aiosqlite:///{path}") as client:
        store = _internals.store(client)
        ins = store.sql("INSERT INTO {p}events (run_id, event_type, event_data, timestamp) "
                        "VALUES (?, ?, ?, ?)")
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        first = asyncio.ensure_future(store.batch([(ins, ("A", "a", "{}", 1.0))]))
        await asyncio.sleep(0.1)
        first.cancel()
        await asyncio.sleep(0)
        releaser = _release_later(other, 1.0)
        try:
            started = time.perf_counter()
            second = asyncio.ensure_future(store.batch([(ins, ("B", "b", "{}", 2.0))]))
            await asyncio.sleep(0.05)
            blocked = time.perf_counter() - started
            await second
            assert blocked < 0.5, f"the event loop was blocked for {blocked:.2f} s"
        finally:
            releaser.join()
            other.close()


async def test_stale_heartbeat_does_not_cancel_the_new_execution(db_url):
    """When this engine takes over a run whose lease it lost, the old execution's
    heartbeat stops only the old execution, never the new one."""
    _calls.clear()
    async with TinyWorkflowClient(db_url, lease_seconds=0.3, poll_interval=0.05) as client:
        store, real = _internals.store(client), _internals.store(client).renew_lease
        t0 = time.monotonic()

        async def flaky_renew(run_id, owner, now, until, status):
            if owner.endswith(":1") and time.monotonic() - t0 < 0.5:
                raise dbutil.transient_error(db_url)
            return await real(run_id, owner, now, until, status)

        store.renew_lease = flaky_renew
        # The watchdog renews from a thread, through a store of its own, if the event
        # loop is blocked a moment (a loaded machine): not the heartbeat under test.
        store.twin = lambda: None
        run_id = await client.start_workflow("review_slow_wf")
        await client.start_worker()
        for _ in range(60):
            await asyncio.sleep(0.1)
            if (await client.get_workflow_status(run_id)).status == "completed":
                break
        resumed = [e for e in await client.get_workflow_events(run_id)
                   if e.event_type == "workflow_resumed"]
        assert len(resumed) == 1 and _calls["slow"] == 2, (len(resumed), _calls)


def test_sqlite_timeout_option_must_be_finite():
    """?timeout= must be a finite number: refused at the boundary with a ValueError."""
    for bad in ("nan", "inf"):
        with pytest.raises(ValueError):
            TinyWorkflowClient(f"sqlite+aiosqlite:///x.db?timeout={bad}")


async def test_cancel_during_workflow_retry_backoff_returns_promptly(client):
    """Cancelling a wait=True run during its workflow-retry backoff returns at once."""
    async def cancel_when_retrying():
        while True:
            await asyncio.sleep(0.05)
            runs = await client.list_workflow_executions(workflow_name="review_retry_backoff")
            if runs and runs[0].status == "retrying":
                return await client.cancel_workflow(runs[0].run_id)

    canceller = asyncio.ensure_future(cancel_when_retrying())
    started = time.monotonic()
    run_id = await client.start_workflow("review_retry_backoff", wait=True)
    assert await canceller
    assert (await client.get_workflow_status(run_id)).status == "cancelled"
    assert time.monotonic() - started < 2.0
