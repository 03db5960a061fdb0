"""Deterministic values: ``ctx.now()``, ``ctx.uuid4()`` and ``ctx.random()`` are plain
calls that write nothing. ``now()`` is the workflow's time (the recorded time of what it
last received), ``uuid4()`` and ``random()`` come from a generator seeded from the run:
a replay (a workflow-level retry, a resumed run) sees the same values."""

import random
import uuid
from datetime import datetime, timezone

import dbutil
from tinyworkflow import RetryPolicy, TinyWorkflowClient, activity, workflow

seen: list = []  # what each execution of the workflow saw
attempts = {"n": 0}


@activity(name="values_flaky", retry_policy=RetryPolicy(max_retries=0))
async def flaky() -> str:
    attempts["n"] += 1
    if attempts["n"] == 1:
        raise RuntimeError("first attempt fails")
    return "ok"


@activity(name="values_step")
async def values_step() -> str:
    return "step"


@workflow(name="values_wf", retry_policy=RetryPolicy(max_retries=1, initial_delay=0.01,
                                                      jitter=False))
async def values_wf(ctx):
    made = {"now": ctx.now(), "uuid": ctx.uuid4(), "random": ctx.random().random(),
            "randint": ctx.random().randint(1, 10**9)}
    await ctx.execute_activity(values_step)
    made["after"] = ctx.now()  # the recorded time of the step's outcome
    seen.append(made)
    await ctx.execute_activity(flaky)  # fails on the first attempt: the run is retried
    return {k: str(v) for k, v in made.items()}


async def test_values_are_plain_calls_the_same_on_every_replay(client):
    seen.clear()
    attempts["n"] = 0
    before = datetime.now(timezone.utc)
    run_id = await client.start_workflow("values_wf", wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "completed", run.error
    assert len(seen) == 2 and seen[0] == seen[1]  # the retry saw the same values
    first = seen[0]
    assert isinstance(first["uuid"], uuid.UUID) and first["uuid"].version == 4
    assert isinstance(first["now"], datetime) and first["now"].tzinfo == timezone.utc
    assert before.timestamp() - 1 <= first["now"].timestamp() <= first["after"].timestamp()
    assert first["after"] <= datetime.now(timezone.utc)
    assert 0 <= first["random"] < 1 and 1 <= first["randint"] <= 10**9
    assert run.output_data == {"result": {k: str(v) for k, v in first.items()}}
    steps = await client.get_workflow_steps(run_id)  # nothing recorded for the values
    assert [(s.step, s.name, s.kind) for s in steps] == [
        (1, "values_step", "activity"), (2, "values_flaky", "activity")]


@workflow(name="values_two_runs", retry_policy=RetryPolicy(max_retries=0))
async def values_two_runs(ctx):
    return [str(ctx.uuid4()), ctx.random().random()]


async def test_each_run_has_its_own_generator(client):
    one = await client.start_workflow("values_two_runs", wait=True)
    two = await client.start_workflow("values_two_runs", wait=True)
    first, second = [(await client.get_workflow_status(r)).output_data["result"]
                     for r in (one, two)]
    assert first != second
    expected = random.Random(one)  # seeded from the run id: documented, reproducible
    assert first[1] == (uuid.UUID(int=expected.getrandbits(128), version=4), expected.random())[1]


@workflow(name="values_old_history", retry_policy=RetryPolicy(max_retries=0))
async def values_old_history(ctx):
    return [ctx.now().year > 2000, await ctx.execute_activity(values_step)]


async def test_a_run_recorded_with_value_steps_by_an_older_version_replays(db_url):
    """Older versions recorded ctx.now() and the like as ``value`` steps: a run in
    flight across the upgrade passes over them and replays its other steps."""
    async with TinyWorkflowClient(db_url) as client:
        run_id = await client.start_workflow("values_old_history")
        await dbutil.rows(db_url, "INSERT INTO tinyworkflow_steps (run_id, step, name, kind, "
                          "status, output, attempts, run_attempt, started_at, completed_at) "
                          "VALUES (?, 1, 'now', 'value', 'completed', '1.5', 1, 0, 1.5, 1.5)",
                          (run_id,))
        await client.recover_workflows()
        assert await client.wait_for_result(run_id, timeout=10) == [True, "step"]
        steps = await client.get_workflow_steps(run_id)
        assert [(s.step, s.kind) for s in steps] == [(1, "value"), (2, "activity")]
