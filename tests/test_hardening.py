"""Issue 20: hardening. Each test is a defect found by trying the library as a new user
would, fixed: nothing lost, repeated, stuck, or raised raw. On every backend where a
database is involved.
"""

import asyncio
import collections
import math
import uuid
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyworkflow import (ActivityError, RetryPolicy, TinyWorkflowClient, WorkflowFailedError,
                          activity, workflow)

# token -> how many times an activity ran (each test passes a token of its own).
RAN: collections.Counter = collections.Counter()


class Custom(BaseException):
    """A BaseException of the application's own (not an Exception)."""


BASE_EXCEPTIONS = {
    "system_exit": lambda: SystemExit(2),  # what argparse raises on a bad argument
    "cancelled": lambda: asyncio.CancelledError("raised by the activity itself"),
    "generator_exit": lambda: GeneratorExit(),
    "custom": lambda: Custom("boom"),
}
TYPES = {"system_exit": "builtins.SystemExit",
         "cancelled": "asyncio.exceptions.CancelledError",
         "generator_exit": "builtins.GeneratorExit",
         "custom": f"{__name__}.Custom"}
TWICE = RetryPolicy(max_retries=2, initial_delay=0.0, jitter=False)


@activity(name="hard_raises", retry_policy=TWICE)
async def raises(token: str, kind: str):
    RAN[token] += 1
    raise BASE_EXCEPTIONS[kind]()


@activity(name="hard_raises_in_thread", retry_policy=TWICE)
def raises_in_thread(token: str, kind: str):
    RAN[token] += 1
    raise BASE_EXCEPTIONS[kind]()


@activity(name="hard_ok")
async def ok(value):
    return value


@activity(name="hard_raises_with_timeout", retry_policy=TWICE, timeout=30)
async def raises_with_timeout(token: str, kind: str):
    """With a timeout the call runs in a task of its own (where asyncio would let a
    SystemExit leave the event loop)."""
    RAN[token] += 1
    raise BASE_EXCEPTIONS[kind]()


@activity(name="hard_raises_in_thread_with_timeout", retry_policy=TWICE, timeout=30)
def raises_in_thread_with_timeout(token: str, kind: str):
    RAN[token] += 1
    raise BASE_EXCEPTIONS[kind]()


@workflow(name="hard_base_exception", retry_policy=RetryPolicy(max_retries=0))
async def base_exception(ctx):
    fn = {(False, False): raises, (True, False): raises_in_thread,
          (False, True): raises_with_timeout, (True, True): raises_in_thread_with_timeout}[
        bool(ctx.get_input("thread")), bool(ctx.get_input("timeout"))]
    try:
        await ctx.execute_activity(fn, ctx.get_input("token"), ctx.get_input("kind"))
    except ActivityError as exc:
        if ctx.get_input("catch"):
            return {"caught": exc.error_type}
        raise
    return "not reached"


@workflow(name="hard_ok_workflow")
async def ok_workflow(ctx):
    return await ctx.execute_activity(ok, ctx.get_input("value"))


@pytest.fixture
async def worker(db_url):
    async with TinyWorkflowClient(db_url, auto_start_worker=True) as client:
        yield client


# ---- 4. activities that raise a BaseException ---------------------------------------------


@pytest.mark.parametrize("timeout", [False, True], ids=["", "timeout"])
@pytest.mark.parametrize("thread", [False, True], ids=["async", "thread"])
@pytest.mark.parametrize("kind", sorted(BASE_EXCEPTIONS))
async def test_a_base_exception_fails_the_attempt_and_the_policy_applies(worker, kind, thread,
                                                                       timeout):
    """SystemExit, CancelledError, GeneratorExit or the application's own BaseException
    raised by an activity fails that attempt like any exception: recorded with its type,
    retried by the activity's policy (three attempts), then the workflow gets an
    ActivityError naming the type. The worker lives on and runs the next workflow."""
    token = uuid.uuid4().hex
    run_id = await worker.start_workflow("hard_base_exception", {
        "token": token, "kind": kind, "thread": thread, "timeout": timeout})
    with pytest.raises(WorkflowFailedError):
        await worker.wait_for_result(run_id, timeout=30)
    assert RAN[token] == 3
    run = await worker.get_workflow_status(run_id)
    assert run.status == "failed" and TYPES[kind].rsplit(".", 1)[1] in run.error
    (step,) = await worker.get_workflow_steps(run_id)
    assert (step.status, step.attempts, step.error["type"]) == ("failed", 3, TYPES[kind])
    failures = [e for e in await worker.get_workflow_events(run_id)
                if e.event_type == "step_failed"]
    assert len(failures) == 3
    # The worker is alive and well.
    next_id = await worker.start_workflow("hard_ok_workflow", {"value": 7})
    assert await worker.wait_for_result(next_id, timeout=30) == 7


