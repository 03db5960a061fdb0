"""The command line (cli.py): in-process through cli.main, and through its real entry
points (python -m tinyworkflow, python tinyworkflow.py) in subprocesses.

The commands that read or write runs run on every backend (``env.db`` is the db_url
fixture's database); those about arguments, entry points and SQLite files stay on
SQLite (``@sqlite_only``)."""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

import dbutil
import tinyworkflow
from dbutil import sqlite_only

ROOT = Path(tinyworkflow.__file__).resolve().parent

# This checkout's cli.py, by path: `pip install -e .` puts a *copy* of it in site-packages
# as tinyworkflow_cli, which tinyworkflow._internals.companion("cli") would prefer, stale or not.
_spec = importlib.util.spec_from_file_location("tinyworkflow_cli", ROOT / "cli.py")
cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli)

# Written to tmp_path under a unique module name with unique workflow names: the
# registry is process-global.
WORKFLOWS = '''
import os

from tinyworkflow import workflow, activity, Queue, RetryPolicy

NO_RETRY = RetryPolicy(max_retries=0)
Queue("q_SFX", concurrency=2, rate_limit=(5, 60))


@activity(name="greet_SFX")
async def greet(name):
    return "hello " + name


@activity(name="boom_SFX", retry_policy=NO_RETRY)
def boom(message):
    raise RuntimeError(message)


@workflow(name="hello_SFX", retry_policy=NO_RETRY)
async def hello(ctx):
    return {"greeting": await ctx.execute_activity(greet, ctx.get_input("name", "world"))}


@workflow(name="fail_SFX", retry_policy=NO_RETRY)
async def fail(ctx):
    await ctx.execute_activity(greet, "x")
    await ctx.execute_activity(boom, "kaput")


@activity(name="count_SFX", retry_policy=NO_RETRY)
def count(path):
    with open(path, "a") as f:
        f.write("x")
    return "counted"


@activity(name="flag_SFX", retry_policy=NO_RETRY)
def flag(path):
    if not os.path.exists(path):
        raise RuntimeError("no flag yet")
    return "flag found"


@workflow(name="flaky_SFX", retry_policy=NO_RETRY)
async def flaky(ctx):
    first = await ctx.execute_activity(count, ctx.get_input("count"))
    return [first, await ctx.execute_activity(flag, ctx.get_input("flag"))]
'''


@pytest.fixture
def env(tmp_path, monkeypatch, db_url):
    sfx = uuid.uuid4().hex[:10]
    module = f"cliwf_{sfx}"
    path = tmp_path / f"{module}.py"
    path.write_text(WORKFLOWS.replace("SFX", sfx))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # undo what --import-workflows adds
    monkeypatch.delenv("TINYWORKFLOW_DATABASE_URL", raising=False)
    return SimpleNamespace(tmp=tmp_path, db=db_url, module=module, file=str(path),
                           hello=f"hello_{sfx}", fail=f"fail_{sfx}", greet=f"greet_{sfx}",
                           boom=f"boom_{sfx}", flaky=f"flaky_{sfx}", queue=f"q_{sfx}")


@pytest.fixture
def run(env, capsys):
    """run(*argv) -> (exit code, stdout, stderr), with --db and the module imported."""

    def run(*argv, db=True, imports=True):
        head = (["--db", env.db] if db else []) + (
            ["--import-workflows", env.module] if imports else [])
        capsys.readouterr()
        code = cli.main([*head, *argv])
        out, err = capsys.readouterr()
        assert ("Traceback" in err) == ("--debug" in argv)
        return code, out, err

    return run


def runs_in(run) -> list:
    code, out, _ = run("list", "--json")
    assert code == 0
    return json.loads(out)


# ---- starting and executing -------------------------------------------------------------


def test_start_then_recover_then_status_completed(env, run):
    code, out, err = run("start", env.hello, "--input", '{"name": "Ada"}')
    assert code == 0, err
    run_id = out.strip()
    assert len(run_id) == 36

    code, out, _ = run("status", run_id, "--json")
    assert json.loads(out)["status"] == "pending"

    code, out, _ = run("recover")
    assert code == 0 and run_id[:8] in out and run_id not in out and "completed" in out

    code, out, _ = run("status", run_id)
    assert code == 0
    assert run_id in out and "completed" in out and "hello Ada" in out

    code, out, _ = run("recover")
    assert code == 0 and "no runs were due" in out


def test_start_wait_success_with_file_import(env, run):
    code, out, err = run("--import-workflows", env.file, "start", env.hello,
                         "--input", '{"name": "Bo"}', "--wait", imports=False)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines[0]) == 36
    assert "status: completed" in out
    assert 'result: {"greeting": "hello Bo"}' in out


def test_start_wait_failure_exits_1(env, run):
    code, out, err = run("start", env.fail, "--wait")
    assert code == 1
    run_id = out.splitlines()[0]
    assert "status: failed" in out
    assert f"error: run {run_id} failed: RuntimeError: kaput" in err

    code, out, _ = run("status", run_id, "--json")
    run_data = json.loads(out)
    assert run_data["status"] == "failed" and run_data["error"] == "RuntimeError: kaput"


