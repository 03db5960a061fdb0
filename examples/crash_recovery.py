"""Crash recovery: a worker process is killed mid-run; another one finishes the run.

    python examples/crash_recovery.py

Starts a worker in a subprocess (`python -m tinyworkflow worker --import-workflows
<this file>`), starts a four-step batch job, and kills the worker with SIGKILL once step
2 has completed: no clean shutdown, no chance to save anything. Then a second worker
process starts; once the dead worker's lease (2 s here, 30 s by default) has expired it
takes the run over and resumes it by replay: steps 1 and 2 return their recorded
results without running again, the step that was in flight at the crash runs again
(at-least-once: activities with outside effects use activity_info().idempotency_key),
and the rest runs. Each step appends a line to a log file, so the executions can be
counted.

Runs on the default SQLite file ./tinyworkflow.db (or $TINYWORKFLOW_DATABASE_URL),
shared by this process and the workers. Takes about 5 s.
"""

import asyncio
import collections
import contextlib
import os
import subprocess
import sys
import tempfile

import tinyworkflow
from tinyworkflow import RunStateError, TinyWorkflowClient, WorkflowContext, activity, workflow

STEPS = 4


@activity(name="crash_process_batch")
async def process_batch(log_path: str, step: int) -> str:
    with open(log_path, "a") as log:  # one line per execution of the step
        log.write(f"step {step} executed by worker pid {os.getpid()}\n")
    await asyncio.sleep(0.6)  # stand-in for slow work
    return f"batch {step} done"


@workflow(name="crash_batch_job", timeout=60)
async def batch_job(ctx: WorkflowContext) -> list:
    return [await ctx.execute_activity(process_batch, ctx.get_input("log"), step)
            for step in range(1, STEPS + 1)]


def start_worker(database_url: str) -> subprocess.Popen:
    """`tinyworkflow worker` in a new process, serving the workflows of this file."""
    library = os.path.dirname(os.path.abspath(tinyworkflow.__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [library, os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, "-m", "tinyworkflow", "worker", "--import-workflows",
         os.path.abspath(__file__), "--db", database_url, "--lease-seconds", "2",
         "--poll-interval", "0.2", "--grace", "1"], env=env)


async def main() -> None:
    database_url = (os.environ.get("TINYWORKFLOW_DATABASE_URL")
                    or "sqlite+aiosqlite:///" + os.path.abspath("tinyworkflow.db"))
    workers, run_id = [], None
    with tempfile.TemporaryDirectory() as folder:
        log_path = os.path.join(folder, "steps.log")
        async with TinyWorkflowClient(database_url) as client:  # no worker in this process
            try:
                workers.append(start_worker(database_url))
                run_id = await client.start_workflow("crash_batch_job", {"log": log_path})
                print(f"run {run_id[:8]} started; worker pid {workers[0].pid} executes it")
                while sum(s.status == "completed" for s in
                          await client.get_workflow_steps(run_id)) < 2:
                    if workers[0].poll() is not None:
                        raise SystemExit(f"the worker exited early ({workers[0].returncode})")
                    await asyncio.sleep(0.05)
                workers[0].kill()  # SIGKILL right after step 2 was recorded
                workers[0].wait()
                print(f"step 2 recorded: worker pid {workers[0].pid} killed with SIGKILL")

                workers.append(start_worker(database_url))
                print(f"worker pid {workers[1].pid} started")
                result = await client.wait_for_result(run_id, timeout=20)
                print(f"run {run_id[:8]} completed: {result}")
                for event in await client.get_workflow_events(run_id):
                    if event.event_type in ("workflow_started", "workflow_resumed"):
                        print(f"  {event.event_type:<16} {event.event_data}")
            finally:  # on every exit path: stop the workers, leave no unfinished run behind
                for worker in workers:
                    if worker.poll() is None:
                        worker.terminate()  # SIGTERM: a graceful stop
                        try:
                            worker.wait(timeout=10)
                        except subprocess.TimeoutExpired:
                            worker.kill()
                            worker.wait()
                if run_id is not None:
                    with contextlib.suppress(RunStateError):  # raised if it has finished
                        await client.cancel_workflow(run_id)
        with open(log_path) as log:
            lines = log.read().splitlines()

    print("step log:\n  " + "\n  ".join(lines))
    runs = collections.Counter(int(line.split()[1]) for line in lines)
    if runs[1] != 1 or runs[2] != 1 or runs[STEPS] != 1 or runs[3] not in (1, 2):
        raise SystemExit(f"steps 1, 2 and {STEPS} should run once, step 3 once or twice "
                         f"(in flight at the crash): {dict(runs)}")
    print(f"executions per step: {dict(sorted(runs.items()))}: steps 1-2 not repeated"
          + ("; step 3, in flight at the crash, ran again" if runs[3] == 2 else ""))


if __name__ == "__main__":
    asyncio.run(main())
