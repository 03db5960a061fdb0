"""Approvals: ``ctx.wait_for_approval(key, timeout)`` parks the run as ``paused`` with
``approval_required = key``; ``client.approve_workflow`` / ``reject_workflow`` store the
decision as the result of that step and make the run due, so it survives any restart.
A timeout raises ``TimeoutError`` (recorded); deciding on a run that does not wait for
an approval is a clear error that changes nothing."""

import asyncio
import signal
import subprocess
import time

import pytest

import dbutil
from tinyworkflow import (RetryPolicy, RunNotFoundError, RunStateError, TinyWorkflowClient,
                          WorkflowFailedError, activity, activity_info, workflow)

NO_RETRY = RetryPolicy(max_retries=0)

paid: list = []


@activity(name="approvals_pay")
async def pay(amount: int) -> dict:
    paid.append(amount)
    return {"paid": amount}


@workflow(name="approvals_expense", retry_policy=NO_RETRY)
async def expense(ctx):
    amount = ctx.get_input("amount")
    try:
        approved = await ctx.wait_for_approval(f"manager_{amount}", ctx.get_input("timeout"))
    except TimeoutError:
        return {"status": "timed out"}
    if not approved:
        return {"status": "rejected"}
    return {"status": "approved", **await ctx.execute_activity(pay, amount)}


async def paused(client, run_id) -> bool:
    return (await client.get_workflow_status(run_id)).status == "paused"


async def test_approve_resumes_the_run_with_true(db_url):
    paid.clear()
    async with TinyWorkflowClient(db_url, auto_start_worker=True, poll_interval=30) as client:
        run_id = await client.start_workflow("approvals_expense", {"amount": 1500})
        await dbutil.until(lambda: paused(client, run_id), 5, "the run to pause")
        run = await client.get_workflow_status(run_id)
        assert (run.approval_required, run.owner) == ("manager_1500", None)
        assert [r.run_id for r in await client.get_pending_approvals()] == [run_id]
        started = time.monotonic()
        assert await client.approve_workflow(run_id) is True
        assert await client.wait_for_result(run_id, timeout=5) == {"status": "approved",
                                                                   "paid": 1500}
        assert time.monotonic() - started < 3  # woken, not polled (the poll is 30 s)
        assert await client.get_pending_approvals() == []
        run = await client.get_workflow_status(run_id)
        assert run.approval_required is None
        steps = await client.get_workflow_steps(run_id)
        assert [(s.kind, s.name, s.status, s.output) for s in steps] == [
            ("approval", "manager_1500", "completed", True),
            ("activity", "approvals_pay", "completed", {"paid": 1500})]
        kinds = [e.event_type for e in await client.get_workflow_events(run_id)]
        assert kinds.index("approval_requested") < kinds.index("workflow_paused") \
            < kinds.index("approval_granted") < kinds.index("workflow_completed")
    assert paid == [1500]


async def test_reject_resumes_the_run_with_false(client):
    paid.clear()
    run_id = await client.start_workflow("approvals_expense", {"amount": 2000})
    await client.recover_workflows()  # executes it until it pauses
    assert await paused(client, run_id)
    assert await client.reject_workflow(run_id) is True
    await client.recover_workflows()
    assert await client.wait_for_result(run_id, timeout=5) == {"status": "rejected"}
    assert paid == []
    kinds = [e.event_type for e in await client.get_workflow_events(run_id)]
    assert "approval_rejected" in kinds and "approval_granted" not in kinds


async def test_start_with_wait_returns_once_approved_from_another_task(client):
    starter = asyncio.ensure_future(client.start_workflow("approvals_expense", {"amount": 7},
                                                          wait=True))
    await dbutil.until(lambda: _any_run(client), 5, "the run to be stored")
    [run] = await client.list_workflow_executions()
    await dbutil.until(lambda: paused(client, run.run_id), 5, "the run to pause")
    await client.approve_workflow(run.run_id)
    assert await asyncio.wait_for(starter, 5) == run.run_id
    assert (await client.get_workflow_status(run.run_id)).output_data == {
        "result": {"status": "approved", "paid": 7}}


async def _any_run(client) -> bool:
    return bool(await client.list_workflow_executions())


@workflow(name="approvals_timeout", retry_policy=RetryPolicy(max_retries=1, initial_delay=0.01,
                                                             jitter=False))
async def approvals_timeout(ctx):
    try:
        await ctx.wait_for_approval("boss", timeout=0.5)
    except TimeoutError as exc:
        outcome = str(exc)
    if ctx.retry_count == 0:
        raise RuntimeError("fail once, so the run replays the timed-out wait")
    return outcome