def test_start_wait_json(env, run):
    code, out, _ = run("start", env.hello, "--wait", "--json", "--workflow-id", "order-7")
    assert code == 0
    data = json.loads(out)
    assert data["status"] == "completed"
    assert data["workflow_id"] == "order-7"
    assert data["output_data"] == {"result": {"greeting": "hello world"}}


def test_malformed_input_exits_2_and_stores_nothing(env, run):
    code, out, err = run("start", env.hello, "--input", "{name: Ada}")
    assert code == 2
    assert out == ""
    assert "error:" in err and "not valid JSON" in err
    assert runs_in(run) == []


def test_unknown_workflow_exits_2_and_stores_nothing(env, run):
    code, out, err = run("start", "no_such_workflow_" + env.hello, "--wait")
    assert code == 2
    assert out == ""
    assert err.startswith("error: no workflow named")
    assert env.hello in err  # the library lists the registered names
    assert runs_in(run) == []


def test_unknown_workflow_without_imports_hints_at_import(env, run):
    code, _, err = run("start", "never_registered_" + env.hello, imports=False)
    assert code == 2
    assert "hint:" in err and "--import-workflows" in err


# ---- reading ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["status", "events", "steps", "cancel"])
def test_unknown_run_id_exits_1(env, run, command):
    code, out, err = run(command, "no-such-run")
    assert code == 1
    assert out == ""
    assert err.startswith("error: no run with id 'no-such-run'")


def test_json_output_parses_and_is_stable(env, run):
    code, out, _ = run("start", env.hello, "--wait", "--input", '{"name": "Cy"}')
    run_id = out.splitlines()[0]

    _, first, _ = run("--json", "status", run_id)
    _, second, _ = run("status", run_id, "--json")
    assert first == second
    data = json.loads(first)
    assert data["run_id"] == run_id
    assert data["status"] == "completed"
    assert data["input_data"] == {"name": "Cy"}
    assert datetime.fromisoformat(data["created_at"]).tzinfo is not None
    assert datetime.fromisoformat(data["completed_at"]) >= datetime.fromisoformat(
        data["started_at"])

    _, out, _ = run("list", "--json")
    (listed,) = json.loads(out)
    assert listed == data

    _, out, _ = run("events", run_id, "--json")
    events = json.loads(out)
    assert [e["event_type"] for e in events][0] == "workflow_created"
    assert events[-1]["event_type"] == "workflow_completed"
    assert all(isinstance(e["timestamp"], str) for e in events)

    _, out, _ = run("steps", run_id, "--json")
    (step,) = json.loads(out)
    assert step["name"] == env.greet and step["status"] == "completed"
    assert step["attempts"] == 1 and step["output"] == "hello Cy"
    assert isinstance(step["duration"], float)

    _, out, _ = run("workflows", "--json")
    names = json.loads(out)
    assert env.hello in names["workflows"] and env.fail in names["workflows"]
    assert env.greet in names["activities"] and env.boom in names["activities"]


def test_tables(env, run):
    _, out, _ = run("start", env.fail, "--wait")
    run_id = out.splitlines()[0]

    code, out, _ = run("steps", run_id)
    assert code == 0
    header, first, second = out.splitlines()
    assert header.split() == ["STEP", "NAME", "KIND", "STATUS", "ATTEMPTS", "DURATION", "ERROR"]
    assert first.split()[:5] == ["1", env.greet, "activity", "completed", "1"]
    assert second.split()[:5] == ["2", env.boom, "activity", "failed", "1"]
    assert "RuntimeError: kaput" in second
    assert header.index("NAME") == first.index(env.greet)  # aligned

    code, out, _ = run("events", run_id)
    assert code == 0
    assert "workflow_failed" in out and "step_completed" in out
    code, out, _ = run("events", run_id, "--limit", "0")
    assert code == 0 and out.split() == ["ID", "TIME", "(UTC)", "EVENT", "DATA"]

    code, out, _ = run("list")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["RUN", "ID", "WORKFLOW", "STATUS", "RETRIES", "CREATED",
                              "FINISHED"]
    assert row.split()[:4] == [run_id[:8], env.fail, "failed", "0"]
    assert re.fullmatch(r"(just now|\d+s ago)\s+(just now|\d+s ago)",
                        row.split(None, 4)[4]), row

    code, out, _ = run("workflows")
    assert code == 0 and env.hello in out and env.greet in out


def test_list_filters(env, run):
    ok = [run("start", env.hello, "--wait")[1].splitlines()[0] for _ in range(3)]
    bad = run("start", env.fail, "--wait")[1].splitlines()[0]
    pending = run("start", env.hello)[1].strip()

    def ids(*argv):
        code, out, _ = run("list", "--json", *argv)
        assert code == 0
        return [r["run_id"] for r in json.loads(out)]

    assert ids() == [pending, bad, *reversed(ok)]  # newest first
    assert ids("--status", "failed") == [bad]
    assert ids("--status", "pending") == [pending]
    assert ids("--workflow", env.fail) == [bad]
    assert ids("--workflow", env.hello, "--status", "completed") == list(reversed(ok))
    assert ids("--limit", "2") == [pending, bad]
    assert ids("--limit", "2", "--offset", "2") == list(reversed(ok))[:2]
    assert ids("--workflow", "nobody") == []

    code, out, _ = run("list", "--workflow", "nobody")
    assert code == 0 and out.strip() == "no runs"
    code, _, err = run("list", "--status", "bogus")
    assert code == 2 and "error:" in err
    code, _, err = run("list", "--limit", "-1")
    assert code == 2 and "error:" in err


