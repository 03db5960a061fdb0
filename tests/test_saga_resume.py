"""Issue 20, item 3: resuming a run that compensated -- failed while compensating, or was
cancelled while compensating -- retries only the compensations that did not complete,
never the forward path, and ends ``compensated`` when they succeed. Resuming a parent
cancelled while it awaited a child resumes the child too. On every backend."""

import asyncio
import collections
import uuid

import pytest

from tinyworkflow import RetryPolicy, TinyWorkflowClient, activity, workflow

NO_RETRY = RetryPolicy(max_retries=0)
RAN: collections.Counter = collections.Counter()  # (token, what) -> executions
FAILING: set = set()  # tokens whose refund fails for now
SLOW: set = set()  # tokens whose refund blocks until released
RELEASE: dict = {}


@activity(name="resume_charge", retry_policy=NO_RETRY)
async def charge(token: str) -> str:
    RAN[token, "charge"] += 1
    return "charged"


@activity(name="resume_book", retry_policy=NO_RETRY)
async def book(token: str) -> str:
    RAN[token, "book"] += 1
    return "booked"


@activity(name="resume_unbook", retry_policy=NO_RETRY)
async def unbook(token: str) -> None:
    RAN[token, "unbook"] += 1


@activity(name="resume_refund", retry_policy=NO_RETRY)
async def refund(token: str) -> None:
    RAN[token, "refund"] += 1
    if token in SLOW:
        await RELEASE[token].wait()
    if token in FAILING:
        raise RuntimeError("the bank is down")


@activity(name="resume_fail", retry_policy=NO_RETRY)
async def fail(token: str) -> None:
    RAN[token, "fail"] += 1
    raise RuntimeError("the flight is full")


@workflow(name="resume_saga", retry_policy=NO_RETRY)
async def saga(ctx):
    token = ctx.get_input("token")
    await ctx.execute_activity(book, token)
    ctx.add_compensation(unbook, token)
    await ctx.execute_activity(charge, token)
    ctx.add_compensation(refund, token)
    await ctx.execute_activity(fail, token)
    return "not reached"


@pytest.fixture
async def worker(db_url):
    async with TinyWorkflowClient(db_url, auto_start_worker=True) as client:
        yield client


async def until_status(client, run_id, *statuses, timeout=20):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        run = await client.get_workflow_status(run_id)
        if run.status in statuses:
            return run
        assert asyncio.get_running_loop().time() < deadline, f"still {run.status}"
        await asyncio.sleep(0.05)


async def test_resuming_a_run_whose_compensation_failed_compensates_again(worker):
    token = uuid.uuid4().hex
    FAILING.add(token)
    run_id = await worker.start_workflow("resume_saga", {"token": token})
    run = await until_status(worker, run_id, "failed")
    assert run.error.startswith("compensation failed") and "flight is full" in run.error
    assert RAN[token, "refund"] == 1 and RAN[token, "unbook"] == 1  # latest first, both
    FAILING.discard(token)
    assert await worker.resume_workflow(run_id) == run_id
    run = await until_status(worker, run_id, "compensated")
    # Only the compensation that had failed ran again; the forward path did not.
    assert (RAN[token, "book"], RAN[token, "charge"], RAN[token, "fail"],
            RAN[token, "refund"], RAN[token, "unbook"]) == (1, 1, 1, 2, 1)
    assert "flight is full" in run.error and "compensation failed" not in run.error
    steps = await worker.get_workflow_steps(run_id)
    assert [(s.name, s.status) for s in steps if s.kind == "compensation"] == [
        ("resume_unbook", "completed"), ("resume_refund", "completed")]
    events = [e.event_type for e in await worker.get_workflow_events(run_id, limit=1000)]
    assert events[-1] == "workflow_compensated"


async def test_resuming_a_run_cancelled_while_compensating_finishes_compensating(worker):
    token = uuid.uuid4().hex
    SLOW.add(token)
    RELEASE[token] = asyncio.Event()
    run_id = await worker.start_workflow("resume_saga", {"token": token})
    await until_status(worker, run_id, "compensating")
    while RAN[token, "refund"] == 0:
        await asyncio.sleep(0.02)
    assert await worker.cancel_workflow(run_id)
    RELEASE[token].set()
    await until_status(worker, run_id, "cancelled")
    SLOW.discard(token)
    await worker.resume_workflow(run_id)
    await until_status(worker, run_id, "compensated")
    # The forward path did not run again: not even the step that failed.
    assert (RAN[token, "book"], RAN[token, "charge"], RAN[token, "fail"],
            RAN[token, "unbook"]) == (1, 1, 1, 1)


@activity(name="resume_child_work", retry_policy=NO_RETRY)
async def child_work(token: str) -> str:
    RAN[token, "child"] += 1
    return "child done"


@workflow(name="resume_child", retry_policy=NO_RETRY)
async def child(ctx):
    await ctx.wait_for_signal("go")
    return await ctx.execute_activity(child_work, ctx.get_input("token"))


@workflow(name="resume_parent", retry_policy=NO_RETRY)
async def parent(ctx):
    return await ctx.execute_child_workflow("resume_child", {"token": ctx.get_input("token")})


async def test_resuming_a_parent_cancelled_while_awaiting_its_child_resumes_the_child(worker):
    token = uuid.uuid4().hex
    parent_id = await worker.start_workflow("resume_parent", {"token": token})

    async def the_child():
        runs = [r for r in await worker.list_workflow_executions()
                if r.parent_run_id == parent_id]
        return runs[0] if runs else None
    while await the_child() is None:
        await asyncio.sleep(0.05)
    child_id = (await the_child()).run_id
    assert await worker.cancel_workflow(parent_id)
    await until_status(worker, child_id, "cancelled")
    await until_status(worker, parent_id, "cancelled")
    await worker.resume_workflow(parent_id)
    await until_status(worker, child_id, "running", "pending")
    await worker.send_signal(child_id, "go")
    assert await worker.wait_for_result(parent_id, timeout=30) == "child done"
    assert RAN[token, "child"] == 1


@workflow(name="resume_saga_parent", retry_policy=NO_RETRY)
async def saga_parent(ctx):
    token = ctx.get_input("token")
    await ctx.execute_activity(charge, token)
    ctx.add_compensation(refund, token)
    return await ctx.execute_child_workflow("resume_child", {"token": token})


async def test_resuming_a_parent_that_only_compensates_leaves_its_child_cancelled(worker):
    """The parent's compensation had begun (cancelled, then its refund failed): resuming
    it compensates again; the child it awaited stays cancelled -- nothing awaits it."""
    token = uuid.uuid4().hex
    FAILING.add(token)
    parent_id = await worker.start_workflow("resume_saga_parent", {"token": token})
    while not [r for r in await worker.list_workflow_executions()
               if r.parent_run_id == parent_id]:
        await asyncio.sleep(0.05)
    (child_run,) = [r for r in await worker.list_workflow_executions()
                    if r.parent_run_id == parent_id]
    assert await worker.cancel_workflow(parent_id)
    await until_status(worker, parent_id, "failed")  # its refund failed
    FAILING.discard(token)
    await worker.resume_workflow(parent_id)
    await until_status(worker, parent_id, "compensated")
    assert (await worker.get_workflow_status(child_run.run_id)).status == "cancelled"
    assert RAN[token, "charge"] == 1 and RAN[token, "refund"] == 2 and RAN[token, "child"] == 0
