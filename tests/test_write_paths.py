"""Which path each hot write takes on PostgreSQL, pinned (issue 21). The store counts
its writes by path (``_internals.store(client).paths``): "statement" is one statement
(data-modifying CTEs: one round trip, its own transaction), "grouped steps" one
statement for the steps of many runs, "transaction" BEGIN, the statements and COMMIT
(a round trip each). A change that moves a write to a slower path fails here, where
it can be seen, instead of only in a benchmark.

Still transactions, and why: a claim and a cancellation read before they write.
"""

import asyncio
import collections

import pytest

from dbutil import BACKENDS
from tinyworkflow import (RetryPolicy, TinyWorkflowClient, _internals, activity, workflow)

postgres_only = pytest.mark.parametrize("backend", [b for b in BACKENDS if b.id == "postgres"])
NO_RETRY = RetryPolicy(max_retries=0)


@activity(name="paths_step")
async def step(x: int) -> int:
    return x + 1


@activity(name="paths_undo")
async def undo(x: int) -> None:
    return None


@activity(name="paths_fail", retry_policy=NO_RETRY)
async def fail() -> None:
    raise RuntimeError("no")


@workflow(name="paths_one_step")
async def one_step(ctx):
    return await ctx.execute_activity(step, 1)


@workflow(name="paths_parent")
async def parent(ctx):
    return await ctx.execute_child_workflow("paths_one_step", {})


@workflow(name="paths_signal")
async def wait_signal(ctx):
    return await ctx.wait_for_signal("go")


@workflow(name="paths_saga", retry_policy=NO_RETRY)
async def saga(ctx):
    await ctx.execute_activity(step, 1)
    ctx.add_compensation(undo, 1)
    await ctx.execute_activity(step, 2)
    await ctx.execute_activity(fail)


@postgres_only
async def test_each_hot_write_takes_its_path_on_postgresql(db_url):
    async with TinyWorkflowClient(db_url) as client:
        store = _internals.store(client)

        async def paths(call) -> dict:
            before = collections.Counter(store.paths)
            with_errors = await asyncio.gather(call, return_exceptions=True)
            await asyncio.sleep(0.2)  # writes that follow the call (a parent woken...)
            after = collections.Counter(store.paths)
            after.subtract(before)
            return {path: count for path, count in after.items() if count}, with_errors[0]

        assert (await paths(client.start_workflow("paths_one_step")))[0] == {"statement": 1}
        # Inserted claimed; the step and the finish: one statement each.
        assert (await paths(client.start_workflow("paths_one_step", wait=True)))[0] == {
            "statement": 3}
        # The child's start (with the parent's step) and its end (which makes the parent
        # due) are one statement each; its claim is a transaction.
        assert (await paths(client.start_workflow("paths_parent", wait=True)))[0] == {
            "statement": 6, "transaction": 1}
        run_id = await client.start_workflow("paths_signal")
        await client.recover_workflows()  # parked, waiting
        assert (await paths(client.send_signal(run_id, "go", 1)))[0] == {"statement": 1}
        assert (await paths(client.recover_workflows()))[0] == {
            "transaction": 2, "statement": 1}
        # Two steps, a compensation registered and run, the failure: no transaction.
        counted, outcome = await paths(client.start_workflow("paths_saga", wait=True))
        assert "transaction" not in counted and counted.get("statement", 0) >= 7, counted
        run_id = await client.start_workflow("paths_signal")
        assert (await paths(client.cancel_workflow(run_id)))[0] == {"transaction": 1}
