"""PostgreSQL and MySQL/MariaDB: what only a database server brings (worker processes
sharing it, connections it kills, its time zone, concurrent schema creation) and what
every backend must get right the same way (JSON fidelity, table prefixes), plus the
URL and driver errors that need no server at all.

Server tests use the db_url fixture (conftest.py): the test database is emptied before
each test; an unreachable server skips them with the reason, or fails them with CI=true.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta, timezone

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
if TESTS not in sys.path:  # import the helpers under one name, whatever pytest's import mode
    sys.path.insert(0, TESTS)

import dbutil  # noqa: E402
import servers_workflows as sw  # noqa: E402
import tinyworkflow  # noqa: E402
from dbutil import child_env, servers_only, until  # noqa: E402
from tinyworkflow import (DatabaseUnavailableError, RetryPolicy, TinyWorkflowClient,  # noqa: E402
                          WorkflowContext, activity, workflow)

NO_RETRY = RetryPolicy(max_retries=0)
FINAL = ("completed", "failed", "cancelled")


def with_options(url: str, options: str) -> str:
    return url + ("&" if "?" in url else "?") + options




# ---- a) four worker processes, 500 runs -------------------------------------------------

RUNS, WORKERS, CONCURRENCY = 500, 4, 25


@pytest.mark.slow
@servers_only
async def test_four_worker_processes_share_500_runs_each_executed_once(tmp_path, db_url):
    """Four worker processes (the library's API, tests/servers_worker.py) serve one
    database; the test process starts 500 runs. Every run completes exactly once and
    every activity executes exactly once: counted in a side table the activity writes
    (a connection of its own), in the step rows and in the events."""
    await dbutil.execute(db_url, sw.SIDE_TABLE_DDL)
    # 4 processes x a pool of at most 8, well inside PostgreSQL's default 100 connections.
    url = with_options(db_url, "pool_size=4&max_overflow=4")
    procs = []
    try:
        for n in range(WORKERS):
            with open(tmp_path / f"w{n}.out", "wb") as out, \
                    open(tmp_path / f"w{n}.err", "wb") as err:
                procs.append(subprocess.Popen(
                    [sys.executable, os.path.join(TESTS, "servers_worker.py"), url,
                     str(CONCURRENCY)], cwd=tmp_path, env=child_env(), stdout=out, stderr=err))

        def output(n: int) -> str:
            return "\n".join(f"--- worker {procs[n].pid} {kind}:\n"
                             + (tmp_path / f"w{n}.{kind}").read_text(errors="replace")
                             for kind in ("out", "err"))

        def all_started() -> bool:
            for n, proc in enumerate(procs):
                if proc.poll() is not None:
                    pytest.fail(f"worker exited ({proc.returncode})\n{output(n)}")
            return all("worker started" in (tmp_path / f"w{n}.out").read_text()
                       for n in range(WORKERS))

        await until(all_started, 30, "the workers to start")

        inputs: dict = {}
        async with TinyWorkflowClient(url) as client:
            for chunk in range(0, RUNS, 50):
                batch = [{"side": db_url, "x": i, "steps": 1 + i % 2}
                         for i in range(chunk, min(chunk + 50, RUNS))]
                ids = await asyncio.gather(*(client.start_workflow("servers_short", data)
                                             for data in batch))
                inputs.update(zip(ids, batch))

            async def all_finished():
                for n, proc in enumerate(procs):
                    if proc.poll() is not None:
                        pytest.fail(f"worker exited ({proc.returncode})\n{output(n)}")
                (left,), = await dbutil.rows(
                    db_url, "SELECT COUNT(*) FROM tinyworkflow_runs "
                            "WHERE status NOT IN ('completed', 'failed', 'cancelled')")
                return left == 0

            await until(all_finished, 120, "all runs to finish", pause=0.2)
            runs = await client.list_workflow_executions(limit=RUNS + 1)

        for n, proc in enumerate(procs):
            proc.send_signal(signal.SIGTERM)
        for n, proc in enumerate(procs):
            assert proc.wait(30) == 0, output(n)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    assert len(runs) == RUNS
    for run in runs:
        data = inputs[run.run_id]
        assert run.status == "completed", (run.run_id, run.status, run.error)
        assert run.output_data == {"result": sw.short_result(data["x"], data["steps"])}

    expected_steps = {run_id: data["steps"] for run_id, data in inputs.items()}
    # Each activity executed once: one side-table row per (run, step), nothing else.
    effects = Counter(dict(await dbutil.rows(
        db_url, f"SELECT effect, COUNT(*) FROM {sw.SIDE_TABLE} GROUP BY effect")))
    assert effects == Counter({f"{run_id}:{step}": 1 for run_id, steps in expected_steps.items()
                               for step in range(1, steps + 1)})
    # One completed step row per step; one start and one completion per run.
    steps = dict(await dbutil.rows(
        db_url, "SELECT run_id, COUNT(*) FROM tinyworkflow_steps WHERE status = 'completed' "
                "GROUP BY run_id"))
    assert steps == expected_steps
    for event_type, per_run in (("workflow_completed", 1), ("workflow_started", 1),
                                ("workflow_resumed", 0)):
        counts = dict(await dbutil.rows(
            db_url, "SELECT run_id, COUNT(*) FROM tinyworkflow_events WHERE event_type = ? "
                    "GROUP BY run_id", (event_type,)))
        assert counts == ({r: per_run for r in inputs} if per_run else {}), event_type
    pids = Counter(pid for (pid,) in await dbutil.rows(db_url, f"SELECT pid FROM {sw.SIDE_TABLE}"))
    assert set(pids) <= {p.pid for p in procs}
    assert len(pids) >= 2, f"one worker executed every activity: {pids}"
    print("activities per worker:", sorted(pids.values()))


# ---- b) connections killed by the server ------------------------------------------------

KILL_RUNS, KILL_STEPS, KILL_STEP_SECONDS = 30, 10, 0.2  # a run takes 2 s at least
executions: Counter = Counter()


@activity(name="servers_kill_step", retry_policy=NO_RETRY)
async def kill_step(n: int, step: int) -> int:
    executions[n, step] += 1
    await asyncio.sleep(KILL_STEP_SECONDS)
    return n * 100 + step


@workflow(name="servers_kill_wf", retry_policy=NO_RETRY)
async def kill_wf(ctx: WorkflowContext):
    n = ctx.get_input("n")
    return [await ctx.execute_activity(kill_step, n, step) for step in range(KILL_STEPS)]


@servers_only
async def test_connections_killed_by_the_server_lose_no_run(db_url):
    """While a worker executes runs, the server ends every connection of the test
    database (pg_terminate_backend / KILL), three times. The pool replaces them; a run
    whose write failed is taken over once its short lease expires: every run completes,
    once, and the client keeps working."""
    executions.clear()
    async with TinyWorkflowClient(db_url, auto_start_worker=True, lease_seconds=1.5,
                                  poll_interval=0.1) as client:
        run_ids = [await client.start_workflow("servers_kill_wf", {"n": n})
                   for n in range(KILL_RUNS)]
        killed, unfinished_at_kill = [], []
        for _ in range(3):
            await asyncio.sleep(0.35)
            (left,), = await dbutil.rows(
                db_url, "SELECT COUNT(*) FROM tinyworkflow_runs "
                        "WHERE status NOT IN ('completed', 'failed', 'cancelled')")
            unfinished_at_kill.append(left)
            killed.append(await dbutil.kill_other_connections(db_url))
        assert unfinished_at_kill[-1] > 0, f"runs finished before a kill: {unfinished_at_kill}"
        assert all(killed), f"no connection was killed: {killed}"

        results = [await client.wait_for_result(r, timeout=60) for r in run_ids]
        assert results == [[n * 100 + s for s in range(KILL_STEPS)] for n in range(KILL_RUNS)]
        for run_id in run_ids:
            run = await client.get_workflow_status(run_id)
            assert run.status == "completed" and run.owner is None, run
            kinds = Counter(e.event_type for e in await client.get_workflow_events(run_id,
                                                                                  limit=1000))
            assert kinds["workflow_completed"] == 1, kinds
            steps = await client.get_workflow_steps(run_id)
            assert [(s.step, s.status) for s in steps] == [
                (i, "completed") for i in range(1, KILL_STEPS + 1)]
        # At least once: a step in flight at a kill may have run again, no more.
        assert set(executions) == {(n, s) for n in range(KILL_RUNS) for s in range(KILL_STEPS)}
        # The client and its worker still work.
        again = await client.start_workflow("servers_kill_wf", {"n": 99})
        assert await client.wait_for_result(again, timeout=30) == [
            9900 + s for s in range(KILL_STEPS)]
    print(f"killed {killed} connections; unfinished runs at each kill: {unfinished_at_kill}; "
          f"steps executed twice: {sum(1 for c in executions.values() if c > 1)}")


# ---- c) UTC whatever the server's time zone ---------------------------------------------


@workflow(name="servers_tz_wf", retry_policy=NO_RETRY)
async def tz_wf(ctx):
    return "ok"


@servers_only
async def test_times_are_utc_whatever_the_server_time_zone(backend, db_url):
    """Times are float epoch seconds written by the client: a server (database) time
    zone far from UTC changes nothing."""
    if backend == "postgres":
        (name,), = await dbutil.rows(db_url, "SELECT current_database()")
        quoted = '"' + name.replace('"', '""') + '"'
        setup = f"ALTER DATABASE {quoted} SET timezone = 'America/New_York'"
        reset = f"ALTER DATABASE {quoted} RESET timezone"
        probe, expected = "SHOW timezone", "America/New_York"
    else:
        (old,), = await dbutil.rows(db_url, "SELECT @@GLOBAL.time_zone")
        setup = "SET GLOBAL time_zone = '+05:00'"
        reset = f"SET GLOBAL time_zone = '{old}'"
        probe, expected = "SELECT @@SESSION.time_zone", "+05:00"
    await dbutil.execute(db_url, setup)
    try:
        assert await dbutil.rows(db_url, probe) == [(expected,)]  # new sessions have it
        async with TinyWorkflowClient(db_url) as client:
            before = time.time()
            run_id = await client.start_workflow("servers_tz_wf", wait=True)
            after = time.time()
            run = await client.get_workflow_status(run_id)
            events = await client.get_workflow_events(run_id)
            listed = await client.list_workflow_executions(workflow_name="servers_tz_wf")
    finally:
        await dbutil.execute(db_url, reset)
    slack = 0.001  # datetime keeps microseconds
    for moment in (run.created_at, run.started_at, run.completed_at, listed[0].created_at,
                   *(e.timestamp for e in events)):
        assert moment.utcoffset() == timedelta(0), moment
        assert before - slack <= moment.timestamp() <= after + slack, (moment, before, after)
    assert run.created_at.tzinfo is timezone.utc


# ---- d) JSON fidelity -------------------------------------------------------------------

UNICODE = {
    "emoji": "😀🎉👍🏽👩‍👩‍👧‍👦🇯🇵",
    "cjk": "漢字 かな カナ 한국어 中文 𠀀𠮷",
    "astral": "\U0001F600\U00010348\U0001D11E\U00020000\U000E0001\U0010FFFD",
    "controls": "".join(map(chr, range(1, 32))) + "\x7f\x80\x9f",
    "specials": "quote \" backslash \\ slash / tab\t nl\n cr\r bom \ufeff nbsp \u00a0 "
                "zwj \u200d rlo \u202e lsep \u2028 psep \u2029 repl \ufffd nonchar \uffff",
    "scripts": "Ñandú façade Ærøskøbing Ελληνικά русский עברית العربية हिन्दी ไทย",
    "sql": "'; DROP TABLE tinyworkflow_runs; -- %s %% ? $1 \\x00 `x` [y]",
    "😀 key": "漢", "": "empty key",
}
NESTED = {
    "numbers": [0, 1, -1, 2**31, 2**53 + 1, -(2**63), 10**30, 0.1, 1 / 3, 1e-300,
                1.7976931348623157e308, -2.5e-8, 5e-324],
    "literals": [True, False, None, "", "0", "true", "null"],
    "empty": [[], {}, [[]], {"a": {}}],
    "deep": {"d": [{"d": [{"d": [{"d": [{"d": [{"d": [{"d": "bottom"}]}]}]}]}]}]},
    "mixed": [{"k": [1, "2", 3.0, [None, {"x": "ü"}]]}] * 3,
}
_chunk = "ab😀漢字\n\"\\ñ" * 100  # 1 100 bytes of UTF-8
LARGE = {"text": _chunk * 1400, "n": 1}  # about 1.5 MB


def canonical(value) -> str:
    """JSON text that tells 1 from 1.0 from True (== does not)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=True)


