"""Issue 20, item 10: the usage guide's command-line flow against a separate worker. A
worker process serves the workflows; the command line (and the library) in another
process has not imported them."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import dbutil
import tinyworkflow
from tinyworkflow import TinyWorkflowClient

ROOT = Path(tinyworkflow.__file__).resolve().parent

WORKER = '''
import asyncio
import sys

from tinyworkflow import RetryPolicy, TinyWorkflowClient, activity, workflow


@activity(name="remote_greet")
async def greet(name):
    return "hello " + name


@activity(name="remote_boom", retry_policy=RetryPolicy(max_retries=0))
async def boom():
    raise RuntimeError("boom")


@workflow(name="remote_etl")
async def etl(ctx):
    return {"greeting": await ctx.execute_activity(greet, ctx.get_input("name"))}


@workflow(name="remote_failing", retry_policy=RetryPolicy(max_retries=0))
async def failing(ctx):
    await ctx.execute_activity(greet, "x")
    await ctx.execute_activity(boom)
'''


@pytest.fixture
async def served(db_url):
    """A worker process serving remote_etl and remote_failing, live."""
    worker = dbutil.start_worker_script(WORKER, db_url, lease=30)
    try:
        async with TinyWorkflowClient(db_url) as client:
            await dbutil.until_served(client, "remote_failing")
        yield db_url
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def cli(db_url: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TINYWORKFLOW_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "tinyworkflow", "--db", db_url, *argv],
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_workflows_lists_what_the_live_workers_serve(served):
    done = cli(served, "workflows")
    assert done.returncode == 0, done.stderr
    lines = [line.strip() for line in done.stdout.splitlines()]
    assert any(line.startswith("remote_etl") and "served by 1 worker" in line
               for line in lines), done.stdout
    assert not any(line.startswith("remote_etl") and "here" in line for line in lines)
    data = json.loads(cli(served, "workflows", "--json").stdout)
    assert data["served"]["remote_etl"] == 1 and "remote_etl" not in data["workflows"]


def test_start_wait_runs_on_the_worker_and_streams_its_steps(served):
    done = cli(served, "start", "remote_etl", "--input", '{"name": "ada"}', "--wait")
    assert done.returncode == 0, done.stderr
    assert "status: completed" in done.stdout
    assert 'result: {"greeting": "hello ada"}' in done.stdout
    assert "step 1 remote_greet: completed" in done.stderr


def test_start_wait_exits_1_when_the_run_fails_on_the_worker(served):
    done = cli(served, "start", "remote_failing", "--wait")
    assert done.returncode == 1
    assert "status: failed" in done.stdout and "boom" in done.stderr
    assert "step 2 remote_boom: failed" in done.stderr


async def test_the_library_waits_for_a_run_a_worker_executes(served):
    async with TinyWorkflowClient(served) as client:
        assert "remote_etl" not in client.list_registered_workflows()
        run_id = await client.start_workflow("remote_etl", {"name": "bob"}, wait=True)
        run = await client.get_workflow_status(run_id)
        assert run.status == "completed" and run.output_data == {
            "result": {"greeting": "hello bob"}}
        failed = await client.start_workflow("remote_failing", wait=True)  # no raise
        assert (await client.get_workflow_status(failed)).status == "failed"
