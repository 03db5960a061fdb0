"""Non-retryable errors (issue 22, item 5): ``NonRetryableError`` and
``RetryPolicy(non_retryable=...)`` end an activity's or a run's attempts at once,
whatever ``max_retries`` says, and the record says why. On every backend."""

import asyncio
import sys
from collections import Counter

import pytest

import tinyworkflow
from tinyworkflow import (
    ActivityError,
    NonRetryableError,
    RetryPolicy,
    TinyWorkflowClient,
    activity,
    workflow,
)

calls: Counter = Counter()
FIVE = RetryPolicy(max_retries=5, initial_delay=0.001, jitter=False)


class PaymentDeclined(Exception):
    pass


class CardExpired(NonRetryableError):
    pass


@activity(name="nr_raise", retry_policy=FIVE)
async def nr_raise(kind: str) -> str:
    calls[kind] += 1
    if kind == "nonretryable":
        raise NonRetryableError("the order is malformed")
    if kind == "subclass":
        raise CardExpired("card 4242 expired")
    if kind == "flaky" and calls[kind] < 3:
        raise ConnectionError("try again")
    if kind == "value":
        raise ValueError("bad amount")
    if kind == "declined":
        raise PaymentDeclined("insufficient funds")
    return kind


@activity(name="nr_by_policy", retry_policy=RetryPolicy(
    max_retries=5, initial_delay=0.001, jitter=False,
    non_retryable=(ValueError, "PaymentDeclined")))
async def nr_by_policy(kind: str) -> str:
    return await _raise(kind)


async def _raise(kind: str) -> str:
    calls[kind] += 1
    if kind == "value":
        raise ValueError("bad amount")
    if kind == "declined":
        raise PaymentDeclined("insufficient funds")
    if kind == "flaky" and calls[kind] < 3:
        raise ConnectionError("try again")
    return kind


@workflow(name="nr_one_step", retry_policy=RetryPolicy(max_retries=0))
async def nr_one_step(ctx) -> str:
    activity_name = ctx.get_input("activity")
    fn = nr_by_policy if activity_name == "nr_by_policy" else nr_raise
    try:
        return await ctx.execute_activity(fn, ctx.get_input("kind"))
    except Exception as exc:
        return f"caught {type(exc).__name__}: {exc}"


async def _run(client, activity_name: str, kind: str):
    calls.clear()
    run_id = await client.start_workflow("nr_one_step", {"activity": activity_name,
                                                         "kind": kind}, wait=True)
    run = await client.get_workflow_status(run_id)
    [step] = await client.get_workflow_steps(run_id)
    failed = [e.event_data for e in await client.get_workflow_events(run_id)
              if e.event_type == "step_failed"]
    return run, step, failed


async def test_a_non_retryable_error_is_attempted_once(client):
    run, step, failed = await _run(client, "nr_raise", "nonretryable")
    assert calls["nonretryable"] == 1
    assert run.output_data["result"] == "caught NonRetryableError: the order is malformed"
    assert (step.status, step.attempts) == ("failed", 1)
    assert step.error["non_retryable"] is True
    assert step.error["type"] == "tinyworkflow.NonRetryableError"
    assert len(failed) == 1 and failed[0]["non_retryable"] is True
    assert failed[0]["retry_in"] is None


async def test_a_subclass_of_non_retryable_error_is_attempted_once(client):
    run, step, failed = await _run(client, "nr_raise", "subclass")
    assert calls["subclass"] == 1
    assert run.output_data["result"] == "caught CardExpired: card 4242 expired"
    assert step.attempts == 1 and failed[0]["non_retryable"] is True


async def test_other_errors_keep_their_retries(client):
    run, step, failed = await _run(client, "nr_raise", "value")
    assert calls["value"] == 6  # the first attempt and five retries
    assert step.attempts == 6 and "non_retryable" not in step.error
    assert all("non_retryable" not in f for f in failed)
    run, step, failed = await _run(client, "nr_raise", "flaky")
    assert run.output_data["result"] == "flaky" and calls["flaky"] == 3


async def test_the_policy_names_errors_by_type_or_by_name(client):
    run, step, failed = await _run(client, "nr_by_policy", "value")
    assert calls["value"] == 1 and run.output_data["result"] == "caught ValueError: bad amount"
    assert step.error["non_retryable"] is True
    run, step, failed = await _run(client, "nr_by_policy", "declined")
    assert calls["declined"] == 1
    assert run.output_data["result"] == "caught PaymentDeclined: insufficient funds"
    run, step, failed = await _run(client, "nr_by_policy", "flaky")
    assert run.output_data["result"] == "flaky" and calls["flaky"] == 3  # not named: retried