async def test_a_workflow_can_catch_an_activitys_base_exception(worker):
    token = uuid.uuid4().hex
    run_id = await worker.start_workflow("hard_base_exception", {
        "token": token, "kind": "system_exit", "catch": True})
    result = await worker.wait_for_result(run_id, timeout=30)
    assert result == {"caught": "builtins.SystemExit"} and RAN[token] == 3


# ---- 6. absurd durations are refused; a stored time never fails a read ----------------------

YEAR = 365.25 * 86400


async def never_registered(ctx):
    return None


@pytest.mark.parametrize("make", [
    lambda: RetryPolicy(initial_delay=1e12, max_delay=1e12),
    lambda: RetryPolicy(max_delay=101 * YEAR),
    lambda: workflow(name="hard_long_timeout", timeout=1e12)(never_registered),
    lambda: activity(name="hard_inf_timeout", timeout=math.inf)(lambda: None),
    lambda: TinyWorkflowClient("sqlite+aiosqlite:///unused.db", lease_seconds=1e12),
], ids=["retry-delays", "retry-max-delay", "workflow-timeout", "activity-timeout", "lease"])
def test_absurd_durations_are_refused_where_they_are_given(make):
    with pytest.raises(ValueError, match="100 years"):
        make()


def test_a_hundred_years_is_still_accepted():
    assert RetryPolicy(initial_delay=100 * YEAR, max_delay=100 * YEAR).max_delay == 100 * YEAR


async def test_a_test_clock_does_not_advance_past_a_hundred_years():
    from tinyworkflow import TestClock
    clock = TestClock(datetime(2030, 1, 1, tzinfo=timezone.utc))
    with pytest.raises(ValueError, match="100 years"):
        await clock.advance(1e12)
    assert clock.time() == datetime(2030, 1, 1, tzinfo=timezone.utc).timestamp()


@workflow(name="hard_absurd_wait", retry_policy=RetryPolicy(max_retries=0))
async def absurd_wait(ctx):
    how = ctx.get_input("how")
    if how == "ctx.sleep":
        await ctx.sleep(1e12)
    elif how == "signal":
        await ctx.wait_for_signal("never", timeout=1e12)
    elif how == "approval":
        await ctx.wait_for_approval("never", timeout=1e12)
    elif how == "asyncio.sleep":
        await asyncio.sleep(1e12)
    else:
        async with asyncio.timeout(1e12):
            await asyncio.Event().wait()
    return "not reached"


@pytest.mark.parametrize("how", ["ctx.sleep", "signal", "approval", "asyncio.sleep",
                                 "asyncio.timeout"])
async def test_an_absurd_wait_fails_the_run_and_stores_no_time(worker, how):
    """The workflow gets a ValueError naming the limit (it fails, no retry), nothing with
    that time is stored, and every listing still reads."""
    run_id = await worker.start_workflow("hard_absurd_wait", {"how": how})
    with pytest.raises(WorkflowFailedError, match="100 years"):
        await worker.wait_for_result(run_id, timeout=30)
    run = await worker.get_workflow_status(run_id)
    assert run.status == "failed" and run.wake_at is None
    assert await worker.get_workflow_steps(run_id) == []
    assert run_id in [r.run_id for r in await worker.list_workflow_executions()]


