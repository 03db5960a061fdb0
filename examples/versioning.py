"""Versioning: change a workflow's code while runs of the old code are still in flight.

    python examples/versioning.py

Version 1 of the order workflow emails the customer, then waits for the delivery.
Version 2 sends a text message instead. A run started on version 1 that is waiting for
its delivery when version 2 is deployed must keep its old path: when it wakes up, it is
replayed on the new code, and its history has the email at the step where version 2
would now text -- without ctx.patched() that replay fails with NonDeterminismError.

ctx.patched("sms-instead-of-email") is True for a run that reaches that point for the
first time on the new code (a `patch` step records it) and False for a run that
recorded other steps there. Once no old run is left, replace it with
ctx.deprecate_patch("sms-instead-of-email") and delete the old branch.

The deploy is simulated in one process: the worker stops, the registered workflow now
calls version 2 (a real deploy restarts the workers with the new code), the worker
starts again. Runs on the default SQLite file ./tinyworkflow.db (or
$TINYWORKFLOW_DATABASE_URL).
"""

import asyncio

from tinyworkflow import TinyWorkflowClient, WorkflowContext, activity, workflow


@activity(name="patch_send_email")
async def send_email(order_id: str) -> str:
    return "email"  # stand-in for the mailer


@activity(name="patch_send_sms")
async def send_sms(order_id: str) -> str:
    return "sms"  # stand-in for the SMS gateway


async def order_v1(ctx: WorkflowContext) -> dict:  # the code before the deploy
    notified_by = await ctx.execute_activity(send_email, ctx.get_input("order_id"))
    await ctx.wait_for_signal("delivered", timeout=60)
    return {"order_id": ctx.get_input("order_id"), "notified_by": notified_by}


async def order_v2(ctx: WorkflowContext) -> dict:  # the code after the deploy
    if ctx.patched("sms-instead-of-email"):
        notified_by = await ctx.execute_activity(send_sms, ctx.get_input("order_id"))
    else:  # a run that already emailed on version 1 replays this branch
        notified_by = await ctx.execute_activity(send_email, ctx.get_input("order_id"))
    await ctx.wait_for_signal("delivered", timeout=60)
    return {"order_id": ctx.get_input("order_id"), "notified_by": notified_by}


deployed = order_v1  # the version of the code this process runs


@workflow(name="patch_order_delivery", timeout=120)
async def order_delivery(ctx: WorkflowContext) -> dict:
    return await deployed(ctx)


async def start_and_wait_for_delivery(client: TinyWorkflowClient, order_id: str) -> str:
    run_id = await client.start_workflow("patch_order_delivery", {"order_id": order_id})
    while not any(e.event_type == "signal_waiting"
                  for e in await client.get_workflow_events(run_id)):
        await asyncio.sleep(0.05)
    return run_id


async def main() -> None:
    global deployed
    async with TinyWorkflowClient() as client:
        await client.start_worker()
        old_run = await start_and_wait_for_delivery(client, "A-1")  # on version 1
        print(f"run {old_run[:8]} started on version 1, waiting for its delivery")

        await client.stop_worker()  # deploy: the worker stops, its runs are given back
        deployed = order_v2
        await client.start_worker()  # ... and starts again with version 2
        print("version 2 deployed")
        new_run = await start_and_wait_for_delivery(client, "B-2")  # on version 2
        print(f"run {new_run[:8]} started on version 2, waiting for its delivery")

        # Both runs wake up and are replayed on version 2.
        for run_id in (old_run, new_run):
            await client.send_signal(run_id, "delivered")
        results = {run_id: await client.wait_for_result(run_id, timeout=30)
                   for run_id in (old_run, new_run)}
        await client.stop_worker()

        for run_id, result in results.items():
            steps = await client.get_workflow_steps(run_id)
            print(f"run {run_id[:8]} notified by {result['notified_by']}; steps: "
                  + ", ".join(f"{s.step} {s.kind} {s.name!r}" for s in steps))
        paths = [results[old_run]["notified_by"], results[new_run]["notified_by"]]
        if paths != ["email", "sms"]:
            raise SystemExit(f"expected the old run to email and the new one to text: {paths}")


if __name__ == "__main__":
    asyncio.run(main())
