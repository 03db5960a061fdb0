"""Fan-out/fan-in: three activities at once, then one that joins their results.

    python examples/parallel_workflow.py

The "user_report" workflow of the usage guide fetches a user, their orders and their
preferences side by side with ctx.execute_parallel, then builds a report from the three.
Each branch is a step of its own, numbered in call order (1, 2, 3) whatever order they
finish in, so a replay after a crash finds each recorded result where it left it. The
example prints the report and each step's start and end within the run: the three
fetches overlap, so the run takes about one fetch's time, not three.

Runs on the default SQLite file ./tinyworkflow.db (or $TINYWORKFLOW_DATABASE_URL).
"""

import asyncio

from tinyworkflow import TinyWorkflowClient, WorkflowContext, activity, workflow


# Stand-ins for three slow services: each waits 0.3 s, then returns fixed data.
@activity(name="fetch_user")
async def fetch_user(user_id: str) -> dict:
    await asyncio.sleep(0.3)
    return {"id": user_id, "name": "Ada Lovelace", "email": f"{user_id}@example.com"}


@activity(name="fetch_orders")
async def fetch_orders(user_id: str) -> list:
    await asyncio.sleep(0.3)
    return [{"order": f"{user_id}-{n}", "total": n * 25.0} for n in (1, 2, 3)]


@activity(name="fetch_preferences")
async def fetch_preferences(user_id: str) -> dict:
    await asyncio.sleep(0.3)
    return {"language": "en", "newsletter": True}


@activity(name="generate_report")
def generate_report(user: dict, orders: list, preferences: dict) -> dict:
    return {"id": f"report-{user['id']}", "name": user["name"], "orders": len(orders),
            "spent": sum(o["total"] for o in orders), "language": preferences["language"]}


@workflow(name="user_report")
async def parallel_workflow(ctx: WorkflowContext) -> dict:
    user_id = ctx.get_input("user_id")
    # Fan out: one step per branch; every branch is recorded before an error is raised.
    user, orders, preferences = await ctx.execute_parallel(
        (fetch_user, (user_id,), {}),
        (fetch_orders, (user_id,), {}),
        (fetch_preferences, (user_id,), {}),
    )
    # Fan in: a retry of the run would not fetch again, only run what had not finished.
    report = await ctx.execute_activity(generate_report, user, orders, preferences)
    return {"report_id": report["id"], "report": report}


async def main() -> None:
    async with TinyWorkflowClient() as client:
        run_id = await client.start_workflow("user_report", {"user_id": "u-42"}, wait=True)
        run = await client.get_workflow_status(run_id)
        print(f"run {run_id}: {run.status}")
        if run.status != "completed":
            raise SystemExit(f"workflow failed: {run.error}")
        print(f"report: {run.output_data['result']['report']}")

        steps = await client.get_workflow_steps(run_id)
        start = min(step.started_at for step in steps)
        for step in steps:
            print(f"  step {step.step} {step.name:<17} "
                  f"{(step.started_at - start).total_seconds():5.2f} s -> "
                  f"{(step.completed_at - start).total_seconds():5.2f} s")
        fetches = steps[:3]
        if not max(s.started_at for s in fetches) < min(s.completed_at for s in fetches):
            raise SystemExit("the three fetches did not run at the same time")
        took = (run.completed_at - run.started_at).total_seconds()
        print(f"three 0.3 s fetches in parallel: the run took {took:.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