async def test_a_stored_time_out_of_range_reads_as_the_last_moment(worker, db_url):
    """Times stored past year 9999 by an older version: reading never fails."""
    import dbutil
    run_id = await worker.start_workflow("hard_ok_workflow", {"value": 1})
    assert await worker.wait_for_result(run_id, timeout=30) == 1
    await dbutil.execute(db_url, "UPDATE tinyworkflow_runs SET wake_at = ?, started_at = ? "
                                 "WHERE run_id = ?", (1e15, -1e15, run_id))
    await dbutil.execute(db_url, "UPDATE tinyworkflow_steps SET completed_at = ? "
                                 "WHERE run_id = ?", (1e15, run_id))
    last = datetime.max.replace(tzinfo=timezone.utc)
    run = await worker.get_workflow_status(run_id)
    assert run.wake_at == last and run.started_at == datetime.min.replace(tzinfo=timezone.utc)
    assert [r.wake_at for r in await worker.list_workflow_executions()
            if r.run_id == run_id] == [last]
    (step,) = await worker.get_workflow_steps(run_id)
    assert step.completed_at == last


# ---- 8. two workflows made by one factory ---------------------------------------------------


def make_workflow(name: str, value: int):
    @workflow(name=name)
    async def made(ctx):
        return value
    return made


def make_activity(name: str, value: int):
    @activity(name=name)
    async def made():
        return value
    return made


@pytest.mark.parametrize("factory", [make_workflow, make_activity])
def test_a_factory_cannot_register_one_name_twice(factory):
    """Same name, same qualified name (``make_workflow.<locals>.made``), another function:
    refused like any duplicate; the first stays registered."""
    from tinyworkflow import _internals
    registry = (_internals.workflows if factory is make_workflow
                else _internals.activities)
    name = f"hard_factory_{factory.__name__}"
    first = factory(name, 1)
    with pytest.raises(ValueError, match="already registered"):
        factory(name, 2)
    assert registry[name].fn is getattr(first, "__wrapped__", first)  # an activity's wraps it
    # The same function registered again is no duplicate.
    assert (workflow if factory is make_workflow else activity)(name=name)(first) is first


def test_a_module_imported_again_registers_its_workflows_again():
    """A reload (or a second import) runs the same definitions again: new code objects
    of the same functions, accepted, the new ones registered."""
    import types
    from tinyworkflow import _internals
    source = ("from tinyworkflow import workflow\n"
              "@workflow(name='hard_reloaded')\n"
              "async def reloaded(ctx):\n"
              "    return 1\n")
    for _ in range(2):
        module = types.ModuleType("hard_reload_module")
        exec(compile(source, "hard_reload_module.py", "exec"), module.__dict__)
        assert _internals.workflows["hard_reloaded"].fn is module.reloaded


# ---- 1, 2. retention keeps what live runs depend on; it refuses nonsense; a policy ---------

CHILD_RAN: collections.Counter = collections.Counter()


@activity(name="hard_child_work")
async def child_work(token: str):
    CHILD_RAN[token] += 1
    return f"done {token}"


@workflow(name="hard_retention_child")
async def retention_child(ctx):
    return await ctx.execute_activity(child_work, ctx.get_input("token"))


@workflow(name="hard_retention_parent", retry_policy=RetryPolicy(max_retries=0))
async def retention_parent(ctx):
    handle = await ctx.start_child_workflow("hard_retention_child",
                                            {"token": ctx.get_input("token")})
    await ctx.wait_for_signal("go")  # the child completes meanwhile
    return await handle


@workflow(name="hard_retention_chain", retry_policy=RetryPolicy(max_retries=0))
async def retention_chain(ctx):
    n = ctx.get_input("n", 0)
    if n < 3:
        ctx.continue_as_new({"n": n + 1})
    return {"n": n, "signal": await ctx.wait_for_signal("go")}


async def until(predicate, timeout=20):
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_retention_keeps_a_finished_child_its_running_parent_awaits(worker):
    token = uuid.uuid4().hex
    parent = await worker.start_workflow("hard_retention_parent", {"token": token})

    async def child_done():
        children = [r for r in await worker.list_workflow_executions()
                    if r.parent_run_id == parent]
        return children and children[0].status == "completed"
    await until(child_done)
    await asyncio.sleep(0.01)  # the child finished before the cleanup's cutoff
    assert await worker.cleanup_old_workflows(days=0) == 0  # its parent runs
    await worker.send_signal(parent, "go")
    assert await worker.wait_for_result(parent, timeout=30) == f"done {token}"
    assert CHILD_RAN[token] == 1
    await asyncio.sleep(0.01)
    assert await worker.cleanup_old_workflows(days=0) == 2  # the family has finished
    assert await worker.list_workflow_executions() == []


