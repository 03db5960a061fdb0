"""Child workflows: an order ships each of its packages in a child run of its own.

    python examples/child_workflows.py

The parent starts one child per package (ctx.start_child_workflow: they run side by
side), waits for all of them, then runs one more child to completion
(ctx.execute_child_workflow: start and wait). Each child is a run of its own, with its
own steps, retries and audit trail, and its parent_run_id names the parent.

Starting a child is a step of the parent: the child's run id is recorded in the same
transaction that stores the child run, so a replay of the parent finds the same child
and a crash never starts it twice. While the parent waits it is parked (nothing in
memory); the end of its last child makes it due again.

Runs on the default SQLite file ./tinyworkflow.db (or $TINYWORKFLOW_DATABASE_URL).
"""

import asyncio

from tinyworkflow import TinyWorkflowClient, WorkflowContext, activity, workflow


@activity(name="fulfil_pack_package")
async def pack_package(order_id: str, package: dict) -> dict:
    # Stand-ins for the warehouse and the carrier: deterministic data, no network needed.
    return {"package": package["name"], "weight_kg": package["weight_kg"],
            "box": "large" if package["weight_kg"] > 5 else "small"}


@activity(name="fulfil_book_carrier")
async def book_carrier(order_id: str, packed: dict) -> str:
    return f"TRK-{order_id}-{packed['package'].upper()}-{packed['box'][0].upper()}"


@activity(name="fulfil_email_customer")
async def email_customer(order_id: str, tracking: list) -> str:
    return f"order {order_id}: {len(tracking)} tracking numbers emailed"


@workflow(name="fulfil_ship_package", timeout=60)
async def ship_package(ctx: WorkflowContext) -> str:
    packed = await ctx.execute_activity(pack_package, ctx.get_input("order_id"),
                                        ctx.get_input("package"))
    return await ctx.execute_activity(book_carrier, ctx.get_input("order_id"), packed)


@workflow(name="fulfil_notify_customer", timeout=60)
async def notify_customer(ctx: WorkflowContext) -> str:
    return await ctx.execute_activity(email_customer, ctx.get_input("order_id"),
                                      ctx.get_input("tracking"))


@workflow(name="fulfil_order", timeout=60)
async def fulfil_order(ctx: WorkflowContext) -> dict:
    order_id = ctx.get_input("order_id")
    # Fan out: each start is a step and returns a handle at once.
    handles = [await ctx.start_child_workflow("fulfil_ship_package",
                                              {"order_id": order_id, "package": package})
               for package in ctx.get_input("packages")]
    tracking = await asyncio.gather(*handles)  # the children's results, in order
    # One child, started and awaited in one call.
    notice = await ctx.execute_child_workflow("fulfil_notify_customer",
                                              {"order_id": order_id, "tracking": tracking})
    return {"order_id": order_id, "tracking": tracking, "notice": notice}


async def main() -> None:
    packages = [{"name": "sofa", "weight_kg": 40}, {"name": "lamp", "weight_kg": 3},
                {"name": "rug", "weight_kg": 8}]
    async with TinyWorkflowClient() as client:
        # wait=True executes the parent here, and its children too.
        run_id = await client.start_workflow(
            "fulfil_order", {"order_id": "A42", "packages": packages}, wait=True)
        parent = await client.get_workflow_status(run_id)
        print(f"parent {run_id[:8]} {parent.workflow_name}: {parent.status}")
        print(f"  result: {parent.output_data}")

        # The children are runs of their own: list them by their parent_run_id, and
        # match them to the parent's steps, which recorded each child's run id.
        children = {child.run_id: child for child in
                    await client.list_workflow_executions(parent_run_id=run_id)}
        for step in await client.get_workflow_steps(run_id):
            child = children[step.output["run_id"]]
            steps = await client.get_workflow_steps(child.run_id)
            print(f"  step {step.step}: child {child.run_id[:8]} {child.workflow_name:<22} "
                  f"{child.status}, {len(steps)} steps of its own -> "
                  f"{child.output_data['result']}")

        if parent.status != "completed":
            raise SystemExit(f"the order failed: {parent.error}")
        if len(children) != len(packages) + 1 or any(
                child.status != "completed" or child.parent_run_id != run_id
                for child in children.values()):
            raise SystemExit(f"expected {len(packages) + 1} completed children: {children}")


if __name__ == "__main__":
    asyncio.run(main())