@activity(name="servers_echo", retry_policy=NO_RETRY)
async def echo(value):
    return value


@workflow(name="servers_echo_wf", retry_policy=NO_RETRY)
async def echo_wf(ctx):
    return await ctx.execute_activity(echo, ctx.get_input("value"))


@pytest.mark.parametrize("value", [UNICODE, NESTED, LARGE], ids=["unicode", "nested", "large"])
async def test_json_round_trips_exactly(client, value):
    assert len(json.dumps(LARGE, ensure_ascii=False).encode()) > 1_500_000
    run_id = await client.start_workflow("servers_echo_wf", {"value": value}, wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "completed", run.error
    assert canonical(run.input_data) == canonical({"value": value})
    assert canonical(run.output_data) == canonical({"result": value})
    assert canonical(await client.wait_for_result(run_id)) == canonical(value)
    (step,) = await client.get_workflow_steps(run_id)
    assert canonical(step.output) == canonical(value)
    assert canonical(step.input["args"]) == canonical([value])
    (listed,) = await client.list_workflow_executions(workflow_name="servers_echo_wf")
    assert canonical(listed.output_data) == canonical({"result": value})


# ---- e) concurrent initialisation -------------------------------------------------------

INIT_PROCESSES = 6
INIT_SCRIPT = """
import asyncio, sys, time
from tinyworkflow import TinyWorkflowClient

async def main(url, at):
    await asyncio.sleep(max(0.0, at - time.time()))  # all at the same moment
    async with TinyWorkflowClient(url) as client:
        await client.list_workflow_executions()

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""
TABLES = {f"tinyworkflow_{t}" for t in dbutil.TABLES}


async def test_processes_initialise_a_fresh_database_at_once(tmp_path, db_url):
    at = time.time() + 2.0  # past every interpreter's start-up
    procs = [subprocess.Popen([sys.executable, "-c", INIT_SCRIPT, db_url, str(at)],
                              cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(INIT_PROCESSES)]
    outcomes = [(p.wait(60), p.stderr.read().decode()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert [code for code, _ in outcomes] == [0] * INIT_PROCESSES, outcomes
    assert await dbutil.table_names(db_url) == TABLES
    assert await dbutil.schema_version(db_url) == [
        ("schema_version", str(len(tinyworkflow._internals.migrations)))]
    async with TinyWorkflowClient(db_url) as client:  # and the schema works
        run_id = await client.start_workflow("servers_tz_wf", wait=True)
        assert await client.wait_for_result(run_id) == "ok"


async def test_clients_of_one_process_initialise_a_fresh_database_at_once(db_url):
    clients = [TinyWorkflowClient(db_url) for _ in range(5)]
    try:
        await asyncio.gather(*(c.initialize() for c in clients))
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    assert await dbutil.table_names(db_url) == TABLES
    assert await dbutil.schema_version(db_url) == [
        ("schema_version", str(len(tinyworkflow._internals.migrations)))]


# ---- f) table prefixes ------------------------------------------------------------------

USER_TABLES = ("runs", "events", "steps", "meta", "workers", "signals", "schedules")


async def test_prefixes_keep_the_users_tables_and_each_other_apart(db_url):
    for table in USER_TABLES:
        await dbutil.execute(db_url, f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, "
                                     "note VARCHAR(100))")
        await dbutil.execute(db_url, f"INSERT INTO {table} VALUES (?, ?), (?, ?)",
                             (1, f"my {table}", 2, "ünïcode"))
    mine = {t: await dbutil.rows(db_url, f"SELECT * FROM {t} ORDER BY id") for t in USER_TABLES}

    async with TinyWorkflowClient(db_url) as default, \
            TinyWorkflowClient(db_url, table_prefix="app_") as app:
        done_default = await default.start_workflow("servers_tz_wf", wait=True)
        done_app = await app.start_workflow("servers_tz_wf", wait=True)
        pending_default = await default.start_workflow("servers_tz_wf")
        # Each prefix sees its own runs only, and executes its own only.
        assert await app.get_workflow_status(done_default) is None
        assert await default.get_workflow_status(done_app) is None
        assert [r.run_id for r in await app.list_workflow_executions()] == [done_app]
        assert await app.recover_workflows() == []
        assert await default.cleanup_old_workflows(days=0) == 1
        assert (await app.get_workflow_status(done_app)).status == "completed"
        assert await default.recover_workflows() == [pending_default]

    assert await dbutil.table_names(db_url) == (
        set(USER_TABLES) | TABLES | {f"app_{t}" for t in dbutil.TABLES})
    assert {t: await dbutil.rows(db_url, f"SELECT * FROM {t} ORDER BY id")
            for t in USER_TABLES} == mine


# ---- g) a missing driver ----------------------------------------------------------------

MISSING_DRIVER_SCRIPT = """
import asyncio, sys
for name in sys.argv[2].split(","):
    sys.modules[name] = None  # `import name` raises ImportError
import tinyworkflow

async def main(url):
    try:
        async with tinyworkflow.TinyWorkflowClient(url) as client:
            await client.list_workflow_executions()
    except ImportError as exc:
        print("ImportError:", exc)
    except BaseException as exc:
        print("other error:", type(exc).__name__, exc)
    else:
        print("no error")

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.parametrize("url, blocked, extra", [
    ("postgresql://nobody@127.0.0.1:1/none", "asyncpg", "postgres"),
    ("postgresql+asyncpg://nobody@127.0.0.1:1/none", "asyncpg", "postgres"),
    ("postgres://nobody@127.0.0.1:1/none", "asyncpg", "postgres"),
    ("mysql://nobody@127.0.0.1:1/none", "aiomysql", "mysql"),
    ("mysql+aiomysql://nobody@127.0.0.1:1/none", "aiomysql", "mysql"),
    ("mysql+asyncmy://nobody@127.0.0.1:1/none", "aiomysql", "mysql"),
    ("mysql://nobody@127.0.0.1:1/none", "pymysql", "mysql"),  # aiomysql's own dependency
])
def test_a_missing_driver_names_the_pip_install(tmp_path, url, blocked, extra):
    done = subprocess.run([sys.executable, "-c", MISSING_DRIVER_SCRIPT, url, blocked],
                          cwd=tmp_path, env=child_env(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ImportError:"), done.stdout + done.stderr
    assert f'pip install "tinyworkflow[{extra}]"' in done.stdout, done.stdout


# ---- h) URLs ----------------------------------------------------------------------------

SERVER_URL_FORMS = [
    ("postgresql://u:pw@127.0.0.1:1/db", "postgresql"),
    ("postgresql+asyncpg://u:pw@127.0.0.1:1/db", "postgresql"),
    ("postgres://u:pw@127.0.0.1:1/db", "postgresql"),
    ("mysql://u:pw@127.0.0.1:1/db", "mysql"),
    ("mysql+aiomysql://u:pw@127.0.0.1:1/db", "mysql"),
    ("mysql+asyncmy://u:pw@127.0.0.1:1/db", "mysql"),
]
POOL_OPTIONS = "pool_size=5&max_overflow=0&pool_recycle=300&pool_pre_ping=false&pool_timeout=2.5"


@pytest.mark.parametrize("url, backend", SERVER_URL_FORMS, ids=[u for u, _ in SERVER_URL_FORMS])
def test_server_urls_are_accepted_without_connecting(url, backend):
    """Port 1: nothing answers there, and nothing needs to until the client is used."""
    assert tinyworkflow._internals.parse_url(url)[0] == backend
    assert TinyWorkflowClient(url).database_url == url
    for query in (POOL_OPTIONS, "pool_pre_ping=true&pool_recycle=-1"):
        TinyWorkflowClient(with_options(url, query))
    if backend == "mysql":
        TinyWorkflowClient(with_options(url, "charset=utf8mb4&" + POOL_OPTIONS))


@pytest.mark.parametrize("url", ["postgresql://u@127.0.0.1:1/db", "mysql://u@127.0.0.1:1/db"])
def test_pool_options_are_parsed_to_numbers_and_booleans(url):
    backend, _, options = tinyworkflow._internals.parse_url(with_options(url, POOL_OPTIONS))
    picked = {k: options[k] for k in ("pool_size", "max_overflow", "pool_recycle",
                                      "pool_pre_ping", "pool_timeout")}
    assert picked == {"pool_size": 5, "max_overflow": 0, "pool_recycle": 300,
                      "pool_pre_ping": False, "pool_timeout": 2.5}
    assert type(picked["pool_size"]) is int and type(picked["max_overflow"]) is int
    assert picked["pool_pre_ping"] is False
    if backend == "mysql":
        assert tinyworkflow._internals.parse_url(with_options(url, "charset=utf8mb4"))[0] == "mysql"


BAD_OPTIONS = [
    ("pool_size", "0"), ("pool_size", "-1"), ("pool_size", "ten"), ("pool_size", "1.5"),
    ("max_overflow", "-1"), ("max_overflow", "x"),
    ("pool_recycle", "soon"), ("pool_recycle", "nan"),
    ("pool_pre_ping", "maybe"), ("pool_pre_ping", ""),
    ("pool_timeout", "0"), ("pool_timeout", "-3"), ("pool_timeout", "inf"),
    ("frobnicate", "1"),  # unknown
]


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
@pytest.mark.parametrize("option, value", BAD_OPTIONS, ids=[f"{o}={v}" for o, v in BAD_OPTIONS])
def test_bad_url_options_are_a_value_error_naming_the_option(scheme, option, value):
    url = f"{scheme}://u:s3cretpw@127.0.0.1:1/db?{option}={value}"
    with pytest.raises(ValueError, match=option) as err:
        TinyWorkflowClient(url)
    assert "s3cretpw" not in str(err.value)  # a URL in a message is shown without password


@pytest.mark.parametrize("scheme, driver", [("postgresql", "asyncpg"), ("mysql", "aiomysql")])
async def test_a_server_that_cannot_be_reached_is_named_without_the_password(scheme, driver):
    pytest.importorskip(driver)
    url = f"{scheme}://u:s3cretpw@127.0.0.1:1/db?connect_timeout=2"  # nothing listens there
    client = TinyWorkflowClient(url)
    with pytest.raises(DatabaseUnavailableError, match="cannot connect to") as err:
        await client.initialize()
    assert "s3cretpw" not in str(err.value) and "u:***@127.0.0.1:1" in str(err.value)
    await client.close()


@pytest.mark.parametrize("url, word", [
    ("mysql://u@127.0.0.1:1/db?charset=latin1", "charset"),
    ("mysql://u@127.0.0.1:1", "database"),  # no database named
    ("postgresql://u@127.0.0.1:notaport/db", "port"),
    ("sqlite:///x.db?pool_size=5", "pool_size"),  # pool options are for servers
])
def test_other_bad_server_urls(url, word):
    with pytest.raises(ValueError, match=word):
        TinyWorkflowClient(url)
