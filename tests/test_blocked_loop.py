"""Issue 20, item 5: an ``async def`` activity (or workflow code) that blocks the event
loop longer than the lease. A second worker process waits for the lease to expire; the
worker whose loop is blocked keeps it (its watchdog thread renews it), so the step runs
once and the run completes there, and the worker logs a warning that names what blocks.
On every backend."""

import asyncio
import logging
import os
import subprocess
import sys
import time

import pytest

import blocking_workflows  # noqa: F401  (registers the workflows here too)
from dbutil import child_env
from tinyworkflow import TinyWorkflowClient

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