# ---- workflow retries -------------------------------------------------------------------


@workflow(name="nr_wf_raises", retry_policy=RetryPolicy(max_retries=3, initial_delay=0.001,
                                                         jitter=False))
async def nr_wf_raises(ctx) -> str:
    calls["nr_wf_raises"] += 1
    kind = ctx.get_input("kind")
    if kind == "own":
        raise NonRetryableError("no point retrying the run")
    if kind == "activity":  # the activity's non-retryable error, not caught
        return await ctx.execute_activity(nr_raise, "nonretryable")
    raise RuntimeError("retry me")


@workflow(name="nr_wf_policy", retry_policy=RetryPolicy(
    max_retries=3, initial_delay=0.001, jitter=False, non_retryable=("KeyError",)))
async def nr_wf_policy(ctx) -> str:
    calls["nr_wf_policy"] += 1
    raise KeyError("missing")


async def _workflow(client, name: str, kind: str = ""):
    calls.clear()
    run_id = await client.start_workflow(name, {"kind": kind}, wait=True)
    run = await client.get_workflow_status(run_id)
    events = await client.get_workflow_events(run_id)
    return run, events


async def test_a_run_failing_with_a_non_retryable_error_is_not_retried(client):
    run, events = await _workflow(client, "nr_wf_raises", "own")
    assert run.status == "failed" and run.retry_count == 0
    assert calls["nr_wf_raises"] == 1
    assert "NonRetryableError: no point retrying the run" in run.error
    [end] = [e for e in events if e.event_type == "workflow_failed"]
    assert end.event_data["non_retryable"] is True and end.event_data["attempts"] == 1
    assert not [e for e in events if e.event_type == "workflow_retrying"]


async def test_an_activitys_non_retryable_error_ends_the_run_too(client):
    run, events = await _workflow(client, "nr_wf_raises", "activity")
    assert run.status == "failed" and run.retry_count == 0
    assert calls["nonretryable"] == 1 and calls["nr_wf_raises"] == 1


async def test_other_run_failures_keep_their_retries(client):
    run, events = await _workflow(client, "nr_wf_raises", "other")
    assert run.status == "failed" and run.retry_count == 3
    assert calls["nr_wf_raises"] == 4


async def test_a_workflow_policy_names_errors_too(client):
    run, events = await _workflow(client, "nr_wf_policy")
    assert run.status == "failed" and run.retry_count == 0 and calls["nr_wf_policy"] == 1


# ---- the policy itself ------------------------------------------------------------------


def test_the_policy_takes_types_names_or_one_of_them():
    assert RetryPolicy().non_retryable == ()
    assert RetryPolicy(non_retryable=ValueError).non_retryable == (ValueError,)
    assert RetryPolicy(non_retryable="PaymentDeclined").non_retryable == ("PaymentDeclined",)
    assert RetryPolicy(non_retryable=[KeyError, "x.Y"]).non_retryable == (KeyError, "x.Y")
    for bad in (42, (ValueError, 42), ("",), (int,), (ValueError(),)):
        with pytest.raises(TypeError, match="non_retryable"):
            RetryPolicy(non_retryable=bad)


def test_which_errors_a_policy_retries():
    policy = RetryPolicy(non_retryable=(LookupError, "test_non_retryable.PaymentDeclined",
                                        "Declined"))
    assert not policy.retryable(KeyError("k"))  # a subclass of a type named
    assert not policy.retryable(PaymentDeclined())  # by module.QualName
    assert policy.retryable(ValueError())
    assert not policy.retryable(CardExpired())  # always
    assert not RetryPolicy().retryable(NonRetryableError())

    class Declined(Exception):
        pass
    assert not policy.retryable(Declined())  # by class name
    # A failure replayed without its type keeps the name it was recorded with.
    assert not policy.retryable(ActivityError("x", error_type="billing.Declined"))
    assert policy.retryable(ActivityError("x", error_type="billing.Other"))
    assert not RetryPolicy().retryable(ActivityError("x", non_retryable=True))


async def test_a_replayed_non_retryable_failure_is_still_one(db_url):
    """The step's record says it was not to be retried: a replay of the run raises the
    same type from the record, and the activity is not attempted again."""
    seen = []

    @workflow(name="nr_replayed")
    async def nr_replayed(ctx) -> str:
        try:
            await ctx.execute_activity(nr_raise, "subclass")
        except CardExpired as exc:
            seen.append(type(exc).__name__)
        await ctx.wait_for_signal("go")  # parks: the next execution replays
        return "done"

    calls.clear()
    async with TinyWorkflowClient(db_url) as client:
        run_id = await client.start_workflow("nr_replayed")
        await client.recover_workflows()  # runs the step, then parks on the signal
        assert (await client.get_workflow_status(run_id)).status == "running"
        await client.send_signal(run_id, "go")
        await client.recover_workflows()
        run = await client.get_workflow_status(run_id)
    assert run.status == "completed" and run.output_data["result"] == "done"
    assert seen == ["CardExpired", "CardExpired"]  # the replay raised the same type
    assert calls["subclass"] == 1