def test_cancel(env, run):
    run_id = run("start", env.hello)[1].strip()
    code, out, err = run("cancel", run_id)
    assert code == 0, err
    assert run_id in out
    assert json.loads(run("status", run_id, "--json")[1])["status"] == "cancelled"

    code, out, err = run("cancel", run_id)
    assert code == 1
    assert "already finished (cancelled)" in err

    done = run("start", env.hello, "--wait")[1].splitlines()[0]
    code, out, err = run("cancel", done, "--json")
    assert code == 1
    assert json.loads(out) == {"run_id": done, "cancelled": False, "status": "completed"}
    assert "already finished (completed)" in err

    # a cancelled run is not executed by recover
    code, out, _ = run("recover", "--json")
    assert code == 0 and json.loads(out) == []


def test_cleanup(env, run):
    run("start", env.hello, "--wait")
    pending = run("start", env.hello)[1].strip()
    code, out, _ = run("cleanup", "--days", "1")
    assert code == 0 and "deleted 0 run(s)" in out
    code, out, _ = run("cleanup", "--days", "0", "--json")
    assert code == 0 and json.loads(out) == {"deleted": 1, "days": 0.0}
    assert [r["run_id"] for r in runs_in(run)] == [pending]
    code, _, err = run("cleanup")
    assert code == 2 and "--days" in err


# ---- options, imports, usage --------------------------------------------------------------


def test_global_options_after_the_command(env, run):
    code, out, err = run("start", env.hello, "--wait", "--db", env.db,
                         "--import-workflows", env.module, db=False, imports=False)
    assert code == 0, err
    run_id = out.splitlines()[0]
    code, out, _ = run("status", run_id, "--db", env.db, "--json", db=False, imports=False)
    assert json.loads(out)["status"] == "completed"


def test_database_url_from_environment(env, run, monkeypatch):
    monkeypatch.setenv("TINYWORKFLOW_DATABASE_URL", env.db)
    run_id = run("start", env.hello, "--wait", db=False)[1].splitlines()[0]
    monkeypatch.delenv("TINYWORKFLOW_DATABASE_URL")
    code, out, _ = run("status", run_id, "--json")  # the same database, by --db
    assert code == 0 and json.loads(out)["status"] == "completed"


@sqlite_only
def test_bad_database_url_exits_2(env, run):
    code, _, err = run("--db", "nosuchdb://x", "list", db=False)
    assert code == 2 and err.startswith("error: unsupported database URL")


@sqlite_only
def test_import_errors_exit_2(env, run):
    code, _, err = run("--import-workflows", "no_such_module_xyz", "workflows", imports=False)
    assert code == 2 and "no module named 'no_such_module_xyz'" in err and "hint:" in err
    code, _, err = run("--import-workflows", "missing/file.py", "workflows", imports=False)
    assert code == 2 and "no such file" in err


@sqlite_only
def test_no_command_prints_help(env, run):
    code, out, err = run(db=False, imports=False)
    assert code == 2
    assert "usage: tinyworkflow" in err and "exit codes" in err


@sqlite_only
def test_version_and_unknown_command(env, run):
    code, out, _ = run("--version", db=False, imports=False)
    assert code == 0 and out.strip() == f"tinyworkflow {tinyworkflow.__version__}"
    code, _, err = run("frobnicate", db=False, imports=False)
    assert code == 2 and "error:" in err


# ---- real entry points ------------------------------------------------------------------


def _subprocess(args, cwd):
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    environ.pop("TINYWORKFLOW_DATABASE_URL", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=60)


@sqlite_only
def test_python_dash_m_sees_the_imported_workflows(env):
    # One registry: the workflows the command imports register in the module it reads.
    done = _subprocess(["-m", "tinyworkflow", "--import-workflows", env.module, "--db", env.db,
                        "workflows", "--json"], cwd=env.tmp)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["workflows"] == [env.fail, env.flaky, env.hello]


@sqlite_only
def test_script_entry_point_runs_a_workflow(env):
    script = str(ROOT / "tinyworkflow.py")
    done = _subprocess([script, "--version"], cwd=ROOT)
    assert done.returncode == 0
    assert done.stdout.strip() == f"tinyworkflow {tinyworkflow.__version__}"

    # Run as a script, the current directory is not on sys.path by itself.
    done = _subprocess([script, "--db", env.db, "--import-workflows", env.module, "start",
                        env.hello, "--input", '{"name": "Di"}', "--wait", "--json"], cwd=env.tmp)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["output_data"] == {"result": {"greeting": "hello Di"}}
    done = _subprocess([script, "--db", env.db, "start", env.hello], cwd=env.tmp)
    assert done.returncode == 2 and "Traceback" not in done.stderr


@sqlite_only
def test_without_imports_commands_hint_at_them(env):
    # A fresh process: nothing registered (in this one, earlier tests registered plenty).
    done = _subprocess(["-m", "tinyworkflow", "--db", env.db, "workflows"], cwd=env.tmp)
    assert done.returncode == 0
    assert "workflows (0)" in done.stdout and "--import-workflows" in done.stderr
    done = _subprocess(["-m", "tinyworkflow", "--db", env.db, "recover"], cwd=env.tmp)
    assert done.returncode == 2
    assert done.stderr.startswith("error: no workflows are registered")
    assert "--import-workflows" in done.stderr


