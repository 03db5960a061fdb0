"""Retries with exponential backoff: a flaky API that recovers, and one that never does.

    python examples/retry_workflow.py

"flaky_api" fails its first three calls and then answers. Its RetryPolicy retries it
inside its step after 0.1, 0.2 and 0.4 s (each moved by up to 10 % of jitter), and the
run completes: the step's record keeps the attempt count, and each failed attempt is a
`step_failed` event with its error and the delay before the next one. Then
"unreachable_api" fails every call: after its retries the step fails, and so does the
run, with the activity's error (expected here: the example checks it and exits 0).

Runs on the default SQLite file ./tinyworkflow.db (or $TINYWORKFLOW_DATABASE_URL).
"""

import asyncio
import collections

from tinyworkflow import (RetryPolicy, TinyWorkflowClient, WorkflowContext, WorkflowFailedError,
                          activity, activity_info, workflow)

FAILURES_BEFORE_SUCCESS = 3
calls = collections.Counter()  # calls per run: stands in for the outside world's state


@activity(name="flaky_api", retry_policy=RetryPolicy(
    max_retries=5, initial_delay=0.1, max_delay=1.0, backoff_multiplier=2.0, jitter=True))
async def flaky_api_call(endpoint: str) -> dict:
    calls[activity_info().run_id] += 1
    if calls[activity_info().run_id] <= FAILURES_BEFORE_SUCCESS:
        raise ConnectionError(f"503 Service Unavailable from {endpoint}")
    return {"endpoint": endpoint, "items": [1, 2, 3]}


@activity(name="unreachable_api", retry_policy=RetryPolicy(max_retries=2, initial_delay=0.05))
async def unreachable_api(endpoint: str) -> dict:
    raise ConnectionError(f"connection refused by {endpoint}")


@workflow(name="api_workflow")
async def retry_workflow(ctx: WorkflowContext) -> dict:
    result = await ctx.execute_activity(flaky_api_call, "/api/data")
    return {"status": "completed", "result": result}


# max_retries=0: fail the run as soon as the step has failed. With the default policy the
# run would be retried as a whole (replaying its completed steps, re-running this one).
@workflow(name="unreachable_api_workflow", retry_policy=RetryPolicy(max_retries=0))
async def unreachable_workflow(ctx: WorkflowContext) -> dict:
    return await ctx.execute_activity(unreachable_api, "/api/down")


async def show(client: TinyWorkflowClient, run_id: str) -> None:
    run = await client.get_workflow_status(run_id)
    print(f"{run.workflow_name} run {run_id}: {run.status}")
    for step in await client.get_workflow_steps(run_id):
        print(f"  step {step.step} {step.name}: {step.status} after {step.attempts} attempts "
              f"in {step.duration:.2f} s")
    for event in await client.get_workflow_events(run_id):
        if event.event_type == "step_failed":
            data = event.event_data
            retry = f"retry in {data['retry_in']:.2f} s" if data["retry_in"] else "no retry left"
            print(f"    attempt {data['attempt']} failed: {data['error']} -> {retry}")


async def main() -> None:
    async with TinyWorkflowClient() as client:
        ok = await client.start_workflow("api_workflow", wait=True)
        await show(client, ok)
        print(f"  result: {await client.wait_for_result(ok)}")
        steps = await client.get_workflow_steps(ok)
        if steps[0].attempts != FAILURES_BEFORE_SUCCESS + 1:
            raise SystemExit(f"expected {FAILURES_BEFORE_SUCCESS + 1} attempts: {steps}")

        down = await client.start_workflow("unreachable_api_workflow", wait=True)
        await show(client, down)  # wait=True does not raise when the run fails ...
        try:
            await client.wait_for_result(down, timeout=5)  # ... wait_for_result does
        except WorkflowFailedError as exc:
            print(f"  wait_for_result raised WorkflowFailedError, error: {exc.error}")
            if exc.status != "failed" or "connection refused" not in exc.error:
                raise SystemExit(f"expected the run to fail with the API's error: {exc}")
        else:
            raise SystemExit("expected unreachable_api_workflow to fail")


if __name__ == "__main__":
    asyncio.run(main())