async def test_retention_keeps_a_live_chain_reachable_by_its_first_id(worker):
    first = await worker.start_workflow("hard_retention_chain", {"n": 0})

    async def chained():
        runs = await worker.list_workflow_executions()
        return sum(r.status == "continued" for r in runs) == 3
    await until(chained)
    await asyncio.sleep(0.01)
    assert await worker.cleanup_old_workflows(days=0) == 0  # the chain lives
    await worker.send_signal(first, "go", {"ok": True})  # by the first id
    assert await worker.wait_for_result(first, timeout=30) == {"n": 3, "signal": {"ok": True}}
    await asyncio.sleep(0.01)
    assert await worker.cleanup_old_workflows(days=0) == 4


@pytest.mark.parametrize("days", [math.nan, math.inf, -math.inf, -1, 1e9, "30", True, None])
async def test_cleanup_refuses_nonsense_and_deletes_nothing(worker, days):
    run_id = await worker.start_workflow("hard_ok_workflow", {"value": 1})
    assert await worker.wait_for_result(run_id, timeout=30) == 1
    await asyncio.sleep(0.01)
    with pytest.raises(ValueError, match="days"):
        await worker.cleanup_old_workflows(days=days)
    assert [r.run_id for r in await worker.list_workflow_executions()] == [run_id]


@workflow(name="hard_retained", retention_days=0)
async def retained(ctx):
    return "gone soon"


@pytest.mark.parametrize("make", [
    lambda: workflow(name="hard_bad_retention", retention_days=math.nan)(never_registered),
    lambda: TinyWorkflowClient("sqlite+aiosqlite:///unused.db", retention_days=-1),
    lambda: TinyWorkflowClient("sqlite+aiosqlite:///unused.db", retention_days=1e9),
], ids=["workflow-nan", "client-negative", "client-huge"])
def test_a_retention_policy_refuses_nonsense(make):
    with pytest.raises(ValueError, match="retention_days"):
        make()


async def test_workers_apply_the_retention_policy(db_url):
    """``@workflow(retention_days=0)``: a worker deletes its finished runs when it starts
    (and then at most once an hour among all workers); the client's ``retention_days``
    covers the other workflows."""
    import dbutil
    async with TinyWorkflowClient(db_url) as client:
        gone = await client.start_workflow("hard_retained", wait=True)
        kept = await client.start_workflow("hard_ok_workflow", {"value": 2}, wait=True)
    await asyncio.sleep(0.01)
    async with TinyWorkflowClient(db_url, auto_start_worker=True) as client:
        await until(lambda: _absent(client, gone))
        assert (await client.get_workflow_status(kept)).status == "completed"
    # Within the hour, another worker does not apply it again.
    async with TinyWorkflowClient(db_url, auto_start_worker=True, retention_days=0) as client:
        await asyncio.sleep(0.5)
        assert (await client.get_workflow_status(kept)).status == "completed"
    await dbutil.execute(db_url, "DELETE FROM tinyworkflow_meta WHERE name = 'retention_at'")
    async with TinyWorkflowClient(db_url, auto_start_worker=True, retention_days=0) as client:
        await until(lambda: _absent(client, kept))


async def _absent(client, run_id) -> bool:
    return await client.get_workflow_status(run_id) is None


# ---- 9. driver errors come out as tinyworkflow's; errors survive pickle ----------------------


