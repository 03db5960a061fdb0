"""Workers in real processes: ``python -m tinyworkflow worker`` on one database (on
each backend: a SQLite file, PostgreSQL, MySQL), killed with SIGKILL, stopped with
SIGTERM, sharing runs, cancelled from outside.

The test process stores runs (start_workflow with wait=False) and reads the outcome;
the workers execute them. The workflows are in tests/workers_workflows.py: each
activity appends a line to a side-effect file before doing anything else, which counts
executions across processes (the database records outcomes only).
"""

import asyncio
import itertools
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
if TESTS not in sys.path:  # import the helper under one name, whatever pytest's import mode
    sys.path.insert(0, TESTS)

import workers_workflows as ww  # noqa: E402
from tinyworkflow import TinyWorkflowClient  # noqa: E402

pytestmark = [pytest.mark.crash, pytest.mark.skipif(not hasattr(signal, "SIGKILL"),
                                                    reason="needs SIGKILL (POSIX)")]

WORKFLOWS_FILE = os.path.join(TESTS, "workers_workflows.py")
START_LINE = "worker started"


# ---- worker processes -------------------------------------------------------------------


class Worker:
    """One ``tinyworkflow worker`` process; its stdout and stderr go to files (a pipe
    nobody reads could fill up and stall it)."""

    def __init__(self, proc: subprocess.Popen, out: str, err: str):
        self.proc, self.out, self.err = proc, out, err

    @property
    def pid(self) -> int:
        return self.proc.pid

    def owns(self, owner) -> bool:
        """Whether an owner token (host:pid:nonce:claim) is one of this process's."""
        return isinstance(owner, str) and f":{self.pid}:" in owner

    def output(self) -> str:
        parts = []
        for label, path in (("stdout", self.out), ("stderr", self.err)):
            with open(path, encoding="utf-8", errors="replace") as f:
                parts.append(f"--- worker {self.pid} {label}:\n{f.read()}")
        return "\n".join(parts)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"worker {self.pid} exited ({self.proc.returncode}) unexpectedly\n"
                        + self.output())

    async def started(self, timeout: float = 15.0) -> None:
        async def printed():
            self.check_alive()
            with open(self.out, encoding="utf-8") as f:
                return START_LINE in f.read()
        await until(printed, timeout, f"worker {self.pid} to start", self)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    async def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> tuple:
        """Send ``signum``; return (exit code, seconds until the process was gone)."""
        started = time.monotonic()
        self.proc.send_signal(signum)
        while self.proc.poll() is None:
            if time.monotonic() - started > timeout:
                self.kill()
                pytest.fail(f"worker {self.pid} still running {timeout}s after "
                            f"{signal.Signals(signum).name}\n" + self.output())
            await asyncio.sleep(0.005)
        return self.proc.returncode, time.monotonic() - started


@pytest.fixture
def spawn(tmp_path):
    """spawn(url, *options, lease=1.0) -> a started (not yet ready) Worker. Every worker
    still running at the end of the test is killed."""
    workers: list = []
    numbers = itertools.count(1)
    env = dict(os.environ)
    for name in ("TINYWORKFLOW_DATABASE_URL", "TINYWORKFLOW_LEASE_SECONDS"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)

    def spawn(url: str, *options: str, lease: float = 1.0, poll: float = 0.05) -> Worker:
        n = next(numbers)
        out, err = str(tmp_path / f"worker{n}.out"), str(tmp_path / f"worker{n}.err")
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tinyworkflow", "worker",
                 "--import-workflows", WORKFLOWS_FILE, "--db", url,
                 "--lease-seconds", str(lease), "--poll-interval", str(poll), *options],
                cwd=tmp_path, env=env, stdout=stdout, stderr=stderr)
        worker = Worker(proc, out, err)
        workers.append(worker)
        return worker

    try:
        yield spawn
    finally:
        for worker in workers:
            worker.kill()


# ---- helpers ----------------------------------------------------------------------------


