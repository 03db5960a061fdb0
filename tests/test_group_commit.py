"""Group commit under failure: a failing group, a lock held too long, a closed store
(each test once reproduced a defect found in review)."""

import asyncio
import sqlite3

import pytest

import tinyworkflow
from tinyworkflow import RetryPolicy, TinyWorkflowClient, workflow

NO_RETRY = RetryPolicy(max_retries=0)


@workflow(name="rv2_gc_noop", retry_policy=NO_RETRY)
async def rv2_gc_noop(ctx):
    return 1


async def _settle(*tasks):
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_failed_group_does_not_strand_later_writes():
    """A group that fails on the thread gets its error; writes queued meanwhile and
    later ones still commit."""
    store = tinyworkflow._internals.SQLiteStore(":memory:", {}, "rv2_")  # no WAL: groups on the thread
    await store.connect()
    try:
        await store.migrate()
        insert = store.sql("INSERT INTO {p}meta (name, value) VALUES (?, ?)")
        bad = asyncio.ensure_future(store.batch([(insert, ("schema_version", "dup"))]))
        while not store.lock.locked():  # the flusher is on the thread with the bad batch
            await asyncio.sleep(0)
        good = asyncio.ensure_future(store.batch([(insert, ("k1", "v"))]))
        with pytest.raises(sqlite3.IntegrityError):
            await bad
        done, _ = await asyncio.wait({good}, timeout=2)
        assert done, "a good write queued behind a failed group never resolves"
        assert good.result() is True
    finally:
        if store.flusher is not None and store.flusher.done():
            store.flusher.exception()  # retrieved: not the subject of this test
        await store.close()  # resolves whatever is still queued


async def test_a_lock_held_past_the_timeout_fails_only_that_write(tmp_path):
    """Another connection holds the write lock longer than ?timeout=: the write waiting
    for it fails, the one queued meanwhile commits once the lock is gone."""
    path = tmp_path / "tw.db"
    client = TinyWorkflowClient(f"sqlite+aiosqlite:///{path}?timeout=0.3")
    await client.initialize()
    other = sqlite3.connect(path, isolation_level=None)
    tasks = []
    try:
        other.execute("BEGIN IMMEDIATE")
        first = asyncio.ensure_future(client.start_workflow("rv2_gc_noop"))
        await asyncio.sleep(0.1)
        second = asyncio.ensure_future(client.start_workflow("rv2_gc_noop"))
        tasks = [first, second]
        await asyncio.sleep(0.5)
        other.execute("ROLLBACK")  # the lock is free again
        await asyncio.wait({first}, timeout=2)
        done, _ = await asyncio.wait({second}, timeout=2)
        assert done, "start_workflow queued while the flusher failed hangs forever"
    finally:
        other.close()
        await _settle(*tasks)
        await client.close()


async def test_a_write_after_close_fails_at_once(tmp_path):
    """A write after close() fails at once with a clear error instead of hanging."""
    store = tinyworkflow._internals.SQLiteStore(str(tmp_path / "tw.db"), {}, "rv2_")
    await store.connect()
    await store.migrate()
    await store.close()
    op = [(store.sql("DELETE FROM {p}meta WHERE name = ?"), ("x",))]
    writes = [asyncio.ensure_future(store.batch(op)) for _ in range(2)]  # same turn: grouped
    done, pending = await asyncio.wait(writes, timeout=2)
    await _settle(*pending)
    assert not pending, "writes issued after close() hang instead of failing"
