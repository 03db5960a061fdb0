"""Signals: a workflow waits for data from outside with ctx.wait_for_signal().

    python examples/signals.py

An order waits for its delivery address (a signal another task sends while the run is
waiting) and for a gift note (a signal sent before the run even started: signals are
stored with the run, so one sent early is not lost). A second order gets no address:
its wait gives up after its timeout and the workflow handles the TimeoutError.

Taking a signal is a step: the payload is recorded in the same transaction that
consumes the signal, so a replay returns the same payload and no signal is taken twice.

Runs on the default SQLite file ./tinyworkflow.db (or $TINYWORKFLOW_DATABASE_URL).
"""

import asyncio

from tinyworkflow import TinyWorkflowClient, WorkflowContext, activity, workflow


@activity(name="signal_create_order")
async def create_order(items: list) -> dict:
    # Stand-in for the order service: deterministic data, no network needed.
    return {"order_id": f"ord-{len(items)}-{sum(len(i) for i in items)}", "items": items}


@activity(name="signal_print_label")
async def print_label(order: dict, address: dict, note: str) -> str:
    return f"{order['order_id']} -> {address['street']}, {address['city']} (note: {note})"


@workflow(name="signal_gift_order", timeout=60)
async def gift_order(ctx: WorkflowContext) -> dict:
    order = await ctx.execute_activity(create_order, ctx.get_input("items"))
    try:
        # Waits a second in memory, then parks the run (nothing in memory) until the
        # signal comes or the timeout passes.
        address = await ctx.wait_for_signal("address", timeout=ctx.get_input("wait", 30))
    except TimeoutError:
        return {"status": "no address given", "order_id": order["order_id"]}
    note = await ctx.wait_for_signal("gift_note", timeout=5)  # sent long before: waiting
    return {"status": "shipped", "label": await ctx.execute_activity(
        print_label, order, address, note["text"])}


async def send_address_when_asked(client: TinyWorkflowClient, run_id: str) -> None:
    """Another part of the application: once the run waits, the customer answers."""
    while not any(e.event_type == "signal_waiting"
                  for e in await client.get_workflow_events(run_id)):
        await asyncio.sleep(0.05)
    print(f"run {run_id[:8]} is waiting for 'address': sending it")
    await client.send_signal(run_id, "address", {"street": "12 Rue de Rivoli", "city": "Paris"})


async def main() -> None:
    async with TinyWorkflowClient() as client:
        run_id = await client.start_workflow("signal_gift_order", {"items": ["book", "pen"]})
        lost_id = await client.start_workflow("signal_gift_order",
                                              {"items": ["lamp"], "wait": 1.5})
        # No worker yet: the run has not started, and the signal is stored for it.
        await client.send_signal(run_id, "gift_note", {"text": "Happy birthday!"})
        print(f"run {run_id[:8]}: 'gift_note' sent before the run started")

        await client.start_worker()
        await send_address_when_asked(client, run_id)
        result = await client.wait_for_result(run_id, timeout=30)
        lost = await client.wait_for_result(lost_id, timeout=30)
        await client.stop_worker()

        print(f"run {run_id[:8]}: {result}")
        for event in await client.get_workflow_events(run_id):  # the audit trail
            if event.event_type.startswith("signal_") or event.event_type == "workflow_started":
                print(f"  {event.timestamp:%H:%M:%S.%f}"[:-3]
                      + f"  {event.event_type:<16} {event.event_data}")
        for step in await client.get_workflow_steps(run_id):
            if step.kind == "signal":
                print(f"  step {step.step} signal {step.name!r}: payload {step.output}")
        print(f"run {lost_id[:8]} (nobody answers, 1.5 s timeout): {lost}")

        if result["status"] != "shipped" or "Happy birthday!" not in result["label"] \
                or "Rue de Rivoli" not in result["label"]:
            raise SystemExit(f"the signals did not arrive: {result}")
        if lost["status"] != "no address given":
            raise SystemExit(f"the wait did not time out: {lost}")


if __name__ == "__main__":
    asyncio.run(main())
