"""Resume after the process is gone: real child processes killed with SIGKILL.

The child (tests/crash_worker.py) executes a workflow from tests/crash_workflows.py
against the database under test (each backend) with a short lease; the test kills it,
then recovers the run in this process once the lease has expired and checks what ran
where, using the activities' side-effect log and the database.
"""

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
if TESTS not in sys.path:  # import the helper under one name, whatever pytest's import mode
    sys.path.insert(0, TESTS)

import crash_workflows as cw  # noqa: E402
import dbutil  # noqa: E402
from tinyworkflow import TinyWorkflowClient  # noqa: E402

pytestmark = [pytest.mark.crash, pytest.mark.skipif(not hasattr(signal, "SIGKILL"),
                                                    reason="needs SIGKILL (POSIX)")]

CHILD_LEASE = 1.0  # seconds; the child's claim of the run expires this long after its last write
RUN_EVENTS = ("workflow_created", "workflow_started", "workflow_resumed", "workflow_retrying",
              "workflow_completed", "workflow_failed", "workflow_cancelled")


def spawn(tmp_path, url: str, workflow_name: str, input_data: dict, **env) -> subprocess.Popen:
    child_env = dict(os.environ)
    child_env.pop("TINYWORKFLOW_DATABASE_URL", None)
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    child_env["TINYWORKFLOW_LEASE_SECONDS"] = str(CHILD_LEASE)
    child_env.update(env)
    return subprocess.Popen(
        [sys.executable, os.path.join(TESTS, "crash_worker.py"), url,
         workflow_name, json.dumps(input_data)],
        cwd=tmp_path, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_log(proc: subprocess.Popen, log_path: str, predicate, timeout: float = 15.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = cw.read_log(log_path)
        if predicate(lines):
            return lines
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"child exited ({proc.returncode}) before the expected log line; "
                        f"log={lines!r}\nstdout={out.decode()}\nstderr={err.decode()}")
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    pytest.fail(f"timed out waiting for the child; log={cw.read_log(log_path)!r}")


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        stream.close()


async def only_run(client: TinyWorkflowClient, workflow_name: str):
    runs = await client.list_workflow_executions(workflow_name=workflow_name)
    assert len(runs) == 1, runs
    return runs[0]


async def recover_until_final(client: TinyWorkflowClient, run_id: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        await client.recover_workflows()
        run = await client.get_workflow_status(run_id)
        if run.status in ("completed", "failed", "cancelled"):
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run.status} after {timeout} s"
        await asyncio.sleep(0.05)


def run_events(events) -> list:
    return [e.event_type for e in events if e.event_type in RUN_EVENTS]


async def test_run_killed_during_long_activity_resumes_from_that_activity(tmp_path, db_url):
    log_path = str(tmp_path / "side_effects.log")
    proc = spawn(tmp_path, db_url, "crash_test_three_steps", {"log": log_path, "x": 4},
                 **{cw.LONG_SLEEP_ENV: "30"})
    try:
        wait_for_log(proc, log_path, lambda lines: "act3 start" in lines)
    finally:
        kill(proc)
    assert proc.returncode == -signal.SIGKILL
    assert cw.read_log(log_path) == ["act1", "act2", "act3 start"]

    async with TinyWorkflowClient(db_url, lease_seconds=1) as client:
        run = await only_run(client, "crash_test_three_steps")
        assert run.status == "running"
        assert f":{proc.pid}:" in run.owner  # still held by the dead process
        steps = await client.get_workflow_steps(run.run_id)
        assert [(s.step, s.status) for s in steps] == [(1, "completed"), (2, "completed")]
        # The lease the dead child left: its heartbeat renews it every third of the lease
        # (a step write does not), so it ends at least 2/3 of a lease after step 2.
        (lease_expiry,), = await dbutil.rows(
            db_url, "SELECT lease_expires_at FROM tinyworkflow_runs WHERE run_id = ?",
            (run.run_id,))
        assert lease_expiry >= steps[-1].completed_at.timestamp() + CHILD_LEASE / 2

        deadline = time.monotonic() + 10
        while not (recovered := await client.recover_workflows()):
            assert time.monotonic() < deadline, "the dead child's lease never expired"
            await asyncio.sleep(0.05)
        assert recovered == [run.run_id]

        final = await client.get_workflow_status(run.run_id)
        assert final.status == "completed", final.error
        assert final.output_data == {"result": cw.three_steps_result(4)}
        assert final.retry_count == 0 and final.error is None and final.owner is None

        lines = cw.read_log(log_path)
        assert lines.count("act1") == 1 and lines.count("act2") == 1  # never re-executed
        assert lines.count("act3 start") == 2  # killed in flight, then run again
        assert lines.count("act3 end") == 1
        assert lines[3:] == ["act3 start", "act3 end"]

        steps = await client.get_workflow_steps(run.run_id)
        assert [(s.step, s.name, s.status) for s in steps] == [
            (1, "crash_test_quick_one", "completed"),
            (2, "crash_test_quick_two", "completed"),
            (3, "crash_test_long", "completed")]

        events = await client.get_workflow_events(run.run_id)
        assert run_events(events) == ["workflow_created", "workflow_started",
                                      "workflow_resumed", "workflow_completed"]
        resumed = next(e for e in events if e.event_type == "workflow_resumed")
        assert resumed.timestamp.timestamp() > lease_expiry, "taken over before the lease expired"
        assert f":{proc.pid}:" in resumed.event_data["previous_owner"]
        assert f":{os.getpid()}:" in resumed.event_data["owner"]


KILL_SLOTS = 5  # kill moments are spread over five slices of the run, one per test
STEP_SLEEP = 0.04
_SEED = int(os.environ.get("TW_CRASH_TEST_SEED", random.randrange(2**32)))


@pytest.mark.parametrize("name", ["crash_test_ten_steps", "crash_test_ten_direct_steps"])
@pytest.mark.parametrize("slot", range(KILL_SLOTS))
async def test_kill_at_random_moment_then_recover_matches_uninterrupted_run(
        tmp_path, db_url, slot, name):
    rng = random.Random(_SEED * 100 + slot)
    # Kill somewhere in slice `slot` of the run (measured from its first step's start);
    # the last slice reaches a little past the end, so a kill may also find it finished.
    duration = cw.STEPS * (STEP_SLEEP + 0.01)
    delay = rng.uniform(slot, slot + 1.1) * duration / KILL_SLOTS
    where = f"({name}, seed {_SEED}, slot {slot}, kill {delay:.3f} s after step 1 started)"
    log_path = str(tmp_path / "side_effects.log")
    proc = spawn(tmp_path, db_url, name, {"log": log_path, "seed": slot},
                 **{cw.STEP_SLEEP_ENV: str(STEP_SLEEP)})
    try:
        wait_for_log(proc, log_path, lambda lines: "1" in lines)
        time.sleep(delay)
    finally:
        kill(proc)
    before_kill = [int(line) for line in cw.read_log(log_path)]  # the child is dead: final

    async with TinyWorkflowClient(db_url, lease_seconds=1) as client:
        run = await only_run(client, name)
        steps_before = await client.get_workflow_steps(run.run_id)
        done_before = {s.step for s in steps_before if s.status == "completed"}
        assert [s.step for s in steps_before] == sorted(done_before), where
        assert done_before == set(range(1, len(done_before) + 1)), where
        assert set(before_kill) >= done_before, where

        final = await recover_until_final(client, run.run_id)
        assert final.status == "completed", f"{final.error} {where}"
        assert final.output_data == {"result": cw.ten_steps_result(slot)}, where

        steps = await client.get_workflow_steps(run.run_id)
        assert [s.step for s in steps] == list(range(1, cw.STEPS + 1)), where
        assert all(s.status == "completed" and s.name == "crash_test_numbered_step"
                   for s in steps), where
        # Steps recorded before the kill kept their records (and were not replaced).
        old = {s.step: (s.output, s.completed_at) for s in steps_before}
        assert {s.step: (s.output, s.completed_at) for s in steps if s.step in old} == old, where

        after_kill = [int(line) for line in cw.read_log(log_path)][len(before_kill):]
        assert not set(after_kill) & done_before, f"completed steps ran again {where}"
        # The resumed run executes exactly the steps not recorded, once each, in order.
        assert after_kill == list(range(len(done_before) + 1, cw.STEPS + 1)), where
        # Only the step in flight at the kill may have run in both processes.
        twice = {n for n in range(1, cw.STEPS + 1) if (before_kill + after_kill).count(n) > 1}
        assert twice <= {len(done_before) + 1}, where

        kinds = run_events(await client.get_workflow_events(run.run_id))
        if run.status == "completed":  # the child finished before it was killed
            assert kinds == ["workflow_created", "workflow_started", "workflow_completed"]
        else:
            assert kinds == ["workflow_created", "workflow_started", "workflow_resumed",
                             "workflow_completed"], where


async def test_live_executor_keeps_its_lease_during_a_long_activity(tmp_path, db_url):
    """An executor that is alive and inside a long activity still owns its run: the
    lease must be renewed while the activity runs (DESIGN: "renews it while working"),
    so recovery elsewhere must not take the run over and run the activity twice."""
    log_path = str(tmp_path / "side_effects.log")
    long_sleep = 3 * CHILD_LEASE
    proc = spawn(tmp_path, db_url, "crash_test_three_steps", {"log": log_path, "x": 1},
                 **{cw.LONG_SLEEP_ENV: str(long_sleep)})
    try:
        wait_for_log(proc, log_path, lambda lines: "act3 start" in lines)
        async with TinyWorkflowClient(db_url, lease_seconds=1) as client:
            run = await only_run(client, "crash_test_three_steps")
            steps = await client.get_workflow_steps(run.run_id)
            # Well past the lease the child took with its last step write, while the
            # child is still sleeping inside activity 3.
            wait = steps[-1].completed_at.timestamp() + 1.5 * CHILD_LEASE - time.time()
            await asyncio.sleep(max(wait, 0))
            assert proc.poll() is None, "the child should still be inside activity 3"
            taken = await client.recover_workflows()
            out, err = proc.communicate(timeout=long_sleep + 10)
            assert taken == [], (
                f"run {run.run_id} was taken over from a live executor (pid {proc.pid}) "
                f"whose lease was not renewed during a {long_sleep} s activity")
            assert proc.returncode == 0, err.decode()
            final = await client.get_workflow_status(run.run_id)
            assert final.status == "completed"
            assert final.output_data == {"result": cw.three_steps_result(1)}
            assert cw.read_log(log_path).count("act3 start") == 1
    finally:
        kill(proc)
