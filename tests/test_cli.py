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
# as tinyworkflow_cli, which tinyworkflow._companion("cli") would prefer, stale or not.
_spec = importlib.util.spec_from_file_location("tinyworkflow_cli", ROOT / "cli.py")
cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli)

# Written to tmp_path under a unique module name with unique workflow names: the
# registry is process-global.
WORKFLOWS = '''
from tinyworkflow import workflow, activity, RetryPolicy

NO_RETRY = RetryPolicy(max_retries=0)


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
                           boom=f"boom_{sfx}")


@pytest.fixture
def run(env, capsys):
    """run(*argv) -> (exit code, stdout, stderr), with --db and the module imported."""

    def run(*argv, db=True, imports=True):
        head = (["--db", env.db] if db else []) + (
            ["--import-workflows", env.module] if imports else [])
        capsys.readouterr()
        code = cli.main([*head, *argv])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
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
    assert code == 0 and run_id in out and "completed" in out

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
    assert out.splitlines()[0].startswith("RUN ID")
    assert run_id in out and "failed" in out

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
    assert json.loads(done.stdout)["workflows"] == [env.fail, env.hello]


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

    code, took = worker.signal(stop_signal)
    assert code == 0, worker.stderr()
    assert took < 5
    log = worker.stderr()
    assert f"{signal.Signals(stop_signal).name}: stopping" in log
    assert "worker stopped" in log
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
    assert code == 0 and run_id in out and "manager" in out and "APPROVAL" in out
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
