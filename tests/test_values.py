"""Deterministic values: ``ctx.now()``, ``ctx.uuid4()``, ``ctx.random()`` and
``ctx.randint()`` are steps. The first execution records them; a replay (a
workflow-level retry, a resumed run) gets the recorded values back."""

import uuid
from datetime import datetime, timezone

from tinyworkflow import (NonDeterminismError, RetryPolicy, TinyWorkflowClient, activity,
                          workflow)

seen: list = []  # what each execution of the workflow saw
attempts = {"n": 0}


@activity(name="values_flaky", retry_policy=RetryPolicy(max_retries=0))
async def flaky() -> str:
    attempts["n"] += 1
    if attempts["n"] == 1:
        raise RuntimeError("first attempt fails")
    return "ok"


@workflow(name="values_wf", retry_policy=RetryPolicy(max_retries=1, initial_delay=0.01,
                                                      jitter=False))
async def values_wf(ctx):
    # Called together, awaited in another order: numbered at call time all the same.
    now_call, id_call = ctx.now(), ctx.uuid4()
    made = {"uuid": await id_call, "now": await now_call, "random": await ctx.random(),
            "randint": await ctx.randint(1, 10**9)}
    seen.append(made)
    await ctx.execute_activity(flaky)  # fails on the first attempt: the run is retried
    return {k: str(v) for k, v in made.items()}


async def test_values_are_recorded_once_and_replayed(client):
    seen.clear()
    attempts["n"] = 0
    before = datetime.now(timezone.utc)
    run_id = await client.start_workflow("values_wf", wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "completed", run.error
    assert len(seen) == 2 and seen[0] == seen[1]  # the retry saw the same values
    first = seen[0]
    assert isinstance(first["uuid"], uuid.UUID) and first["uuid"].version == 4
    assert isinstance(first["now"], datetime) and first["now"].tzinfo is not None
    assert before <= first["now"] <= datetime.now(timezone.utc)
    assert 0 <= first["random"] < 1 and 1 <= first["randint"] <= 10**9
    assert run.output_data == {"result": {k: str(v) for k, v in first.items()}}
    steps = await client.get_workflow_steps(run_id)
    assert [(s.step, s.name, s.kind) for s in steps] == [
        (1, "now", "value"), (2, "uuid4", "value"), (3, "random", "value"),
        (4, "randint", "value"), (5, "values_flaky", "activity")]
    events = [e.event_type for e in await client.get_workflow_events(run_id)]
    assert events.count("step_completed") == 5  # four values, recorded once, and the activity


@workflow(name="values_changed", retry_policy=RetryPolicy(max_retries=1, initial_delay=0.01))
async def values_changed(ctx):
    if ctx.retry_count == 0:
        await ctx.now()
        raise RuntimeError("retry me")
    await ctx.uuid4()  # the code of step 1 changed between attempts


async def test_a_value_step_that_changed_is_non_determinism(db_url):
    async with TinyWorkflowClient(db_url) as client:
        run_id = await client.start_workflow("values_changed", wait=True)
        run = await client.get_workflow_status(run_id)
    assert run.status == "failed"
    assert NonDeterminismError.__name__ in run.error and "'now'" in run.error


@workflow(name="values_bad_randint", retry_policy=RetryPolicy(max_retries=0))
async def values_bad_randint(ctx):
    return await ctx.randint(5, 1)


async def test_randint_with_bad_bounds_fails_the_run_with_a_clear_error(client):
    run_id = await client.start_workflow("values_bad_randint", wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "failed" and run.error.startswith("ValueError: randint needs")
