"""Idempotent starts: an idempotency key or an explicit run id names one run, from any
process, for as long as the run is kept; another workflow or input under it is refused."""

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest

import dbutil
from tinyworkflow import IdempotencyError, activity, workflow

CALLS: list = []


@activity(name="idem_charge")
async def idem_charge(order: str) -> str:
    CALLS.append(order)
    return f"charged {order}"


@workflow(name="idem_order")
async def idem_order(ctx):
    return await ctx.execute_activity(idem_charge, ctx.get_input("order"))


@workflow(name="idem_other")
async def idem_other(ctx):
    return "other"


async def test_the_same_key_returns_the_same_run(client):
    first = await client.start_workflow("idem_order", {"order": "42"}, idempotency_key="order-42")
    again = await client.start_workflow("idem_order", {"order": "42"}, idempotency_key="order-42")
    assert first == again
    [run] = await client.list_workflow_executions()
    assert run.run_id == first and run.idempotency_key == "order-42"
    other = await client.start_workflow("idem_order", {"order": "43"}, idempotency_key="order-43")
    assert other != first and len(await client.list_workflow_executions()) == 2


async def test_another_input_or_workflow_under_a_key_is_refused(client):
    run_id = await client.start_workflow("idem_order", {"order": "42"}, idempotency_key="k")
    with pytest.raises(IdempotencyError, match="other input") as refused:
        await client.start_workflow("idem_order", {"order": "99"}, idempotency_key="k")
    assert refused.value.run_id == run_id and isinstance(refused.value, ValueError)
    with pytest.raises(IdempotencyError, match="of workflow 'idem_order'"):
        await client.start_workflow("idem_other", {"order": "42"}, idempotency_key="k")
    with pytest.raises(IdempotencyError, match="other input"):
        await client.start_workflow("idem_order", {"order": "100"}, wait=True, idempotency_key="k")
    assert [r.run_id for r in await client.list_workflow_executions()] == [run_id]
    assert len(await client.get_workflow_events(run_id)) == 1  # nothing written to it


async def test_an_explicit_run_id(client):
    run_id = await client.start_workflow("idem_order", {"order": "7"}, run_id="order-7-run")
    assert run_id == "order-7-run"
    assert await client.start_workflow("idem_order", {"order": "7"}, run_id="order-7-run") == run_id
    with pytest.raises(IdempotencyError, match="run id 'order-7-run'"):
        await client.start_workflow("idem_order", {"order": "8"}, run_id="order-7-run")
    with pytest.raises(IdempotencyError, match="with idempotency key None"):
        await client.start_workflow("idem_order", {"order": "7"}, run_id="order-7-run",
                                    idempotency_key="k7")
    assert len(await client.list_workflow_executions()) == 1


async def test_wait_returns_the_finished_run_without_running_it_again(client):
    CALLS.clear()
    first = await client.start_workflow("idem_order", {"order": "5"}, wait=True,
                                        idempotency_key="w5")
    again = await client.start_workflow("idem_order", {"order": "5"}, wait=True,
                                        idempotency_key="w5")
    assert first == again and CALLS == ["5"]
    assert (await client.get_workflow_status(first)).output_data == {"result": "charged 5"}


async def test_wait_executes_a_pending_run_of_the_key_here(client):
    CALLS.clear()
    run_id = await client.start_workflow("idem_order", {"order": "6"}, idempotency_key="w6")
    assert await client.start_workflow("idem_order", {"order": "6"}, wait=True,
                                       idempotency_key="w6") == run_id
    assert (await client.get_workflow_status(run_id)).status == "completed" and CALLS == ["6"]


async def test_a_key_is_free_again_once_its_run_is_deleted(client):
    first = await client.start_workflow("idem_order", {"order": "1"}, wait=True,
                                        idempotency_key="once")
    assert await client.cleanup_old_workflows(days=0) == 1
    second = await client.start_workflow("idem_order", {"order": "2"}, idempotency_key="once")
    assert second != first


@pytest.mark.parametrize("kwargs", [dict(idempotency_key=""), dict(idempotency_key=5),
                                    dict(idempotency_key="x" * 256), dict(run_id="")])
async def test_bad_keys_are_refused(client, kwargs):
    with pytest.raises(ValueError):
        await client.start_workflow("idem_order", {"order": "1"}, **kwargs)
    assert await client.list_workflow_executions() == []


STARTER = """
import asyncio, json, sys, time
from tinyworkflow import TinyWorkflowClient, workflow

@workflow(name="idem_race")
async def idem_race(ctx):
    return 1

async def main():
    async with TinyWorkflowClient(sys.argv[1]) as client:
        await client.list_workflow_executions()  # connected and migrated
        print("ready", flush=True)
        time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
        ids = await asyncio.gather(*(client.start_workflow(
            "idem_race", {"n": n}, idempotency_key=f"race-{n}") for n in range(50)))
        print(json.dumps(ids), flush=True)

asyncio.run(main())
"""


@pytest.mark.slow
async def test_two_processes_starting_the_same_keys_at_once_store_one_run_each(db_url):
    at = time.time() + 3
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    env.pop("TINYWORKFLOW_DATABASE_URL", None)
    procs = [subprocess.Popen([sys.executable, "-c", STARTER, db_url, str(at)], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = []
    for proc in procs:
        out, _ = await asyncio.to_thread(proc.communicate, timeout=60)
        assert proc.returncode == 0
        lines = out.split()
        assert lines[0] == "ready"
        outputs.append(json.loads(out.split("ready", 1)[1]))
    assert outputs[0] == outputs[1] == outputs[2]  # every process got the same run per key
    rows = await dbutil.rows(db_url, "SELECT idempotency_key, COUNT(*) FROM tinyworkflow_runs "
                                     "GROUP BY idempotency_key")
    assert sorted(rows) == sorted((f"race-{n}", 1) for n in range(50))
