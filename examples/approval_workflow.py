"""Human in the loop: expense claims over 1000 wait for a manager's decision.

    python examples/approval_workflow.py

Starts three "expense_approval" runs for a worker in this process: 250 (paid at once,
no approval needed), 2500 (approved) and 5000 (rejected). A run that waits for an
approval is parked as `paused`: nothing of it stays in memory, and the decision may come
from anywhere (this process, the command line, the web page) even hours or a restart
later. Here a second task plays the manager: it waits until the runs are paused, prints
the commands a person would type, then decides through the client.

Runs on the default SQLite file ./tinyworkflow.db (or $TINYWORKFLOW_DATABASE_URL).
"""

import asyncio

from tinyworkflow import TinyWorkflowClient, WorkflowContext, activity, activity_info, workflow


@activity(name="create_expense_claim")
async def create_expense_claim(amount: float) -> dict:
    # A claim id of this run (the same on every replay: the step's result is recorded).
    return {"claim_id": f"EXP-{activity_info().run_id[:8]}", "amount": amount}


@activity(name="notify_manager")
async def notify_manager(claim: dict) -> str:
    return f"emailed manager about {claim['claim_id']} ({claim['amount']})"  # stand-in


@activity(name="process_payment")
async def process_payment(claim: dict) -> dict:
    return {"id": f"PAY-{claim['claim_id'][4:]}", "amount": claim["amount"]}


@workflow(name="expense_approval")
async def approval_workflow(ctx: WorkflowContext) -> dict:
    amount = ctx.get_input("amount")
    claim = await ctx.execute_activity(create_expense_claim, amount)
    if amount > 1000:
        await ctx.execute_activity(notify_manager, claim)
        # Parks the run until a decision is stored; when it is, a worker replays the run:
        # the claim and the e-mail are recorded steps, so neither happens a second time.
        approved = await ctx.wait_for_approval(f"manager_approval_{claim['claim_id']}",
                                               timeout=300)  # TimeoutError after 5 minutes
        if not approved:
            return {"status": "rejected", "claim_id": claim["claim_id"]}
    payment = await ctx.execute_activity(process_payment, claim)
    return {"status": "completed", "payment_id": payment["id"]}


async def manager(client: TinyWorkflowClient, decisions: dict) -> None:
    """Decide each run of `decisions` (run id -> approve?) once it waits for approval."""
    print("a person would list the waiting runs and decide with:\n"
          "    tinyworkflow approvals\n"
          "    tinyworkflow approve <run_id> --approve      (or --reject)")
    while decisions:
        for run in await client.get_pending_approvals():  # other runs may wait too: skip them
            if run.run_id not in decisions:
                continue
            approve = decisions.pop(run.run_id)
            print(f"paused {run.run_id} ({run.input_data['amount']}) waits for "
                  f"{run.approval_required!r}\n    tinyworkflow approve {run.run_id} "
                  f"{'--approve' if approve else '--reject'}     (done here by the client)")
            if approve:
                await client.approve_workflow(run.run_id)
            else:
                await client.reject_workflow(run.run_id)
        await asyncio.sleep(0.05)


async def main() -> None:
    async with TinyWorkflowClient() as client:
        await client.start_worker()  # executes the runs started with wait=False below
        runs = {amount: await client.start_workflow("expense_approval", {"amount": amount})
                for amount in (250, 2500, 5000)}
        await asyncio.wait_for(manager(client, {runs[2500]: True, runs[5000]: False}), 10)

        results = {amount: await client.wait_for_result(run_id, timeout=10)
                   for amount, run_id in runs.items()}
        for amount, run_id in runs.items():
            steps = [s.name for s in await client.get_workflow_steps(run_id)]
            print(f"{amount:>5}: {results[amount]}\n       steps: {', '.join(steps)}")
        await client.stop_worker()
        expected = {250: "completed", 2500: "completed", 5000: "rejected"}
        if {amount: result["status"] for amount, result in results.items()} != expected:
            raise SystemExit(f"unexpected outcomes: {results}")


if __name__ == "__main__":
    asyncio.run(main())