async def until(predicate, timeout: float, what: str, *workers: Worker, pause: float = 0.01):
    """Poll ``predicate`` (sync or async) until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        for worker in workers:
            worker.check_alive()
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n"
                        + "\n".join(w.output() for w in workers))
        await asyncio.sleep(pause)


async def events_of(client: TinyWorkflowClient, run_id: str) -> list:
    return await client.get_workflow_events(run_id, limit=10_000)


def count(events: list, event_type: str) -> int:
    return sum(e.event_type == event_type for e in events)


# ---- a) crash loop ----------------------------------------------------------------------

CRASH_KILLS = 20
CRASH_LEASE = 0.5


async def test_crash_loop_sigkill_twenty_times(tmp_path, spawn, db_url):
    """One 20-step run, its worker SIGKILLed at random moments at least 20 times and
    restarted each time. Two kinds of kill:

    - *working* kills: once the current worker has executed a step no earlier worker
      reached (so a step is never in flight at two kills), after a random short pause;
    - *startup* kills: of a worker just started, at most a third of the lease after
      the working kill, while the lease of the worker killed then still runs (it was
      renewed at most a third of the lease before its death), so before it can claim
      the run; a third of the lease is left as margin for a late heartbeat.

    Exact accounting: after each kill the test notes which step the dead worker had
    written a line for but the database does not hold as completed (the step in
    flight); every step's line count must be 1 + the number of kills it was in
    flight at, and every worker must start at the first step not yet recorded."""
    rng = random.Random()
    url, path = db_url, str(tmp_path / "effects.log")
    seed = rng.randrange(1_000_000)
    async with TinyWorkflowClient(url) as client:
        run_id = await client.start_workflow("workers_crash_loop", {"log": path, "seed": seed})

        async def recorded() -> set:
            return {s.step for s in await client.get_workflow_steps(run_id)
                    if s.status == "completed"}

        kills, working_kills, startup_kills = 0, 0, 0
        in_flight_at_kill: Counter = Counter()
        lines_seen, max_step, done_before = 0, 0, set()

        async def account(worker: Worker, expect_work: bool) -> None:
            """After ``worker`` died: check what it ran, note the step it had in flight."""
            nonlocal lines_seen, max_step, done_before
            lines = ww.read_log(path)
            new = [int(line) for line in lines[lines_seen:]]
            lines_seen = len(lines)
            done = await recorded()
            assert done == set(range(1, len(done) + 1)), f"steps recorded out of order: {done}"
            assert done >= done_before
            if expect_work:
                # It resumed at the first step not recorded, and ran steps in order.
                assert new == list(range(len(done_before) + 1, new[-1] + 1)), (new, done_before)
                if new[-1] not in done:
                    in_flight_at_kill[new[-1]] += 1
                max_step = max(max_step, new[-1])
            else:
                assert new == [] and done == done_before, \
                    f"a worker killed at startup executed steps {new}"
            done_before = done

        def wrote_a_new_step() -> bool:
            return any(int(line) > max_step for line in ww.read_log(path)[lines_seen:])

        worker = spawn(url, lease=CRASH_LEASE)
        while kills < CRASH_KILLS or max_step < ww.CRASH_STEPS - 3:  # kills all along
            if max_step >= ww.CRASH_STEPS:
                pytest.fail(f"the run reached its last step after only {kills} kills")
            await until(wrote_a_new_step, 20, "a worker to execute a new step", worker)
            await asyncio.sleep(rng.uniform(0.0, 0.05))
            signalled = time.monotonic()
            worker.kill()
            kills, working_kills = kills + 1, working_kills + 1
            await account(worker, expect_work=True)
            worker = spawn(url, lease=CRASH_LEASE)
            # Kill some while they start, spread over the run, so that there are more
            # kills than steps: a working kill takes the run one or two steps further,
            # and a few steps are kept in reserve.
            working_left = max(1.0, (ww.CRASH_STEPS - 4 - max_step) / 1.5)
            startup_left = CRASH_KILLS - kills - working_left
            for _ in range(min(3, max(0, math.ceil(startup_left / working_left)
                                      + rng.choice((-1, 0, 0, 1))))):
                await asyncio.sleep(rng.uniform(0.0, 0.1))  # starting up, or polling
                if time.monotonic() - signalled > CRASH_LEASE / 3:
                    break  # the lease may expire soon (a late heartbeat): let this one work
                worker.kill()
                kills, startup_kills = kills + 1, startup_kills + 1
                await account(worker, expect_work=False)
                worker = spawn(url, lease=CRASH_LEASE)

        # The last worker finishes the run.
        async def final():
            run = await client.get_workflow_status(run_id)
            return run if run.status in ("completed", "failed", "cancelled") else None
        run = await until(final, 30, "the run to finish", worker, pause=0.05)
        code, _ = await worker.stop()
        assert code == 0, worker.output()

        assert run.status == "completed", run.error
        assert run.output_data == {"result": ww.crash_loop_result(seed)}

        # Side effects: each step once, plus once more for each kill it was in flight at;
        # never twice in flight (the kills above make sure), so at most twice.
        lines = Counter(int(line) for line in ww.read_log(path))
        assert set(lines) == set(range(1, ww.CRASH_STEPS + 1))
        for step in range(1, ww.CRASH_STEPS + 1):
            assert lines[step] == 1 + in_flight_at_kill[step], (step, lines, in_flight_at_kill)
            assert lines[step] <= 2, (step, lines)

        # The database: each step recorded once, completed at its only recorded attempt.
        steps = await client.get_workflow_steps(run_id)
        assert [s.step for s in steps] == list(range(1, ww.CRASH_STEPS + 1))
        assert all(s.name == "workers_crash_step" and s.status == "completed"
                   and s.attempts == 1 for s in steps), steps
        events = await events_of(client, run_id)
        completed = Counter(e.event_data["step"] for e in events
                            if e.event_type == "step_completed")
        assert completed == Counter(range(1, ww.CRASH_STEPS + 1))
        assert count(events, "workflow_completed") == 1
        assert count(events, "workflow_started") == 1
        # Every worker after the first that got to work took the run over by itself
        # once the lease of the killed one expired: no manual recovery call.
        assert count(events, "workflow_resumed") == working_kills
        assert kills >= CRASH_KILLS and startup_kills >= 1, (kills, startup_kills)
        print(f"kills: {working_kills} working, {startup_kills} at startup; "
              f"steps in flight at a kill: {sorted(in_flight_at_kill)}")


# ---- b) several workers, many runs ------------------------------------------------------

# Raise them for a longer soak: TW_TEST_SHARED_RUNS=5000 TW_TEST_SHARED_WORKERS=8
SHARED_RUNS = int(os.environ.get("TW_TEST_SHARED_RUNS", "500"))
SHARED_WORKERS = int(os.environ.get("TW_TEST_SHARED_WORKERS", "4"))


async def test_four_workers_share_500_runs_without_double_execution(
        tmp_path, spawn, db_url):
    url, path = db_url, str(tmp_path / "effects.log")
    # Four processes create the schema of a new database at once.
    workers = [spawn(url, "--concurrency", "25") for _ in range(SHARED_WORKERS)]
    for worker in workers:
        await worker.started()
    async with TinyWorkflowClient(url) as client:
        inputs: dict = {}
        for chunk in range(0, SHARED_RUNS, 50):  # concurrent starts share commits
            batch = [{"log": path, "x": i, "steps": 1 + i % 2}
                     for i in range(chunk, min(chunk + 50, SHARED_RUNS))]
            run_ids = await asyncio.gather(*(client.start_workflow("workers_short", data)
                                             for data in batch))
            inputs.update(zip(run_ids, batch))

        async def all_finished():
            unfinished = 0
            for status in ("pending", "running", "retrying"):
                unfinished += len(await client.list_workflow_executions(
                    status=status, limit=SHARED_RUNS))
            return unfinished == 0
        await until(all_finished, 45 + SHARED_RUNS / 100, "all runs to finish", *workers,
                    pause=0.1)
        for worker in workers:
            code, _ = await worker.stop()
            assert code == 0, worker.output()

        runs = await client.list_workflow_executions(limit=SHARED_RUNS + 1)
        assert len(runs) == SHARED_RUNS
        for run in runs:
            data = inputs[run.run_id]
            assert run.status == "completed", (run.run_id, run.status, run.error)
            assert run.output_data == {"result": ww.short_result(data["x"], data["steps"])}

        # Each activity ran once: exactly the expected lines, each once.
        expected = Counter(f"{run_id}:{step}" for run_id, data in inputs.items()
                           for step in range(1, data["steps"] + 1))
        assert Counter(ww.read_log(path)) == expected

        executors: Counter = Counter()
        for run_id in inputs:
            events = await events_of(client, run_id)
            assert count(events, "workflow_completed") == 1, events
            assert count(events, "workflow_started") == 1, events
            assert count(events, "workflow_resumed") == 0, events  # no lease ran out
            (started,) = [e for e in events if e.event_type == "workflow_started"]
            executors.update(w.pid for w in workers if w.owns(started.event_data["owner"]))
        assert sum(executors.values()) == SHARED_RUNS
        assert len(executors) >= 2, f"one worker executed every run: {executors}"
        print("runs per worker:", sorted(executors.values()))


# ---- c) graceful shutdown ---------------------------------------------------------------


@pytest.mark.parametrize("grace", [0.2, 5.0], ids=["steps-cut-short", "steps-finish"])
async def test_sigterm_releases_runs_to_another_worker_at_once(tmp_path, spawn, db_url, grace):
    """Worker A holds runs under a 30 s lease and gets SIGTERM: it lets the steps in
    flight finish within ``grace`` (or cuts them short), releases its runs and exits 0;
    worker B takes them over at once, not after the lease."""
    runs, step_seconds, lease = 4, 1.0, 30.0
    url, path = db_url, str(tmp_path / "effects.log")
    async with TinyWorkflowClient(url) as client:
        a = spawn(url, "--grace", str(grace), lease=lease)
        await a.started()
        run_ids = [await client.start_workflow(
            "workers_slow", {"log": path, "seconds": step_seconds, "steps": 2})
            for _ in range(runs)]
        await until(lambda: all(f"{r}:1 start" in ww.read_log(path) for r in run_ids), 10,
                    "worker A to start every run", a)
        b = spawn(url, lease=lease)
        await b.started()

        code, took = await a.stop(signal.SIGTERM)
        assert code == 0, a.output()
        # Steps that can finish within the grace do; A does not wait out the grace.
        assert took < min(grace, step_seconds) + 1.5, (took, a.output())
        assert "SIGTERM" in a.output()
        stopped = time.monotonic()

        async def all_completed():
            return all([(await client.get_workflow_status(r)).status == "completed"
                        for r in run_ids])
        await until(all_completed, 10, "worker B to complete the released runs", b)
        assert time.monotonic() - stopped < 10  # the 30 s lease did not have to expire
        code, _ = await b.stop()
        assert code == 0, b.output()

        lines = Counter(ww.read_log(path))
        for run_id in run_ids:
            run = await client.get_workflow_status(run_id)
            assert run.output_data == {"result": [1, 2]}
            events = await events_of(client, run_id)
            types = [e.event_type for e in events]
            (released,) = [e for e in events if e.event_type == "workflow_released"]
            (resumed,) = [e for e in events if e.event_type == "workflow_resumed"]
            assert a.owns(released.event_data["owner"]), released
            assert b.owns(resumed.event_data["owner"]), resumed
            assert types.index("workflow_released") < types.index("workflow_resumed")
            assert (resumed.timestamp - released.timestamp).total_seconds() < 2.0
            assert count(events, "workflow_completed") == 1
            if grace < step_seconds:
                # Cut short: step 1 ran again in B (at least once: the in-flight step).
                assert lines[f"{run_id}:1 start"] == 2 and lines[f"{run_id}:1 end"] == 1
            else:
                # Finished in A within the grace: B ran step 2 only.
                assert lines[f"{run_id}:1 start"] == 1 and lines[f"{run_id}:1 end"] == 1
            assert lines[f"{run_id}:2 start"] == 1 and lines[f"{run_id}:2 end"] == 1
            assert [s.attempts for s in await client.get_workflow_steps(run_id)] == [1, 1]


async def test_concurrency_option_bounds_the_runs_a_worker_executes_at_once(
        tmp_path, spawn, db_url):
    url, path = db_url, str(tmp_path / "effects.log")
    async with TinyWorkflowClient(url) as client:
        worker = spawn(url, "--concurrency", "2")
        await worker.started()
        run_ids = await asyncio.gather(*(client.start_workflow(
            "workers_slow", {"log": path, "seconds": 0.3, "steps": 1}) for _ in range(6)))

        async def all_completed():
            return all([(await client.get_workflow_status(r)).status == "completed"
                        for r in run_ids])
        await until(all_completed, 15, "the runs to complete", worker, pause=0.05)
        code, _ = await worker.stop()
        assert code == 0, worker.output()
    executing, most = 0, 0
    for line in ww.read_log(path):  # one process: the file's order is the order in time
        executing += 1 if line.endswith(" start") else -1
        most = max(most, executing)
    assert most == 2


async def test_a_process_without_the_code_starts_a_run_a_worker_serves(
        tmp_path, spawn, db_url):
    """Workers advertise what they serve: the command line, without --import-workflows,
    starts a run by name and a worker process executes it."""
    url, path = db_url, str(tmp_path / "effects.log")
    worker = spawn(url)
    await worker.started()
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("TINYWORKFLOW_DATABASE_URL", None)
    started = subprocess.run(
        [sys.executable, "-m", "tinyworkflow", "--db", url, "start", "workers_short",
         "--input", f'{{"log": "{path}", "x": 5, "steps": 2}}'],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    async with TinyWorkflowClient(url) as client:
        async def completed():
            run = await client.get_workflow_status(run_id)
            return run if run.status == "completed" else None
        run = await until(completed, 10, "the worker to execute the run", worker)
        assert run.output_data == {"result": ww.short_result(5, 2)}
        code, _ = await worker.stop()
        assert code == 0, worker.output()


# ---- d) cancellation from another process -----------------------------------------------


async def test_cancel_from_another_process_stops_the_run_within_a_lease_renewal(
        tmp_path, spawn, db_url):
    lease, ticks, interval = 1.0, 30, 0.1
    url, path = db_url, str(tmp_path / "effects.log")
    async with TinyWorkflowClient(url) as client:
        worker = spawn(url, lease=lease)
        await worker.started()
        run_id = await client.start_workflow(
            "workers_cancellable", {"log": path, "ticks": ticks, "interval": interval})
        # At a random moment relative to the worker's lease renewals.
        wait_ticks = random.randint(3, 10)
        await until(lambda: [line for line in ww.read_log(path)
                             if line.startswith("tick ")][wait_ticks:], 10,
                    "the long activity to run", worker)
        ticking_since = float(ww.read_log(path)[1].split()[2])

        cancelled_at = time.time()
        assert await client.cancel_workflow(run_id) is True
        assert (await client.get_workflow_status(run_id)).status == "cancelled"

        # Past the moment the activity would have finished, had it not been stopped.
        await asyncio.sleep(max(0.0, ticking_since + ticks * interval + 0.5 - time.time()))
        worker.check_alive()
        lines = ww.read_log(path)
        last_tick = max(float(line.split()[2]) for line in lines if line.startswith("tick "))
        # Stopped at its next lease renewal (every lease/3), give or take a write.
        assert last_tick - cancelled_at < lease / 3 + 0.3, (last_tick - cancelled_at, lines)
        print(f"last tick {last_tick - cancelled_at:.3f}s after the cancellation")
        assert "ticking done" not in lines and "after" not in lines, lines

        run = await client.get_workflow_status(run_id)
        assert run.status == "cancelled" and run.output_data is None
        events = await events_of(client, run_id)
        assert count(events, "workflow_cancelled") == 1
        assert count(events, "workflow_completed") == 0
        assert [(s.step, s.status) for s in await client.get_workflow_steps(run_id)] == [
            (1, "completed")]
        assert run_id in worker.output()  # its log says why it stopped, with the run id

        # The worker carries on serving.
        other = await client.start_workflow("workers_short",
                                            {"log": str(tmp_path / "other.log"), "x": 3,
                                             "steps": 1})

        async def other_completed():
            return (await client.get_workflow_status(other)).status == "completed"
        await until(other_completed, 10, "the worker to run another workflow", worker)
        code, _ = await worker.stop()
        assert code == 0, worker.output()
        assert (await client.get_workflow_status(run_id)).status == "cancelled"


# ---- a blocking step at shutdown --------------------------------------------------------


async def test_sigterm_never_hands_over_a_run_whose_blocking_step_still_runs(
        tmp_path, spawn, db_url):
    """A sync activity runs in a thread, which cancellation cannot stop. When the grace
    runs out, worker A must not release the run while that thread still executes its
    step: worker B would execute the same step of the same run at the same time."""
    url, path = db_url, str(tmp_path / "effects.log")
    async with TinyWorkflowClient(url) as client:
        a = spawn(url, "--grace", "0.2", lease=30.0)
        await a.started()
        run_id = await client.start_workflow("workers_blocking", {"log": path, "seconds": 2.0})
        await until(lambda: ww.read_log(path), 10, "worker A to start the step", a)
        b = spawn(url, lease=30.0)
        await b.started()
        code, _ = await a.stop(signal.SIGTERM)
        assert code == 0, a.output()

        async def finished():
            run = await client.get_workflow_status(run_id)
            return run if run.status in ("completed", "failed", "cancelled") else None
        run = await until(finished, 15, "the run to finish", b, pause=0.05)
        assert run.status == "completed" and run.output_data == {"result": 1}
        code, _ = await b.stop()
        assert code == 0, b.output()

        # "<run>:1 start|end <pid> <time>": the executions of step 1, by process.
        spans: dict = {}
        for line in ww.read_log(path):
            _, what, pid, at = line.split()
            spans.setdefault(int(pid), {})[what] = float(at)
        assert set(spans) <= {a.pid, b.pid} and a.pid in spans, spans
        if b.pid in spans:  # B ran it again: only once A's execution was over
            assert spans[b.pid]["start"] >= spans[a.pid]["end"], (
                f"step 1 ran in both workers at once: A {spans[a.pid]}, B {spans[b.pid]}")
