"""A saga: book a hotel and a flight, charge the card, and undo the bookings if it fails.

    python examples/saga_booking.py

Each booking registers its compensation (ctx.add_compensation) right after it succeeds.
One trip's card is declined: the run fails, becomes `compensating`, and its registered
compensations run latest first -- cancel the flight, then the hotel, once each -- and
the run ends `compensated`. The other trip is paid, and no compensation runs.

Compensations are recorded steps like any other: a crash while compensating resumes on
any worker, and a compensation that completed does not run again.

Runs on the default SQLite file ./tinyworkflow.db (or $TINYWORKFLOW_DATABASE_URL).
"""

import asyncio

from tinyworkflow import RetryPolicy, TinyWorkflowClient, WorkflowContext, activity, workflow

NO_RETRY = RetryPolicy(max_retries=0)  # a declined card stays declined: do not retry


@activity(name="saga_book_hotel")
async def book_hotel(city: str) -> dict:
    # Stand-ins for the booking APIs: deterministic data, no network needed.
    return {"hotel_booking": f"H-{city.upper()[:3]}-1001", "city": city}


@activity(name="saga_cancel_hotel")
async def cancel_hotel(booking: dict) -> str:
    return f"hotel {booking['hotel_booking']} cancelled"


@activity(name="saga_book_flight")
async def book_flight(city: str) -> dict:
    return {"flight_booking": f"F-{city.upper()[:3]}-2002", "city": city}


@activity(name="saga_cancel_flight")
async def cancel_flight(booking: dict) -> str:
    return f"flight {booking['flight_booking']} cancelled"


@activity(name="saga_charge_payment", retry_policy=NO_RETRY)
async def charge_payment(card: str, amount: int) -> dict:
    if card.endswith("0002"):  # the payment provider's test card that is always declined
        raise RuntimeError(f"card ending {card[-4:]} declined for {amount} EUR")
    return {"payment": f"P-{card[-4:]}-{amount}", "amount": amount}


@workflow(name="saga_trip_booking", retry_policy=NO_RETRY, timeout=60)
async def trip_booking(ctx: WorkflowContext) -> dict:
    hotel = await ctx.execute_activity(book_hotel, ctx.get_input("city"))
    ctx.add_compensation(cancel_hotel, hotel)  # registered, runs only on failure
    flight = await ctx.execute_activity(book_flight, ctx.get_input("city"))
    ctx.add_compensation(cancel_flight, flight)
    payment = await ctx.execute_activity(charge_payment, ctx.get_input("card"),
                                         ctx.get_input("amount"))
    return {**hotel, **flight, **payment}


FINAL_EVENTS = ("workflow_completed", "workflow_compensating", "workflow_compensated")


async def book(client: TinyWorkflowClient, trip: dict) -> tuple:
    run_id = await client.start_workflow("saga_trip_booking", trip, wait=True)
    run = await client.get_workflow_status(run_id)
    print(f"trip to {trip['city']}, card ...{trip['card'][-4:]}: run {run_id[:8]} {run.status}"
          + (f" ({run.error})" if run.error else f" {run.output_data['result']}"))
    # The audit trail shows the order things happened in; compensations are steps too.
    compensations = {s.step: s for s in await client.get_workflow_steps(run_id)
                     if s.kind == "compensation"}
    ran = []
    for event in await client.get_workflow_events(run_id):
        data = event.event_data or {}
        detail = data.get("error", "")
        if event.event_type == "step_completed" and data["step"] in compensations:
            ran.append(data["name"])
            detail = compensations[data["step"]].output  # what the compensation returned
        if "name" in data or event.event_type in FINAL_EVENTS:
            print(f"  {event.event_type:<24} {data.get('name', ''):<20} {detail}".rstrip())
    return run.status, ran


async def main() -> None:
    async with TinyWorkflowClient() as client:
        paid, paid_undone = await book(
            client, {"city": "Lisbon", "card": "4000-0000-0000-0077", "amount": 640})
        declined, declined_undone = await book(
            client, {"city": "Oslo", "card": "4000-0000-0000-0002", "amount": 980})

        if paid != "completed" or paid_undone:
            raise SystemExit(f"the paid trip should complete with no compensation: {paid}")
        if declined != "compensated" or declined_undone != ["saga_cancel_flight",
                                                            "saga_cancel_hotel"]:
            raise SystemExit(f"the declined trip should cancel the flight, then the hotel: "
                             f"{declined} {declined_undone}")


if __name__ == "__main__":
    asyncio.run(main())
