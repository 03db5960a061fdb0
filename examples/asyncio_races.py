"""Plain asyncio inside a workflow: races, timeouts and fan-out that replay exactly.

    python examples/asyncio_races.py

An order waits for its payment (a signal) *or* a reminder timer, whichever comes first,
with ``asyncio.wait(..., return_when=FIRST_COMPLETED)``; it asks a slow pricing service
for a discount with ``asyncio.wait_for`` and falls back to none; and it packs its items
side by side with ``asyncio.gather``. The first order is paid in time; the second one
gets its reminder when the timer fires (the run is parked meanwhile: nothing in memory),
then is paid.

The workflow runs on an event loop of its own: each step's outcome reaches it in the
order recorded with it, so after a crash the replay takes the very branches the first
execution took (the race's winner, the timeout), and no activity runs twice. Its timers
-- ``asyncio.sleep``, ``asyncio.wait_for``'s, ``ctx.sleep`` -- are durable.

Runs on the default SQLite file ./tinyworkflow.db (or $TINYWORKFLOW_DATABASE_URL).
"""

import asyncio

from tinyworkflow import TinyWorkflowClient, WorkflowContext, activity, workflow


@activity(name="races_quote_discount")
async def quote_discount(order_id: str) -> int:
    await asyncio.sleep(0.5)  # a slow pricing service (an activity may do anything)
    return 10


@activity(name="races_pack")
async def pack(item: str) -> str:
    await asyncio.sleep(0.05)
    return f"{item} packed"


@activity(name="races_send_reminder")
async def send_reminder(order_id: str) -> str:
    return f"reminder sent for {order_id}"


@workflow(name="races_order", timeout=60)
async def order(ctx: WorkflowContext) -> dict:
    order_id = ctx.get_input("order_id")
    try:  # at most 0.2 s for a discount: the timeout's timer is durable too
        discount = await asyncio.wait_for(ctx.execute_activity(quote_discount, order_id), 0.2)
    except asyncio.TimeoutError:
        discount = 0
    packed = await asyncio.gather(*(ctx.execute_activity(pack, item)
                                    for item in ctx.get_input("items")))
    paid = asyncio.ensure_future(ctx.wait_for_signal("paid"))
    reminder = asyncio.ensure_future(asyncio.sleep(ctx.get_input("remind_after")))
    done, _ = await asyncio.wait({paid, reminder}, return_when=asyncio.FIRST_COMPLETED)
    reminded = None
    if paid not in done:  # the timer won: remind, then keep waiting for the payment
        reminded = await ctx.execute_activity(send_reminder, order_id)
    else:
        reminder.cancel()  # a timer cancelled before it fires records nothing
    payment = await paid
    return {"order_id": order_id, "discount": discount, "packed": packed,
            "reminder": reminded, "paid": payment["amount"]}


async def pay_when(client: TinyWorkflowClient, run_id: str, after: float) -> None:
    await asyncio.sleep(after)
    await client.send_signal(run_id, "paid", {"amount": 42})


async def main() -> None:
    async with TinyWorkflowClient(auto_start_worker=True) as client:
        prompt = await client.start_workflow("races_order", {
            "order_id": "A-1", "items": ["book", "lamp"], "remind_after": 30})
        slow = await client.start_workflow("races_order", {
            "order_id": "B-2", "items": ["chair"], "remind_after": 1.5})
        await asyncio.gather(pay_when(client, prompt, 0.3), pay_when(client, slow, 3.0))
        first = await client.wait_for_result(prompt, timeout=30)
        second = await client.wait_for_result(slow, timeout=30)
        print(f"paid in time:     {first}")
        print(f"paid after nudge: {second}")
        for step in await client.get_workflow_steps(slow):
            print(f"  step {step.step} {step.kind:<8} {step.name:<20} {step.status}")
        if first["reminder"] is not None or first["discount"] != 0 or first["paid"] != 42:
            raise SystemExit(f"unexpected outcome for the prompt order: {first}")
        if second["reminder"] != "reminder sent for B-2" or second["paid"] != 42:
            raise SystemExit(f"unexpected outcome for the slow order: {second}")


if __name__ == "__main__":
    asyncio.run(main())