# ---- the worker command -----------------------------------------------------------------

SLOW_WORKFLOW = '''
import asyncio
from tinyworkflow import workflow, activity, RetryPolicy


@activity(name="nap_SFX", retry_policy=RetryPolicy(max_retries=0))
async def nap(seconds):
    for _ in range(int(seconds * 20)):
        await asyncio.sleep(0.05)
    return seconds


@workflow(name="slow_SFX", retry_policy=RetryPolicy(max_retries=0))
async def slow(ctx):
    return await ctx.execute_activity(nap, ctx.get_input("seconds"))
'''

_LOG_LINE = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR) "


class _WorkerProcess:
    """``python -m tinyworkflow worker ...`` with stdout and stderr in files."""

    def __init__(self, env, *argv):
        self.out, self.err = env.tmp / "worker.out", env.tmp / "worker.err"
        environ = {**os.environ, "PYTHONPATH": str(ROOT)}
        environ.pop("TINYWORKFLOW_DATABASE_URL", None)
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tinyworkflow", "worker", "--db", env.db,
                 "--poll-interval", "0.05", *argv],
                cwd=env.tmp, env=environ, stdout=out, stderr=err)

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def wait_started(self, timeout=15.0) -> str:
        deadline = time.monotonic() + timeout
        while not self.stdout().endswith("\n"):  # its one line on start
            assert self.proc.poll() is None, f"worker exited early:\n{self.stderr()}"
            assert time.monotonic() < deadline, f"worker did not start:\n{self.stderr()}"
            time.sleep(0.01)
        return self.stdout()

    def signal(self, signum, timeout=10.0) -> tuple:
        """Send ``signum``; (exit code or None if still running after ``timeout``, seconds)."""
        started = time.monotonic()
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - started

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def worker_process():
    started = []

    def start(env, *argv):
        worker = _WorkerProcess(env, *argv)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


def _until(predicate, timeout=15.0, what="a condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT],
                         ids=["SIGTERM", "SIGINT"])
def test_worker_executes_runs_started_elsewhere_then_stops_on_a_signal(
        env, run, worker_process, stop_signal):
    worker = worker_process(env, "--import-workflows", env.module, "--concurrency", "4")
    line = worker.wait_started()
    assert line.count("\n") == 1  # one line on start
    assert env.hello in line and env.fail in line and cli._masked(env.db) in line

    run_ids = [run("start", env.hello, "--input", json.dumps({"name": f"n{i}"}))[1].strip()
               for i in range(6)]
    failing = run("start", env.fail)[1].strip()

    def status(run_id):
        return json.loads(run("status", run_id, "--json")[1])

    _until(lambda: all(status(r)["status"] == "completed" for r in run_ids)
           and status(failing)["status"] == "failed", what="the worker to execute the runs")
    assert [status(r)["output_data"] for r in run_ids] == [
        {"result": {"greeting": f"hello n{i}"}} for i in range(6)]
    assert status(failing)["error"] == "RuntimeError: kaput"
    (live,) = json.loads(run("workers", "--json")[1])
    assert live["pid"] == worker.proc.pid and env.hello in live["workflows"]
    code, out, _ = run("workers")
    assert code == 0 and str(worker.proc.pid) in out
    assert re.search(r"(just now|\d+s ago)", out.splitlines()[1])

    code, took = worker.signal(stop_signal)
    assert code == 0, worker.stderr()
    assert took < 5
    log = worker.stderr()
    assert f"{signal.Signals(stop_signal).name}: stopping" in log
    assert "worker stopped" in log
    assert json.loads(run("workers", "--json")[1]) == []  # it retired
    assert f"run {failing} failed" in log  # the library's log, with the run id
    assert "Traceback" not in log
    assert all(re.match(_LOG_LINE, line) for line in log.splitlines()), log


def test_worker_second_signal_exits_at_once(env, run, worker_process):
    sfx = env.hello.rpartition("_")[2]
    slow_module, slow = f"cliworker_{sfx}", f"slow_{sfx}"
    (env.tmp / f"{slow_module}.py").write_text(SLOW_WORKFLOW.replace("SFX", sfx))
    worker = worker_process(env, "--import-workflows", slow_module, "--grace", "60",
                            "--lease-seconds", "30", "--json")
    assert json.loads(worker.wait_started()) == {
        "worker": "started", "workflows": [slow], "database": cli._masked(env.db)}
    code, out, err = run("--import-workflows", slow_module, "start", slow,
                         "--input", '{"seconds": 30}', imports=False)
    assert code == 0, err
    run_id = out.strip()
    _until(lambda: json.loads(run("status", run_id, "--json")[1])["status"] == "running",
           what="the worker to claim the run")

    # First Ctrl-C: stops gracefully, so it waits for the 30 s step (grace 60 s)...
    code, _ = worker.signal(signal.SIGINT, timeout=0.5)
    assert code is None, worker.stderr()
    # ...second one: gone at once, leaving the run to be taken over after its lease.
    code, took = worker.signal(signal.SIGINT, timeout=5)
    assert code == 130, worker.stderr()
    assert took < 2
    assert "SIGINT again: exiting at once" in worker.stderr()
    assert json.loads(run("status", run_id, "--json")[1])["status"] == "running"


