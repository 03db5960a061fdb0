"""A small ETL workflow: three sequential activities, recorded step by step.

    python examples/simple_workflow.py

Runs on the default SQLite file ./tinyworkflow.db (or $TINYWORKFLOW_DATABASE_URL).
Run it twice: each run is stored, with its steps and audit trail.
"""

import asyncio

from tinyworkflow import RetryPolicy, TinyWorkflowClient, WorkflowContext, activity, workflow


@activity(name="fetch_data")
async def fetch_data(url: str) -> dict:
    # Stand-in for an HTTP call: deterministic data, no network needed.
    return {"url": url, "rows": [{"id": i, "amount": i * 10} for i in range(1, 6)]}


@activity(name="process_data")
def process_data(data: dict) -> dict:  # a plain function: runs in a thread
    return {"count": len(data["rows"]), "total": sum(r["amount"] for r in data["rows"])}


@activity(name="save_result", retry_policy=RetryPolicy(max_retries=5, initial_delay=0.5))
async def save_result(summary: dict) -> dict:
    return {"id": f"report-{summary['count']}-{summary['total']}", **summary}


@workflow(name="simple_etl", timeout=60)
async def simple_etl(ctx: WorkflowContext) -> dict:
    data = await ctx.execute_activity(fetch_data, ctx.get_input("url"))
    summary = await ctx.execute_activity(process_data, data)
    saved = await ctx.execute_activity(save_result, summary)
    return {"status": "completed", "result_id": saved["id"], "total": saved["total"]}


async def main() -> None:
    async with TinyWorkflowClient() as client:
        run_id = await client.start_workflow(
            "simple_etl", input_data={"url": "https://api.example.com/orders"}, wait=True)
        run = await client.get_workflow_status(run_id)
        print(f"run {run_id}: {run.status}")
        print(f"output: {run.output_data}")
        for step in await client.get_workflow_steps(run_id):
            print(f"  step {step.step} {step.name:<13} {step.status} "
                  f"({step.attempts} attempt, {step.duration * 1000:.1f} ms)")
        print(f"audit trail: {len(await client.get_workflow_events(run_id))} events; "
              f"database: {client.database_url}")
        if run.status != "completed":
            raise SystemExit(f"workflow failed: {run.error}")


if __name__ == "__main__":
    asyncio.run(main())