async def test_a_sqlite_write_lock_held_past_the_busy_timeout_is_a_busy_error(tmp_path):
    """Another process holds SQLite's write lock longer than the busy timeout: the
    call raises DatabaseBusyError (the driver's error as its cause), nothing stored."""
    import sqlite3
    from tinyworkflow import DatabaseBusyError, TinyWorkflowError
    path = tmp_path / "busy.db"
    url = f"sqlite+aiosqlite:///{path}?timeout=0.2"
    async with TinyWorkflowClient(url) as client:
        run_id = await client.start_workflow("hard_ok_workflow", {"value": 1})
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the write lock, held
        try:
            for call in (lambda: client.start_workflow("hard_ok_workflow", {"value": 2}),
                         lambda: client.cancel_workflow(run_id),
                         lambda: client.send_signal(run_id, "x")):
                with pytest.raises(DatabaseBusyError, match="busy") as caught:
                    await call()
                assert isinstance(caught.value, TinyWorkflowError)
                assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert [r.run_id for r in await client.list_workflow_executions()] == [run_id]
        assert (await client.get_workflow_status(run_id)).status == "pending"


@pytest.mark.parametrize("url", ["postgresql://postgres@127.0.0.1:1/test",
                                 "mysql://root@127.0.0.1:1/test"], ids=["postgres", "mysql"])
async def test_an_unreachable_server_is_an_unavailable_error(url):
    from tinyworkflow import DatabaseUnavailableError
    with pytest.raises(DatabaseUnavailableError, match="cannot connect") as caught:
        async with TinyWorkflowClient(url):
            pass
    assert isinstance(caught.value, ConnectionError) and caught.value.__cause__ is not None


def test_the_driver_errors_are_classified_by_name_and_code():
    import sqlite3
    import tinyworkflow as tw
    cases = [
        (sqlite3.OperationalError("database is locked"), tw.DatabaseBusyError),
        (sqlite3.IntegrityError("UNIQUE constraint failed"), tw.DatabaseIntegrityError),
        (sqlite3.DataError("string or blob too big"), tw.DataTooLargeError),
        (sqlite3.OperationalError("disk I/O error"), tw.DatabaseError),
        (ConnectionResetError("reset by peer"), tw.DatabaseUnavailableError),
    ]
    try:
        import pymysql
        cases += [(pymysql.err.OperationalError(1213, "Deadlock found"), tw.DatabaseBusyError),
                  (pymysql.err.OperationalError(1205, "Lock wait timeout"), tw.DatabaseBusyError),
                  (pymysql.err.IntegrityError(1062, "Duplicate entry"),
                   tw.DatabaseIntegrityError),
                  (pymysql.err.OperationalError(1153, "Got a packet bigger than"),
                   tw.DataTooLargeError),
                  (pymysql.err.OperationalError(2013, "Lost connection"),
                   tw.DatabaseUnavailableError)]
    except ImportError:
        pass
    try:
        import asyncpg
        cases += [(asyncpg.exceptions.DeadlockDetectedError("deadlock"), tw.DatabaseBusyError),
                  (asyncpg.exceptions.UniqueViolationError("dup"), tw.DatabaseIntegrityError),
                  (asyncpg.exceptions.ProgramLimitExceededError("index row too big"),
                   tw.DataTooLargeError),
                  (asyncpg.exceptions.AdminShutdownError("bye"), tw.DatabaseUnavailableError)]
    except ImportError:
        pass
    for exc, kind in cases:
        assert type(tw._internals.database_error(exc)) is kind, exc
    assert tw._internals.database_error(ValueError("ours")) is None
    assert tw._internals.database_error(TimeoutError("ours")) is None


def test_every_error_survives_pickle():
    import pickle
    import tinyworkflow as tw
    errors = [
        tw.NonDeterminismError("changed", run_id="r", step=3, recorded="a", requested="b"),
        tw.ActivityError("boom", error_type="builtins.SystemExit", run_id="r", step=2),
        tw.RunStateError("finished", run_id="r", status="completed"),
        tw.WorkflowFailedError("failed", run_id="r", status="failed", error="E: x"),
        tw.IdempotencyError("taken", run_id="r"),
        tw.DatabaseBusyError("busy"), tw.SerializationError("no"), tw.WorkflowLoopError("io"),
    ] + [getattr(tw, name)("x") for name in tw.__all__ if name.endswith("Error")]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert copy.__dict__ == error.__dict__


# ---- 7. NUL, out-of-range counts, deep and huge values: clear errors, nothing stored --------