def test_worker_start_line_hides_the_database_password():
    masked = cli._masked("postgresql://app:s3cr:t@db:5432/jobs")
    assert masked == "postgresql://app:***@db:5432/jobs"
    assert cli._masked("mysql://root@localhost/test") == "mysql://root@localhost/test"
    assert cli._masked("sqlite+aiosqlite:///a:b@c.db") == "sqlite+aiosqlite:///a:b@c.db"


def test_worker_refuses_to_start_without_workflows(env):
    done = _subprocess(["-m", "tinyworkflow", "--db", env.db, "worker"], cwd=env.tmp)
    assert done.returncode == 2
    assert done.stderr.startswith("error: no workflows are registered")
    assert "--import-workflows" in done.stderr
    assert done.stdout == ""
    # Refused before opening the database: no file, no table.
    assert not any(env.tmp.glob("*.db")) and dbutil.table_names_sync(env.db) == set()


@sqlite_only
@pytest.mark.parametrize("option", [
    ["--concurrency", "0"], ["--concurrency", "two"], ["--lease-seconds", "0"],
    ["--lease-seconds", "-1"], ["--poll-interval", "nan"], ["--grace", "-1"],
    ["--grace", "inf"],
])
def test_worker_bad_options_exit_2(env, run, option):
    code, out, err = run("worker", *option)
    assert code == 2 and out == ""
    assert f"argument {option[0]}" in err and "error:" in err


@sqlite_only
def test_worker_bad_lease_from_environment_exits_2(env, run, monkeypatch):
    monkeypatch.setenv("TINYWORKFLOW_LEASE_SECONDS", "soon")
    code, _, err = run("worker")
    assert code == 2
    assert err.startswith("error: TINYWORKFLOW_LEASE_SECONDS must be a number of seconds")


@sqlite_only
def test_a_file_that_is_not_a_database_is_a_clear_error(env, run):
    bad = env.tmp / "notes.db"
    bad.write_bytes(b"these are my notes, not a database\n" * 100)
    url = f"sqlite+aiosqlite:///{bad}"
    code, out, err = run("--db", url, "list", db=False)
    assert code == 1 and out == ""
    assert err.startswith("error:") and str(bad) in err
    done = _subprocess(["-m", "tinyworkflow", "--db", url, "worker",
                        "--import-workflows", env.module], cwd=env.tmp)
    assert done.returncode == 1
    assert done.stderr.startswith("error:") and "Traceback" not in done.stderr


# ---- approvals and signals ---------------------------------------------------------------

APPROVALS = '''
from tinyworkflow import workflow, RetryPolicy


@workflow(name="cli_expense_SFX", retry_policy=RetryPolicy(max_retries=0))
async def expense(ctx):
    approved = await ctx.wait_for_approval("manager", timeout=3600)
    note = await ctx.wait_for_signal("note")
    return {"approved": approved, "note": note}
'''


def test_approvals_approve_and_signal(env, run):
    sfx = env.hello.split("_")[1]
    (env.tmp / f"cliapp_{sfx}.py").write_text(APPROVALS.replace("SFX", sfx))
    name = f"cli_expense_{sfx}"

    def call(*argv):
        return run("--import-workflows", f"cliapp_{sfx}", *argv)

    run_id = call("start", name)[1].strip()
    code, out, err = call("approve", run_id, "--approve")
    assert code == 1 and "is pending, not waiting for an approval" in err
    assert "tinyworkflow approvals" in err
    code, out, _ = call("approvals")
    assert code == 0 and "no runs are waiting" in out
    call("recover")  # runs until it pauses
    code, out, _ = call("approvals")
    assert code == 0 and run_id[:8] in out and "manager" in out and "APPROVAL" in out
    assert re.search(r"(just now|\d+s ago)\s+in 59m$", out.splitlines()[1])  # in an hour
    [pending] = json.loads(call("approvals", "--json")[1])
    assert (pending["run_id"], pending["approval_required"]) == (run_id, "manager")

    code, _, err = call("approve", run_id)
    assert code == 2 and "one of the arguments --approve --reject is required" in err
    code, out, err = call("approve", run_id, "--reject", "--json")
    assert code == 0, err
    assert json.loads(out) == {"run_id": run_id, "decision": "rejected"}
    assert call("approve", run_id, "--approve")[0] == 1  # decided already

    code, _, err = call("signal", run_id, "note", "--payload", "{bad")
    assert code == 2 and "not valid JSON" in err
    code, out, err = call("signal", run_id, "note", "--payload", '{"text": "late"}')
    assert code == 0 and "sent signal 'note'" in out, err
    call("recover")
    status = json.loads(call("status", run_id, "--json")[1])
    assert status["status"] == "completed", status
    assert status["output_data"] == {"result": {"approved": False, "note": {"text": "late"}}}
    code, _, err = call("signal", run_id, "note")
    assert code == 1 and "takes no more signals" in err
    code, _, err = call("signal", "no-such-run", "note")
    assert code == 1 and "no run with id" in err


# ---- short ids, progress, results ---------------------------------------------------------


