"""Worker stop, release, cancellation and resume under races (each test once reproduced
a defect found in review)."""

import asyncio
import threading
import time

import dbutil
from tinyworkflow import RetryPolicy, TinyWorkflowClient, activity, workflow
from tinyworkflow import _internals

NO_RETRY = RetryPolicy(max_retries=0)
state = {"live": 0, "max": 0}
guard = threading.Lock()
started = threading.Event()


def _body(seconds=0.8):
    with guard:
        state["live"] += 1
        state["max"] = max(state["max"], state["live"])
    started.set()
    time.sleep(seconds)
    with guard:
        state["live"] -= 1
    return 1


def reset():
    state.update(live=0, max=0)
    started.clear()


@activity(name="rv2_sync", retry_policy=NO_RETRY)
def rv2_sync():
    return _body()


@activity(name="rv2_sync_timed", retry_policy=NO_RETRY, timeout=60)
def rv2_sync_timed():
    return _body()


@workflow(name="rv2_wf_timeout", retry_policy=NO_RETRY, timeout=60)
async def rv2_wf_timeout(ctx):
    return await ctx.execute_activity(rv2_sync)


@workflow(name="rv2_wf_act_timeout", retry_policy=NO_RETRY)
async def rv2_wf_act_timeout(ctx):
    return await ctx.execute_activity(rv2_sync_timed)


@workflow(name="rv2_wf_plain", retry_policy=NO_RETRY)
async def rv2_wf_plain(ctx):
    return await ctx.execute_activity(rv2_sync)


@activity(name="rv2_async_slow", retry_policy=NO_RETRY)
async def rv2_async_slow(n):
    await asyncio.sleep(0.3)
    return n


@workflow(name="rv2_wf_steps", retry_policy=NO_RETRY)
async def rv2_wf_steps(ctx):
    return [await ctx.execute_activity(rv2_async_slow, n) for n in range(3)]


@workflow(name="rv2_wf_quick", retry_policy=NO_RETRY)
async def rv2_wf_quick(ctx):
    return 7


async def _wait_started():
    assert await asyncio.to_thread(started.wait, 5)


async def _release_while_thread_runs(db_url, name):
    reset()
    async with TinyWorkflowClient(db_url) as client:
        await client.start_worker()
        run_id = await client.start_workflow(name)
        await _wait_started()
        await client.stop_worker(grace=0.1)
        still_running = state["live"]
        row = await client.get_workflow_status(run_id)
        await asyncio.to_thread(time.sleep, 1.0)  # let the thread end before closing
    # Released (owner NULL) while the activity's thread is still executing: another
    # worker would claim the run at once and run the same step concurrently.
    assert not (still_running and row.owner is None), \
        f"run released while its step's thread still runs (status {row.status})"


async def test_stop_waits_for_a_sync_step_under_a_workflow_timeout(db_url):
    """A stopping worker releases a run only after its sync step's thread has returned,
    also when the workflow has a timeout."""
    await _release_while_thread_runs(db_url, "rv2_wf_timeout")


async def test_stop_waits_for_a_sync_step_under_an_activity_timeout(db_url):
    await _release_while_thread_runs(db_url, "rv2_wf_act_timeout")


async def test_resume_right_after_cancel_never_overlaps_the_step(db_url):
    """A run resumed right after being cancelled does not execute its step again while
    the cancelled execution's step is still running."""
    reset()
    async with TinyWorkflowClient(db_url, auto_start_worker=True) as client:
        run_id = await client.start_workflow("rv2_wf_plain")
        await _wait_started()
        await client.cancel_workflow(run_id)
        await client.resume_workflow(run_id)
        assert await client.wait_for_result(run_id, timeout=5) == 1
        await asyncio.to_thread(time.sleep, 0.9)
    assert state["max"] == 1, "the resumed run ran the step while the cancelled one still ran it"


async def test_close_during_stop_worker_waits_for_the_same_drain(db_url):
    """close() during a stop_worker waits for the same drain: nothing hangs and the
    runs are released."""
    client = TinyWorkflowClient(db_url)
    await client.initialize()
    await client.start_worker()
    run_ids = [await client.start_workflow("rv2_wf_steps") for _ in range(3)]
    await asyncio.sleep(0.1)
    stopper = asyncio.ensure_future(client.stop_worker(grace=5))
    await asyncio.sleep(0)
    before = set(asyncio.all_tasks())
    await client.close()
    done, _ = await asyncio.wait({stopper}, timeout=3)
    if not done:  # clean up what hangs
        stopper.cancel()
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            if task in before:
                task.cancel()
        await asyncio.sleep(0.1)
    async with TinyWorkflowClient(db_url) as other:
        rows = [await other.get_workflow_status(r) for r in run_ids]
    assert done, "stop_worker hangs when close() runs while it drains"
    assert all(r.owner is None for r in rows), [(r.status, r.owner) for r in rows]


async def test_a_cancelled_stop_worker_does_not_disable_later_workers(db_url):
    """stop_worker whose caller was cancelled still lets a later start_worker work."""
    async with TinyWorkflowClient(db_url, auto_start_worker=True) as client:
        await client.start_workflow("rv2_wf_steps")
        await asyncio.sleep(0.05)
        try:
            await asyncio.wait_for(client.stop_worker(grace=5), 0.05)
        except asyncio.TimeoutError:
            pass
        await asyncio.sleep(1.0)  # the first worker has drained by now
        await client.start_worker()
        run_id = await client.start_workflow("rv2_wf_quick")
        assert await client.wait_for_result(run_id, timeout=3) == 7


async def test_claimed_runs_execute_even_if_next_wake_fails(db_url):
    """Runs a worker claimed execute even when the following next_wake read fails."""
    async with TinyWorkflowClient(db_url, lease_seconds=30, poll_interval=0.1) as client:
        run_id = await client.start_workflow("rv2_wf_quick")
        store, original = _internals.store(client), _internals.store(client).next_wake

        async def flaky(*args):
            store.next_wake = original
            raise dbutil.transient_error(db_url)

        store.next_wake = flaky
        await client.start_worker()
        assert await client.wait_for_result(run_id, timeout=3) == 7
