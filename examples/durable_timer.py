"""Durable timers: a free trial that reminds the user after a wait, with ctx.sleep().

    python examples/durable_timer.py

The workflow starts a trial, sleeps, then sends a reminder. The sleep is a step: its
deadline is stored in the database when the workflow first reaches it (timer_set), so a
run resumed after a crash or a restart wakes at the original deadline, and a timer that
fired (timer_fired) never waits again on a replay. A real trial would sleep for days
(ctx.sleep(14 * 86400)); here it is 2 s so the example finishes fast.

A wait longer than a second parks the run: it stays `running` in the database, but no
worker holds it and nothing is in memory. To show it, the worker here has ONE slot
(worker_concurrency=1) and three trials start at once: they all sleep side by side and
finish after about 2 s, not 3 x 2 s.

Runs on the default SQLite file ./tinyworkflow.db (or $TINYWORKFLOW_DATABASE_URL).
"""

import asyncio
import time

from tinyworkflow import TinyWorkflowClient, WorkflowContext, activity, workflow

TRIAL_SECONDS = 2  # days, in real life


@activity(name="timer_start_trial")
async def start_trial(user: str) -> dict:
    # Stand-in for creating the subscription: deterministic data, no network needed.
    return {"user": user, "plan": "pro-trial", "email": f"{user}@example.com"}


@activity(name="timer_send_reminder")
async def send_reminder(trial: dict) -> str:
    return f"reminder sent to {trial['email']}: your {trial['plan']} ends soon"


@workflow(name="timer_trial_reminder", timeout=60)
async def trial_reminder(ctx: WorkflowContext) -> str:
    trial = await ctx.execute_activity(start_trial, ctx.get_input("user"))
    # A durable timer: recorded in the database, survives a restart of every process.
    await ctx.sleep(ctx.get_input("seconds", TRIAL_SECONDS))
    return await ctx.execute_activity(send_reminder, trial)


# The audit trail's events about the timer, and what each says.
DESCRIBE = {
    "timer_set": lambda d: f"step {d['step']}: deadline {d['at'][11:23]} stored",
    "workflow_waiting": lambda d: "parked: no worker slot held, nothing in memory",
    "timer_fired": lambda d: f"step {d['step']}: woke {d['late_ms']:.0f} ms after the deadline",
}


async def main() -> None:
    async with TinyWorkflowClient(worker_concurrency=1) as client:
        await client.start_worker()  # one slot: a run that held it while asleep would block
        started = time.monotonic()
        run_ids = [await client.start_workflow("timer_trial_reminder", {"user": user})
                   for user in ("ada", "grace", "linus")]
        results = [await client.wait_for_result(run_id, timeout=30) for run_id in run_ids]
        elapsed = time.monotonic() - started
        await client.stop_worker()

        timers = []
        for run_id, result in zip(run_ids, results):
            print(f"run {run_id[:8]}: {result}")
            events = await client.get_workflow_events(run_id)
            for event in events:
                if event.event_type in DESCRIBE:
                    print(f"  {event.timestamp:%H:%M:%S.%f}"[:-3] + f"  {event.event_type:<16} "
                          + DESCRIBE[event.event_type](event.event_data or {}))
            timers.append([e.event_type for e in events if e.event_type.startswith("timer_")])
        print(f"3 trials of {TRIAL_SECONDS} s each on a 1-slot worker took {elapsed:.1f} s")

        if any(t != ["timer_set", "timer_fired"] for t in timers):
            raise SystemExit(f"expected one timer_set and one timer_fired per run: {timers}")
        if elapsed > 2.5 * TRIAL_SECONDS:
            raise SystemExit(f"the sleeping runs held the worker's slot ({elapsed:.1f} s)")

if __name__ == "__main__":
    asyncio.run(main())