def test_a_unique_prefix_of_six_or_more_names_a_run(env, run):
    run_id = run("start", env.hello)[1].strip()
    for given in (run_id, run_id[:8], run_id[:6]):
        code, out, err = run("status", given, "--json")
        assert code == 0, err
        assert json.loads(out)["run_id"] == run_id
    code, out, err = run("status", run_id[:5])  # too short to be taken as a prefix
    assert code == 1 and out == "" and "no run with id" in err
    code, out, err = run("cancel", run_id[:8])
    assert code == 0 and out.strip() == f"cancelled {run_id}", err


def test_an_ambiguous_prefix_is_refused_and_like_patterns_are_literal(env, run):
    run("workflows")  # imports the module: its workflows register

    async def seed():
        async with tinyworkflow.TinyWorkflowClient(env.db) as client:
            for run_id in ("order-7001", "order-7002", "a_b%c-1"):
                await client.start_workflow(env.hello, run_id=run_id)
            return [[r.run_id for r in await client.list_workflow_executions(
                        run_id_prefix=prefix)] for prefix in ("order-700", "a_b%c", "aXbYc",
                                                              "a!b", "ORDER-700")]
    order, literal, wildcard, escape, case = dbutil.run_sync(seed())
    assert sorted(order) == ["order-7001", "order-7002"]
    assert (literal, wildcard, escape, case) == (["a_b%c-1"], [], [], [])  # exact, SQLite too

    code, out, err = run("cancel", "order-700")
    assert code == 2 and out == ""
    assert "more than one run id starts with 'order-700'" in err and "hint:" in err
    assert {r["status"] for r in runs_in(run)} == {"pending"}  # nothing cancelled
    code, out, _ = run("status", "order-7002", "--json")
    assert code == 0 and json.loads(out)["run_id"] == "order-7002"
    code, out, _ = run("list")  # a chosen id is shown whole
    assert "order-7001" in out and "a_b%c-1" in out


def test_start_wait_shows_each_step_as_it_completes(env, run):
    code, out, err = run("start", env.fail, "--wait")
    assert code == 1
    progress = [line for line in err.splitlines() if line.startswith("  step ")]
    assert [line.split(" in ")[0] for line in progress] == [
        f"  step 1 {env.greet}: completed", f"  step 2 {env.boom}: failed"]
    code, out, err = run("start", env.hello, "--wait", "--json")
    assert code == 0 and "step" not in err  # --json: only the JSON


def test_start_options_pass_through(env, run):
    first = run("start", env.hello, "--idempotency-key", "k-1", "--input", '{"name": "A"}')
    again = run("start", env.hello, "--idempotency-key", "k-1", "--input", '{"name": "A"}')
    assert first[0] == again[0] == 0 and first[1] == again[1]
    code, _, err = run("start", env.hello, "--idempotency-key", "k-1", "--input", '{"x": 1}')
    assert code == 2 and "idempotency key 'k-1' already names run" in err
    code, out, _ = run("start", env.hello, "--queue", env.queue, "--queue-key", "tenant-1",
                       "--priority", "3")
    queued = json.loads(run("status", out.strip(), "--json")[1])
    assert (queued["queue_name"], queued["queue_key"], queued["priority"]) == (
        env.queue, "tenant-1", 3)
    code, out, _ = run("status", out.strip())
    assert f"queue:       {env.queue} (key tenant-1), priority 3" in out
    code, _, err = run("start", env.hello, "--queue", "")
    assert code == 2 and err.startswith("error: queue is a non-empty string")
    assert len(runs_in(run)) == 2


def test_result(env, run):
    done = run("start", env.hello, "--wait", "--input", '{"name": "Ed"}')[1].splitlines()[0]
    code, out, err = run("result", done[:8])
    assert code == 0, err
    assert json.loads(out) == {"greeting": "hello Ed"}
    code, out, _ = run("result", done, "--json")
    assert json.loads(out) == {"run_id": done, "status": "completed",
                               "result": {"greeting": "hello Ed"}}

    failed = run("start", env.fail, "--wait")[1].splitlines()[0]
    code, out, err = run("result", failed)
    assert code == 1 and out == ""
    assert "failed: RuntimeError: kaput" in err and "tinyworkflow steps" in err
    code, out, _ = run("result", failed, "--json")
    assert code == 1 and json.loads(out) == {"run_id": failed, "status": "failed",
                                             "error": "RuntimeError: kaput"}

    pending = run("start", env.hello)[1].strip()
    code, out, err = run("result", pending)
    assert code == 1 and out == ""
    assert "is pending: it has no result yet" in err and "--wait" in err
    started = time.monotonic()
    code, out, err = run("result", pending, "--timeout", "0.3", "--json")
    assert code == 1 and time.monotonic() - started >= 0.3
    assert json.loads(out) == {"run_id": pending, "status": "pending"}
    assert "still pending after 0.3s" in err
    code, _, err = run("result", "no-such-run", "--wait")
    assert code == 1 and "no run with id" in err