# ---- the workflow gets the activity's exception type ------------------------------------


class NeedsTwo(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code = code


@activity(name="nr_raise_from", retry_policy=RetryPolicy(max_retries=0))
async def nr_raise_from(kind: str) -> str:
    calls[kind] += 1
    if kind == "two":
        raise NeedsTwo(402, "payment required")
    import nr_lazy_errors  # a module only this activity imports
    raise nr_lazy_errors.Lazy("from a module imported late")


async def test_a_replay_rebuilds_the_type_from_its_arguments(db_url, tmp_path, monkeypatch):
    """On the first run the workflow gets the activity's own exception; on a replay, the
    same type made with the same arguments (its attributes too); a type whose module
    this process has not imported is an ActivityError naming it -- never imported from
    a record (the module may be the program itself, run as __main__)."""
    (tmp_path / "nr_lazy_errors.py").write_text("class Lazy(Exception):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []

    @workflow(name="nr_types")
    async def nr_types(ctx) -> str:
        for kind in ("two", "lazy"):
            try:
                await ctx.execute_activity(nr_raise_from, kind)
            except Exception as exc:
                seen.append((kind, f"{type(exc).__module__}.{type(exc).__qualname__}",
                             str(exc), getattr(exc, "code", None),
                             getattr(exc, "error_type", None)))
        await ctx.wait_for_signal("go")
        return "done"

    calls.clear()
    async with TinyWorkflowClient(db_url) as client:
        run_id = await client.start_workflow("nr_types")
        await client.recover_workflows()
        monkeypatch.delitem(sys.modules, "nr_lazy_errors")  # as in a fresh process
        await client.send_signal(run_id, "go")
        await client.recover_workflows()
        assert (await client.get_workflow_status(run_id)).status == "completed"
    # NeedsTwo's args (its message) are not what it is made with: made again it cannot
    # be, and the replay says which type it was.
    assert seen == [("two", "test_non_retryable.NeedsTwo", "402: payment required", 402, None),
                    ("lazy", "nr_lazy_errors.Lazy", "from a module imported late", None, None),
                    ("two", "tinyworkflow.ActivityError", "402: payment required", None,
                     "test_non_retryable.NeedsTwo"),
                    ("lazy", "tinyworkflow.ActivityError", "from a module imported late",
                     None, "nr_lazy_errors.Lazy")]
    assert calls == Counter(two=1, lazy=1)
    assert "nr_lazy_errors" not in sys.modules


class Unprintable(Exception):
    def __init__(self, status: int, url: str):
        super().__init__(status, url)
        self.status, self.url = status, url

    def __str__(self) -> str:
        return f"HTTP {self.status} for {self.url}"


def test_replays_make_exceptions_as_they_were_made():
    def again(exc):
        return tinyworkflow._internals.rebuild_error(
            tinyworkflow._internals.error_record(exc), "run-1", 1)
    for original in (KeyError("x"), FileNotFoundError(2, "No such file"),
                     Unprintable(503, "http://x"), ValueError("bad", 3)):
        back = again(original)
        assert type(back) is type(original) and str(back) == str(original)
        assert back.args == original.args
    assert again(FileNotFoundError(2, "No such file")).errno == 2
    assert again(Unprintable(503, "http://x")).status == 503


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise AttributeError("no message here")


@activity(name="nr_broken", retry_policy=RetryPolicy(max_retries=0))
async def nr_broken() -> None:
    raise BrokenStr()


@workflow(name="nr_broken_flow", retry_policy=RetryPolicy(max_retries=0))
async def nr_broken_flow(ctx) -> None:
    await nr_broken()


async def test_an_error_that_cannot_say_what_it_is_still_fails_the_run(client):
    run_id = await client.start_workflow("nr_broken_flow", wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "failed" and run.error.startswith("BrokenStr: ")


def test_an_unknown_type_replays_as_activity_error_with_its_traceback():
    record = {"type": "gone_module_xyz.Vanished", "message": "it went",
              "traceback": "Traceback (most recent call last):\n  ...\nVanished: it went\n"}
    error = tinyworkflow._internals.rebuild_error(record, "run-1", 3)
    assert isinstance(error, ActivityError)
    assert (error.error_type, str(error), error.step) == ("gone_module_xyz.Vanished",
                                                          "it went", 3)
    assert error.traceback.endswith("Vanished: it went\n")


@activity(name="nr_fine", retry_policy=RetryPolicy(max_retries=0))
async def nr_fine() -> str:
    calls["fine"] += 1
    return "fine"


@workflow(name="nr_group", retry_policy=RetryPolicy(max_retries=2, initial_delay=0.001,
                                                     jitter=False))
async def nr_group(ctx) -> None:
    calls["nr_group"] += 1
    async with asyncio.TaskGroup() as group:  # CardExpired arrives in an ExceptionGroup
        group.create_task(nr_raise("subclass"))
        group.create_task(nr_fine())


@pytest.mark.skipif(sys.version_info < (3, 11), reason="TaskGroup: Python 3.11")
async def test_a_non_retryable_error_in_an_exception_group_ends_the_run(client):
    calls.clear()
    run_id = await client.start_workflow("nr_group", wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "failed" and run.retry_count == 0
    assert calls["nr_group"] == 1 and calls["subclass"] == 1
    assert not RetryPolicy().retryable(ExceptionGroup("g", [ValueError(), CardExpired()]))
    assert RetryPolicy().retryable(ExceptionGroup("g", [ValueError(), KeyError()]))


# ---- a child's non-retryable failure: its parent is not retried either -----------------

@pytest.fixture
async def worker(db_url):
    async with TinyWorkflowClient(db_url, auto_start_worker=True) as client:
        yield client


@workflow(name="nr_child", retry_policy=RetryPolicy(max_retries=0))
async def nr_child(ctx, kind: str) -> str:
    calls["nr_child", kind] += 1
    if kind == "nonretryable":
        raise NonRetryableError("the order is malformed")
    raise RuntimeError("a failure trying again may mend")


@workflow(name="nr_parent", retry_policy=RetryPolicy(max_retries=2, initial_delay=0.001,
                                                    jitter=False))
async def nr_parent(ctx, kind: str, catch: bool = False):
    calls["nr_parent", kind] += 1
    try:
        return await ctx.execute_child_workflow(nr_child, kind=kind)
    except tinyworkflow.WorkflowFailedError as exc:
        if not catch:
            raise
        await ctx.sleep(2)  # parks: what follows is a replay of the child's failure
        return {"non_retryable": exc.non_retryable, "status": exc.status}


async def _parent(worker, kind: str, catch: bool = False):
    calls.clear()
    run_id = await worker.start_workflow("nr_parent", {"kind": kind, "catch": catch})
    with pytest.raises(tinyworkflow.WorkflowFailedError) as failed:
        await worker.wait_for_result(run_id, timeout=30)
    children = await worker.list_workflow_executions(workflow_name="nr_child")
    return run_id, failed.value, children


async def test_a_childs_non_retryable_failure_ends_the_parent_at_once(worker):
    """The child failed with a NonRetryableError: awaiting it raises a
    WorkflowFailedError with ``non_retryable``, and the parent failing with it is not
    retried (a retry would start the child anew, to fail the same way)."""
    run_id, error, children = await _parent(worker, "nonretryable")
    assert error.non_retryable is True and error.status == "failed"
    run = await worker.get_workflow_status(run_id)
    assert run.retry_count == 0 and calls["nr_parent", "nonretryable"] == 1
    assert len(children) == 1 and calls["nr_child", "nonretryable"] == 1
    [end] = [e for e in await worker.get_workflow_events(run_id)
             if e.event_type == "workflow_failed"]
    assert end.event_data["non_retryable"] is True
    with pytest.raises(tinyworkflow.WorkflowFailedError) as direct:
        await worker.wait_for_result(children[0].run_id, timeout=5)
    assert direct.value.non_retryable is True  # the client says so too


async def test_a_childs_other_failure_keeps_the_parents_retries(worker):
    run_id, error, children = await _parent(worker, "other")
    assert error.non_retryable is False
    assert (await worker.get_workflow_status(run_id)).retry_count == 2
    assert calls["nr_parent", "other"] == 3 and len(children) == 3


async def test_a_replayed_child_failure_keeps_its_non_retryable_flag(worker):
    """Caught, the flag is the workflow's to read; after the run parks, the replay
    rebuilds the same WorkflowFailedError from the step's record."""
    calls.clear()
    run_id = await worker.start_workflow("nr_parent", {"kind": "nonretryable",
                                                       "catch": True})
    assert await worker.wait_for_result(run_id, timeout=30) == {
        "non_retryable": True, "status": "failed"}
    assert calls["nr_parent", "nonretryable"] == 2  # the first run, then the replay
    assert calls["nr_child", "nonretryable"] == 1