@pytest.mark.parametrize("call", [
    lambda c: c.start_workflow("hard_ok\x00workflow"),
    lambda c: c.start_workflow("hard_ok_workflow", {"value": 1}, workflow_id="a\x00b"),
    lambda c: c.start_workflow("hard_ok_workflow", {"value": 1}, idempotency_key="k\x00"),
    lambda c: c.start_workflow("hard_ok_workflow", {"value": 1}, run_id="r\x00"),
    lambda c: c.get_workflow_status("r\x00"),
    lambda c: c.send_signal("r\x00", "go"),
    lambda c: c.cancel_workflow("r\x00"),
    lambda c: c.list_workflow_executions(workflow_name="w\x00"),
    lambda c: c.list_workflow_executions(run_id_prefix="\x00"),
], ids=["name", "workflow_id", "idempotency_key", "run_id", "status", "signal-run",
        "cancel", "list-name", "list-prefix"])
async def test_nul_in_a_name_or_id_is_refused_everywhere(client, call):
    with pytest.raises(ValueError, match="NUL"):
        await call(client)
    assert await client.list_workflow_executions() == []


async def test_nul_in_a_signal_name_is_refused_and_in_a_payload_is_stored(client):
    run_id = await client.start_workflow("hard_ok_workflow", {"value": "a\x00b"})
    with pytest.raises(ValueError, match="NUL"):
        await client.send_signal(run_id, "go\x00")
    await client.send_signal(run_id, "go", {"text": "x\x00y"})  # JSON escapes it
    assert (await client.get_workflow_status(run_id)).input_data == {"value": "a\x00b"}


def test_nul_in_a_workflow_or_activity_name_is_refused():
    with pytest.raises(ValueError, match="NUL"):
        workflow(name="hard\x00nul")(never_registered)
    with pytest.raises(ValueError, match="NUL"):
        activity(name="hard\x00nul")(lambda: None)


@pytest.mark.parametrize("call", [
    lambda c, r: c.list_workflow_executions(limit=10**20),
    lambda c, r: c.list_workflow_executions(offset=2**63),
    lambda c, r: c.get_workflow_events(r, limit=-1),
    lambda c, r: c.get_workflow_events(r, limit=10**20),
    lambda c, r: c.fork_workflow(r, 10**30),
    lambda c, r: c.fork_workflow(r, 0),
], ids=["list-limit", "list-offset", "events-negative", "events-huge", "fork-huge", "fork-0"])
async def test_counts_out_of_range_are_a_value_error(client, call):
    run_id = await client.start_workflow("hard_ok_workflow", {"value": 1})
    with pytest.raises(ValueError, match="whole number from"):
        await call(client, run_id)
    assert [r.run_id for r in await client.list_workflow_executions()] == [run_id]


async def test_a_deeply_nested_input_is_a_serialization_error(client):
    from tinyworkflow import SerializationError
    value: list = []
    for _ in range(5000):
        value = [value]
    with pytest.raises(SerializationError, match="nested too deeply"):
        await client.start_workflow("hard_ok_workflow", {"value": value})
    assert await client.list_workflow_executions() == []


async def test_an_input_too_large_for_the_database_names_the_limit(client, backend):
    """On MySQL/MariaDB a value larger than max_allowed_packet: SerializationError naming
    the limit, nothing stored (the other databases take 40 MB)."""
    from tinyworkflow import SerializationError
    big = "x" * (40 * 2**20)
    if backend != "mysql":
        run_id = await client.start_workflow("hard_ok_workflow", {"value": big})
        assert len((await client.get_workflow_status(run_id)).input_data["value"]) == len(big)
        return
    with pytest.raises(SerializationError, match="max_allowed_packet"):
        await client.start_workflow("hard_ok_workflow", {"value": big})
    with pytest.raises(SerializationError, match="max_allowed_packet"):
        await client.schedule_delayed_workflow("hard_ok_workflow", 60, {"value": big})
    assert await client.list_workflow_executions() == []


