"""Cron schedules, an interval schedule and a delayed run, kept in the database.

    python examples/scheduling_workflow.py

Declares the usage guide's schedules (daily backup at 2:00, a health check every five
minutes, a weekly report on Mondays at 9:00 in Paris) under fixed ids, so running the
example again finds them instead of adding more, and lists their next times. Then it
shows runs starting for real: a cron schedule with a seconds field (every 2 s), an
interval (every 1.5 s) and a run delayed by 2 s, with a worker in this process for about
five seconds. Each run records the schedule and the due time it was started for.

Runs on the default SQLite file ./tinyworkflow.db (or $TINYWORKFLOW_DATABASE_URL).
"""

import asyncio

from tinyworkflow import TinyWorkflowClient, WorkflowContext, activity, workflow


@activity(name="backup_database")
async def backup_database() -> str:
    return "backup-ok"  # stand-in for the real work


@activity(name="ping_services")
async def ping_services(services: list) -> dict:
    return {name: "up" for name in services}


@workflow(name="daily_backup")
async def daily_backup(ctx: WorkflowContext) -> str:
    return await ctx.execute_activity(backup_database)


@workflow(name="health_check")
async def health_check(ctx: WorkflowContext) -> dict:
    return await ctx.execute_activity(ping_services, ctx.get_input("services", ["api", "db"]))


@workflow(name="weekly_report")
async def weekly_report(ctx: WorkflowContext) -> str:
    return f"report for week of {ctx.now().date()}"


@workflow(name="reminder_task")
async def reminder_task(ctx: WorkflowContext) -> str:
    return f"reminded about task {ctx.get_input('task_id')}"


async def main() -> None:
    async with TinyWorkflowClient() as client:
        # The guide's schedules. Fixed ids: declaring one again returns it unchanged.
        await client.schedule_workflow("daily_backup", "0 2 * * *", {},
                                       schedule_id="example-daily-backup")
        await client.schedule_workflow("health_check", "*/5 * * * *",
                                       schedule_id="example-health-check")
        await client.schedule_workflow("weekly_report", "0 9 * * 1", timezone="Europe/Paris",
                                       schedule_id="example-weekly-report")
        for schedule in await client.list_schedules():
            timing = schedule.cron_expression or f"every {schedule.every:g} s"
            print(f"{schedule.schedule_id:<24} {schedule.workflow_name:<14} {timing:<14} "
                  f"{schedule.timezone:<13} next {schedule.next_run_at:%Y-%m-%d %H:%M %Z}")

        # Runs that start while we watch: every 2 s (six fields: seconds first), every
        # 1.5 s, and one run 2 s from now.
        fast = await client.schedule_workflow("health_check", "*/2 * * * * *",
                                              {"services": ["api"]})
        interval = await client.schedule_workflow("health_check", every=1.5,
                                                  input_data={"services": ["db"]})
        delayed = await client.schedule_delayed_workflow(
            "reminder_task", delay_seconds=2, input_data={"task_id": "123"})
        await client.start_worker()
        await asyncio.sleep(5)
        # Paused first: no new run starts while the worker stops.
        for schedule_id in (fast, interval):
            await client.pause_schedule(schedule_id)
        await client.stop_worker()

        for schedule_id in (fast, interval):
            runs = [r for r in await client.list_workflow_executions(limit=100)
                    if r.schedule_id == schedule_id]
            print(f"schedule {schedule_id[:8]}: {len(runs)} runs, due at "
                  + ", ".join(f"{r.scheduled_for:%H:%M:%S.%f}"[:-3] for r in
                              sorted(runs, key=lambda r: r.scheduled_for)))
            await client.delete_schedule(schedule_id)
            if not runs or any(r.status != "completed" for r in runs):
                raise SystemExit(f"schedule {schedule_id} did not complete its runs")
        print(f"delayed run: {await client.wait_for_result(delayed, timeout=10)}")


if __name__ == "__main__":
    asyncio.run(main())