def test_result_wait_sees_a_run_finish_in_another_process(env, run):
    pending = run("start", env.hello, "--input", '{"name": "Flo"}')[1].strip()
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    waiting = subprocess.Popen(
        [sys.executable, "-m", "tinyworkflow", "--db", env.db, "result", pending, "--wait",
         "--timeout", "60"], cwd=env.tmp, env=environ, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        assert waiting.poll() is None  # still waiting
        assert run("recover")[0] == 0
        out, err = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0, err
    assert json.loads(out) == {"greeting": "hello Flo"}


def test_resume_and_fork_do_not_repeat_completed_steps(env, run):
    counter, flag = env.tmp / "count.txt", env.tmp / "flag"
    given = json.dumps({"count": str(counter), "flag": str(flag)})
    code, out, _ = run("start", env.flaky, "--input", given, "--wait")
    assert code == 1
    run_id = out.splitlines()[0]
    assert counter.read_text() == "x"

    code, _, err = run("resume", run_id)  # failed: resumed, but it would fail again...
    assert code == 0, err
    assert json.loads(run("status", run_id, "--json")[1])["status"] == "pending"
    flag.touch()  # ...unless what it lacked is there by the time a worker executes it
    assert run("recover")[0] == 0
    code, out, _ = run("result", run_id)
    assert code == 0 and json.loads(out) == ["counted", "flag found"]
    assert counter.read_text() == "x"  # step 1 was not executed again

    code, _, err = run("resume", run_id)
    assert code == 1 and "only a failed or cancelled run can be resumed" in err

    code, out, err = run("fork", run_id[:8], "--from-step", "2", "--json")
    assert code == 0, err
    forked = json.loads(out)
    assert forked["forked_from"] == run_id and forked["from_step"] == 2
    run("recover")
    assert json.loads(run("result", forked["run_id"])[1]) == ["counted", "flag found"]
    assert counter.read_text() == "x"  # reused, not executed
    code, out, _ = run("fork", run_id, "--from-step", "1")
    run("recover")
    assert counter.read_text() == "xx"  # from step 1: executed again, in the new run
    assert out.strip() != run_id

    code, _, err = run("fork", run_id, "--from-step", "0")
    assert code == 2 and "argument --from-step" in err
    code, _, err = run("fork", "no-such-run", "--from-step", "1")
    assert code == 1 and "no run with id" in err


# ---- schedules, queues, workers ----------------------------------------------------------


def test_schedule_and_schedules(env, run):
    code, out, err = run("schedule", env.hello, "*/5 * * * *", "--input", '{"name": "Gus"}')
    assert code == 0, err
    schedule_id = out.splitlines()[0]
    assert f"{env.hello} */5 * * * * (UTC); next run " in out
    code, out, _ = run("schedule", env.hello, "--every", "90", "--id", "every-90", "--json")
    assert code == 0
    every = json.loads(out)
    assert (every["schedule_id"], every["every"], every["paused"]) == ("every-90", 90.0, False)

    code, out, _ = run("schedules")
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["SCHEDULE", "WORKFLOW", "TIMING"]
    assert rows[0].split()[:2] == [schedule_id[:8], env.hello]
    assert "every 90s" in rows[1] and "active" in rows[1]
    listed = json.loads(run("schedules", "list", "--json")[1])
    assert [s["schedule_id"] for s in listed] == [schedule_id, "every-90"]
    assert listed[0]["input_data"] == {"name": "Gus"}

    code, out, err = run("schedules", "pause", schedule_id[:8])
    assert code == 0 and out.strip() == f"schedule {schedule_id} is paused", err
    code, out, _ = run("schedules", "resume", schedule_id, "--json")
    assert code == 0 and json.loads(out)["paused"] is False
    code, out, _ = run("schedules", "delete", "every-90")
    assert code == 0 and "deleted schedule every-90" in out
    assert [s["schedule_id"] for s in json.loads(run("schedules", "--json")[1])] == [
        schedule_id]
    code, _, err = run("schedules", "delete", "every-90")
    assert code == 1 and "no schedule has the id 'every-90'" in err
    code, _, err = run("schedules", "pause")
    assert code == 2 and "SCHEDULE_ID" in err


@pytest.mark.parametrize("argv, message", [
    (["0 2 * *"], "invalid cron expression '0 2 * *'"),
    (["61 * * * *"], "invalid cron expression"),
    ([], "a schedule takes a cron expression or every=<seconds>"),
    (["0 2 * * *", "--every", "60"], "not both"),
    (["0 2 * * *", "--timezone", "Mars/Olympus"], "Mars/Olympus"),
    (["0 2 * * *", "--input", "{oops"], "not valid JSON"),
    (["--every", "0"], "argument --every"),
])
def test_schedule_bad_input_exits_2_and_stores_nothing(env, run, argv, message):
    code, out, err = run("schedule", env.hello, *argv)
    assert code == 2 and out == ""
    assert "error:" in err and message in err
    assert json.loads(run("schedules", "--json")[1]) == []


def test_schedule_of_an_unregistered_workflow_hints_at_imports(env, run):
    code, _, err = run("schedule", "nobody_" + env.hello, "0 2 * * *", imports=False)
    assert code == 2 and "--import-workflows" in err


def test_queues(env, run):
    for priority in ("1", "2", "3"):
        assert run("start", env.hello, "--queue", env.queue, "--priority", priority)[0] == 0
    code, out, _ = run("queues")
    assert code == 0
    header = out.splitlines()[0].split()
    assert header[:5] == ["QUEUE", "WAITING", "RUNNING", "CONCURRENCY", "PER"]
    (row,) = [line.split() for line in out.splitlines() if line.startswith(env.queue + " ")]
    assert row == [env.queue, "3", "0", "2", "-", "-", "5/60s", "0"]
    run("recover")  # the two the queue lets start...
    run("recover")  # ...then the third
    (queue,) = [q for q in json.loads(run("queues", "--json")[1]) if q["name"] == env.queue]
    assert queue == {"name": env.queue, "concurrency": 2, "worker_concurrency": None,
                     "key_concurrency": None, "rate_limit": [5, 60.0], "waiting": 0,
                     "running": 0, "started_recently": 3,
                     "updated_at": queue["updated_at"]}


# ---- errors and --debug ------------------------------------------------------------------


def test_debug_shows_the_traceback_of_an_error(env, run):
    code, out, err = run("status", "no-such-run", "--debug")
    assert code == 1 and out == ""
    assert "Traceback (most recent call last)" in err and "RunNotFoundError" in err
    assert err.rstrip().splitlines()[-2] == "error: no run with id 'no-such-run'"


@sqlite_only
def test_an_unexpected_error_is_one_line_unless_debug(env, run):
    (env.tmp / "broken_mod.py").write_text("raise RuntimeError('broken at import')\n")
    code, out, err = run("--import-workflows", "broken_mod", "workflows", imports=False)
    assert code == 1 and out == ""
    assert err.splitlines() == ["error: RuntimeError: broken at import",
                                "hint: run again with --debug to see where"]
    code, _, err = run("--import-workflows", "broken_mod", "workflows", "--debug",
                       imports=False)
    assert code == 1 and 'broken_mod.py", line 1' in err


# ---- every command through the real entry point ------------------------------------------


@sqlite_only
def test_every_command_through_python_dash_m(env):
    """Each command once in its own `python -m tinyworkflow` process: exit codes, --json
    parsed, errors on stderr without a traceback."""
    sfx = env.hello.split("_")[1]
    (env.tmp / f"cliapp_{sfx}.py").write_text(APPROVALS.replace("SFX", sfx))
    expense = f"cli_expense_{sfx}"

    def tw(*argv, code=0):
        done = _subprocess(["-m", "tinyworkflow", "--db", env.db, "--import-workflows",
                            env.module, "--import-workflows", f"cliapp_{sfx}", *argv],
                           cwd=env.tmp)
        assert done.returncode == code, (argv, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        if code == 0 and "--json" in argv:
            return json.loads(done.stdout)
        return done

    assert expense in tw("workflows", "--json")["workflows"]
    done = tw("start", env.hello, "--input", '{"name": "Io"}', "--wait")
    run_id = done.stdout.splitlines()[0]
    assert f"step 1 {env.greet}: completed" in done.stderr
    assert tw("status", run_id[:8], "--json")["status"] == "completed"
    assert tw("result", run_id, "--json")["result"] == {"greeting": "hello Io"}
    assert [r["run_id"] for r in tw("list", "--json")] == [run_id]
    assert tw("events", run_id, "--json")[-1]["event_type"] == "workflow_completed"
    assert [s["name"] for s in tw("steps", run_id, "--json")] == [env.greet]
    failed = tw("start", env.fail, "--wait", code=1).stdout.splitlines()[0]
    tw("result", failed, code=1)
    assert tw("resume", failed, "--json") == {"run_id": failed, "resumed": True}
    assert tw("fork", run_id, "--from-step", "1", "--json")["forked_from"] == run_id
    assert len(tw("recover", "--json")) == 2  # the resumed run and the fork

    waiting = tw("start", expense, "--json")["run_id"]
    tw("recover")  # until it waits for the approval
    assert [r["run_id"] for r in tw("approvals", "--json")] == [waiting]
    assert tw("approve", waiting, "--approve", "--json")["decision"] == "approved"
    assert tw("signal", waiting, "note", "--payload", '"ok"', "--json")["signal"] == "note"
    tw("recover")
    assert tw("result", waiting, "--json")["result"] == {"approved": True, "note": "ok"}

    pending = tw("start", env.hello, "--queue", env.queue, "--json")["run_id"]
    (queue,) = [q for q in tw("queues", "--json") if q["name"] == env.queue]
    assert queue["waiting"] == 1
    assert tw("cancel", pending, "--json")["cancelled"] is True
    assert tw("workers", "--json") == []

    schedule_id = tw("schedule", env.hello, "0 2 * * *", "--json")["schedule_id"]
    assert tw("schedules", "pause", schedule_id, "--json")["paused"] is True
    assert tw("schedules", "resume", schedule_id, "--json")["paused"] is False
    assert tw("schedules", "delete", schedule_id, "--json")["deleted"] is True
    assert tw("schedules", "--json") == []
    assert tw("cleanup", "--days", "0", "--json")["deleted"] == 5  # every run had ended
    assert tw("list", "--json") == []

    # The error paths: exit codes, and a message that points at the problem.
    done = tw("start", env.hello, "--input", '{"name": Io}', code=2)
    assert "not valid JSON (Expecting value: line 1 column 10 (char 9))" in done.stderr
    done = tw("signal", run_id, "note", "--payload", "[1,", code=2)
    assert "not valid JSON" in done.stderr
    done = tw("schedule", env.hello, "0 2 * *", code=2)
    assert done.stderr.startswith("error: invalid cron expression")
    assert tw("schedules", "--json") == []
    done = tw("status", "feedbeef-0000", code=1)
    assert done.stderr.startswith("error: no run with id 'feedbeef-0000'")