def test_a_module_of_decorated_activities_imported_again_registers_again():
    """Decorators made with functools.wraps share their wrapper's code across reloads
    (the decorator's module is not run again): the function under it tells a reload
    from a second function."""
    import functools
    import types
    from tinyworkflow import _internals

    def timed(fn):
        @functools.wraps(fn)
        async def wrapper(*args):
            return await fn(*args)
        return wrapper

    source = ("from tinyworkflow import activity\n"
              "@activity(name='hard_reloaded_wrapped')\n"
              "@timed\n"
              "async def fetch(x):\n"
              "    return x\n")
    for _ in range(2):  # the module with the activity is run again, the decorator not
        module = types.ModuleType("hard_reload_wrapped")
        module.timed = timed
        exec(compile(source, "hard_reload_wrapped.py", "exec"), module.__dict__)
        assert _internals.activities["hard_reloaded_wrapped"].fn is module.fetch.__wrapped__


# ---- JSON text: the C encoder called directly writes what json's encode writes -------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text()
    | st.sampled_from(["é", "日本", "\ud800", "a\x00b", "\u2028", '"\\'])
    | st.builds(collections.OrderedDict),
    lambda children: st.lists(children, max_size=4) | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=5) | st.integers() | st.booleans() | st.none()
                      | st.floats(allow_nan=False), children, max_size=4),
    max_leaves=20)


def _reference(value, encoders):
    """What _encode wrote before it called the C encoder itself: encode, then the
    ASCII-escaping encoder for text UTF-8 cannot hold (lone surrogates)."""
    text = encoders[0].encode(value)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = encoders[1].encode(value)
    return text


@given(value=JSON_VALUES | st.builds(object) | st.builds(lambda v: {"x": v}, st.builds(set)))
@settings(max_examples=400, deadline=None)
def test_the_direct_c_encoder_writes_what_encode_writes(value):
    """For each encoder set (plain, strict: no NaN, lenient: repr for the rest), the
    same text or the same kind of error as JSONEncoder.encode."""
    from tinyworkflow import _internals
    for encoders in _internals.encoders.values():
        try:
            expected = _reference(value, encoders)
        except (TypeError, ValueError) as exc:
            with pytest.raises(type(exc)):
                _internals.encode(value, encoders)
        else:
            assert _internals.encode(value, encoders) == expected


def test_the_c_encoder_is_the_one_used_and_a_cycle_is_still_named():
    """On CPython the fast path is the json module's C encoder (no Python function in
    between); without its cycle check, a cycle still ends as json's own ValueError,
    and a value nested too deeply as RecursionError, as before."""
    import types
    from tinyworkflow import _internals
    encoders = _internals.encoders["strict"]
    assert not isinstance(encoders[2], types.FunctionType)
    cycle: dict = {}
    cycle["self"] = [cycle]
    with pytest.raises(ValueError, match="Circular reference"):
        _internals.encode(cycle, encoders)
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(RecursionError):
        _internals.encode(deep, encoders)
    assert _internals.encode({"a": [1, 2.5, None, True, "é"]}, encoders) == \
        '{"a":[1,2.5,null,true,"é"]}'


async def test_a_cyclic_input_is_a_serialization_error_that_says_so(client):
    from tinyworkflow import SerializationError
    value: dict = {}
    value["again"] = value
    with pytest.raises(SerializationError, match="Circular reference"):
        await client.start_workflow("hard_ok_workflow", {"value": value})
    assert await client.list_workflow_executions() == []


def test_a_cycle_under_a_high_recursion_limit_is_named_not_a_crash():
    """An application that raised the recursion limit far (here 200,000): a cyclic value
    is still json's 'Circular reference' error. (The C encoder without a cycle check
    would recurse until the C stack overflows, so it is not used then.) In a
    subprocess: a crash must not take the test run with it."""
    import os
    import subprocess
    import sys
    code = ("import sys; sys.setrecursionlimit(200_000)\n"
            "from tinyworkflow import _internals\n"
            "cycle = {}; cycle['self'] = [cycle]\n"
            "try:\n"
            "    _internals.encode(cycle, _internals.encoders['strict'])\n"
            "except ValueError as exc:\n"
            "    print(exc)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=root)
    assert done.returncode == 0, done.stderr
    assert "Circular reference" in done.stdout