async def test_a_timeout_raises_timeout_error_recorded_and_replayed(client):
    started = time.monotonic()
    run_id = await client.start_workflow("approvals_timeout", wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "completed", run.error
    assert "no decision on approval 'boss' came within 0.5 s" in run.output_data["result"]
    assert 0.5 <= time.monotonic() - started < 3
    kinds = [e.event_type for e in await client.get_workflow_events(run_id)]
    # One wait, one timeout: the retry replayed the recorded timeout without waiting.
    assert kinds.count("approval_requested") == 1 and kinds.count("approval_timed_out") == 1
    [step] = await client.get_workflow_steps(run_id)
    assert (step.kind, step.status) == ("approval", "failed")
    assert step.error["type"] == "builtins.TimeoutError"
    with pytest.raises(RunStateError, match="completed, not waiting for an approval"):
        await client.approve_workflow(run_id)


async def test_a_timed_out_approval_is_no_longer_pending(client):
    run_id = await client.start_workflow("approvals_expense", {"amount": 3, "timeout": 0.3})
    await client.recover_workflows()
    assert [r.run_id for r in await client.get_pending_approvals()] == [run_id]
    await asyncio.sleep(0.4)
    await client.recover_workflows()  # due: the deadline passed
    assert await client.wait_for_result(run_id, timeout=5) == {"status": "timed out"}
    assert await client.get_pending_approvals() == []


async def test_deciding_on_a_run_that_is_not_waiting_is_an_error_and_changes_nothing(client):
    with pytest.raises(RunNotFoundError):
        await client.approve_workflow("no-such-run")
    run_id = await client.start_workflow("approvals_expense", {"amount": 5})  # not started
    before = (await client.get_workflow_status(run_id),
              await client.get_workflow_events(run_id))
    for decide in (client.approve_workflow, client.reject_workflow):
        with pytest.raises(RunStateError, match="is pending, not waiting for an approval") as e:
            await decide(run_id)
        assert e.value.status == "pending"
    assert (await client.get_workflow_status(run_id),
            await client.get_workflow_events(run_id)) == before
    # Decided once: a second decision is refused and the first one stands.
    await client.recover_workflows()
    await client.approve_workflow(run_id)
    with pytest.raises(RunStateError, match="is running, not waiting"):
        await client.reject_workflow(run_id)
    await client.recover_workflows()
    assert await client.wait_for_result(run_id, timeout=5) == {"status": "approved", "paid": 5}


async def test_pending_approvals_lists_exactly_the_waiting_runs(client):
    waiting = [await client.start_workflow("approvals_expense", {"amount": n}) for n in (1, 2, 3)]
    not_started = await client.start_workflow("approvals_expense", {"amount": 4})
    await client.recover_workflows()
    # The fourth was claimed too; start another that stays pending.
    later = await client.start_workflow("approvals_expense", {"amount": 5})
    pending = await client.get_pending_approvals()
    assert sorted(r.run_id for r in pending) == sorted(waiting + [not_started])
    assert {r.approval_required for r in pending} == {"manager_1", "manager_2", "manager_3",
                                                      "manager_4"}
    await client.approve_workflow(waiting[0])
    await client.cancel_workflow(waiting[1])
    cancelled = await client.get_workflow_status(waiting[1])
    assert (cancelled.status, cancelled.approval_required) == ("cancelled", None)
    assert sorted(r.run_id for r in await client.get_pending_approvals()) == sorted(
        [waiting[2], not_started])
    assert later not in {r.run_id for r in await client.get_pending_approvals()}


async def test_an_approval_survives_a_restart_of_client_and_worker(db_url):
    paid.clear()
    async with TinyWorkflowClient(db_url, auto_start_worker=True) as client:
        run_id = await client.start_workflow("approvals_expense", {"amount": 99})
        await dbutil.until(lambda: paused(client, run_id), 5, "the run to pause")
    async with TinyWorkflowClient(db_url) as client:  # a new process, nothing running
        await client.approve_workflow(run_id)
        assert (await client.get_workflow_status(run_id)).status == "running"
    async with TinyWorkflowClient(db_url, auto_start_worker=True) as client:
        assert await client.wait_for_result(run_id, timeout=5) == {"status": "approved",
                                                                   "paid": 99}
    assert paid == [99]


@workflow(name="approvals_deadline", retry_policy=NO_RETRY, timeout=0.8)
async def approvals_deadline(ctx):
    return await ctx.wait_for_approval("never decided")


async def test_a_paused_run_still_times_out_with_its_workflow(db_url):
    async with TinyWorkflowClient(db_url, auto_start_worker=True, poll_interval=30) as client:
        run_id = await client.start_workflow("approvals_deadline")
        with pytest.raises(WorkflowFailedError, match="timed out after 0.8 s"):
            await client.wait_for_result(run_id, timeout=5)
        assert await client.get_pending_approvals() == []


@workflow(name="approvals_bad", retry_policy=NO_RETRY)
async def approvals_bad(ctx):
    return await ctx.wait_for_approval(ctx.get_input("key"), ctx.get_input("timeout"))


@pytest.mark.parametrize("key, timeout, message", [
    ("", None, "an approval key is a non-empty string"),
    ("k" * 256, None, "at most 255 characters"),
    ("ok", -1, "wait_for_approval timeout must be None or seconds from 0 to"),
])
async def test_bad_arguments_fail_the_run_with_a_clear_error(client, key, timeout, message):
    run_id = await client.start_workflow("approvals_bad", {"key": key, "timeout": timeout},
                                         wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "failed" and message in run.error
    assert await client.get_workflow_steps(run_id) == []


# ---- a worker process killed while its run waits for an approval -----------------------

WORKER = """
import asyncio, sys
from tinyworkflow import RetryPolicy, TinyWorkflowClient, activity, workflow

@activity(name="approvals_crash_log")
async def log(path, label):
    with open(path, "a") as f:
        f.write(label + "\\n")
    return label

@workflow(name="approvals_crash_wf", retry_policy=RetryPolicy(max_retries=0))
async def crash_wf(ctx):
    path = ctx.get_input("log")
    await ctx.execute_activity(log, path, "before")
    approved = await ctx.wait_for_approval("go")
    return await ctx.execute_activity(log, path, f"after {approved}")

"""


def start_worker(db_url: str) -> subprocess.Popen:
    return dbutil.start_worker_script(WORKER, db_url, poll=0.2, lease=30)


@pytest.mark.crash
async def test_an_approval_given_while_every_process_is_down_is_kept(db_url, tmp_path):
    log = tmp_path / "log.txt"
    worker = start_worker(db_url)
    try:
        async with TinyWorkflowClient(db_url) as client:
            await dbutil.until(lambda: _advertised(client, "approvals_crash_wf"), 10,
                               "the worker to advertise its workflow")
            run_id = await client.start_workflow("approvals_crash_wf", {"log": str(log)})
            await dbutil.until(lambda: paused(client, run_id), 10, "the run to pause")
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
        async with TinyWorkflowClient(db_url) as client:  # another process approves
            await client.approve_workflow(run_id)
        worker = start_worker(db_url)
        async with TinyWorkflowClient(db_url) as client:
            assert await client.wait_for_result(run_id, timeout=20) == "after True"
        assert log.read_text().splitlines() == ["before", "after True"]  # each once
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)


async def _advertised(client, name) -> bool:
    return any(name in w.workflows for w in await client.list_workers())


@workflow(name="approvals_two", retry_policy=NO_RETRY)
async def approvals_two(ctx):
    return [await ctx.wait_for_approval("manager"), await ctx.wait_for_approval("finance")]


async def test_a_decision_with_a_key_is_not_taken_for_the_next_approval(client):
    run_id = await client.start_workflow("approvals_two")
    await client.recover_workflows()
    with pytest.raises(RunStateError, match="waits for the approval 'manager', not 'finance'"):
        await client.approve_workflow(run_id, key="finance")
    assert await client.approve_workflow(run_id, key="manager")
    await client.recover_workflows()  # it goes on to wait for finance
    assert (await client.get_workflow_status(run_id)).approval_required == "finance"
    # The same decision again (a double click): refused, not applied to finance.
    with pytest.raises(RunStateError, match="waits for the approval 'finance', not 'manager'"):
        await client.approve_workflow(run_id, key="manager")
    assert await client.reject_workflow(run_id)  # without a key: whatever it waits for
    await client.recover_workflows()
    assert await client.wait_for_result(run_id, timeout=5) == [True, False]
    with pytest.raises(ValueError, match="an approval key is a non-empty string"):
        await client.approve_workflow(run_id, key="")


async def test_a_decision_after_the_timeout_is_refused_even_before_a_worker_wakes(client):
    run_id = await client.start_workflow("approvals_expense", {"amount": 8, "timeout": 0.3})
    await client.recover_workflows()  # paused; no worker runs afterwards
    await asyncio.sleep(0.4)
    with pytest.raises(RunStateError, match="approval 'manager_8' timed out; nothing changed"):
        await client.approve_workflow(run_id)
    assert (await client.get_workflow_status(run_id)).status == "paused"  # unchanged
    await client.recover_workflows()
    assert await client.wait_for_result(run_id, timeout=5) == {"status": "timed out"}


senders: dict = {}


@activity(name="approvals_note")
async def note() -> None:
    # A signal that comes while the run executes marks it due (for a signal wait).
    await senders["client"].send_signal(activity_info().run_id, "note", "kept for later")


@workflow(name="approvals_signalled", retry_policy=NO_RETRY)
async def approvals_signalled(ctx):
    await ctx.execute_activity(note)
    try:
        approved = await ctx.wait_for_approval("ok", timeout=0.3)
    except TimeoutError:
        approved = None
    return [approved, await ctx.wait_for_signal("note")]


async def test_a_signal_that_came_before_the_approval_wait_does_not_end_it(client):
    senders["client"] = client
    run_id = await client.start_workflow("approvals_signalled")
    await client.recover_workflows()
    run = await client.get_workflow_status(run_id)
    assert run.status == "paused" and run.wake_at > run.updated_at  # its deadline, not "now"
    await asyncio.sleep(0.4)
    with pytest.raises(RunStateError, match="timed out"):
        await client.approve_workflow(run_id)
    await client.recover_workflows()
    assert await client.wait_for_result(run_id, timeout=5) == [None, "kept for later"]
