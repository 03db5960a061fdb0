"""Typed workflows and typed values between runs (issue 22, items 1 and 3): a workflow's
parameters are bound from its input and decoded by their annotations; start_workflow and
start_child_workflow take the function with its arguments; signals, events, child
results, wait_for_result and compensation arguments take the same types -- on the first
run and on a replay alike, on every backend."""

import dataclasses
import os
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Optional

import pytest

import tinyworkflow
import typed_checking_only  # (a module of its own: its annotations say from __future__)
from tinyworkflow import (NonRetryableError, RetryPolicy, SerializationError,
                          TinyWorkflowClient, WorkflowContext, activity, workflow)


@dataclasses.dataclass(frozen=True)
class Item:
    sku: str
    price: Decimal


@dataclasses.dataclass
class Address:
    street: str
    since: datetime


@dataclasses.dataclass
class Progress:
    stage: str
    done: Decimal


@dataclasses.dataclass
class Booking:
    id: str
    at: datetime
    amount: Decimal


ITEMS = [Item("a", Decimal("1.10")), Item("b", Decimal("2.205"))]
WHEN = datetime(2026, 5, 1, 9, 30, tzinfo=timezone(timedelta(hours=2)))
seen: list = []


@activity(name="tw_total")
async def tw_total(items: list[Item]) -> Decimal:
    seen.append(("total", [type(i).__name__ for i in items]))
    return sum((i.price for i in items), Decimal(0))


@workflow(name="tw_child_total")
async def tw_child_total(ctx: WorkflowContext, items: list[Item]) -> Decimal:
    return await tw_total(items)


@workflow(name="tw_order")
async def tw_order(ctx: WorkflowContext, order_id: str, items: list[Item],
                   due: Optional[datetime] = None, express: bool = False) -> dict:
    got = {"order_id": order_id, "items": items == ITEMS and type(items[0]) is Item,
           "due": due, "express": express, "input": ctx.input_data["items"] == ITEMS}
    total = await ctx.execute_child_workflow(tw_child_total, items=items)
    handle = await ctx.start_child_workflow("tw_child_total", {"items": items[:1]})
    first = await handle
    ctx.set_event("progress", Progress("children", total))
    address = await ctx.wait_for_signal("address", type=Address)
    plain = await ctx.wait_for_signal("address")
    seen.append((type(total).__name__, type(first).__name__, type(address).__name__,
                 type(plain).__name__))
    return {**got, "due": due and due.isoformat(), "total": str(total), "first": str(first),
            "address": [address.street, address.since.isoformat()], "plain": plain}


async def test_a_typed_workflow_runs_and_replays_with_its_types(db_url):
    seen.clear()
    async with TinyWorkflowClient(db_url) as client:
        run_id = await client.start_workflow(tw_order, order_id="o-1", items=ITEMS, due=WHEN)
        stored = (await client.get_workflow_status(run_id)).input_data
        assert stored == {"order_id": "o-1", "items": [{"sku": "a", "price": "1.10"},
                                                      {"sku": "b", "price": "2.205"}],
                          "due": WHEN.isoformat(), "express": False}  # the JSON, as the
        # command line shows it; with the default not given, as a replay must see it
        await client.start_worker()  # the children, then the parent up to its first wait
        assert await client.get_event(run_id, "progress", type=Progress, timeout=20) == \
            Progress("children", Decimal("3.305"))
        assert await client.get_event(run_id, "progress") == {"stage": "children",
                                                              "done": "3.305"}
        await client.stop_worker()  # the run is given back: what follows is a replay
        await client.send_signal(run_id, "address", Address("Main St 1", WHEN))
        await client.send_signal(run_id, "address", Address("Side St 2", WHEN))
        await client.recover_workflows()
        result = await client.wait_for_result(run_id, timeout=20)
        events = [e.event_type for e in await client.get_workflow_events(run_id)]
        steps = await client.get_workflow_steps(run_id)
    assert result == {"order_id": "o-1", "items": True, "due": WHEN.isoformat(),
                      "express": False, "input": True, "total": "3.305", "first": "1.10",
                      "address": ["Main St 1", WHEN.isoformat()],
                      "plain": {"street": "Side St 2", "since": WHEN.isoformat()}}
    assert seen[-1] == ("Decimal", "Decimal", "Address", "dict")
    assert seen.count(("total", ["Item", "Item"])) == 1  # each child's step ran once
    assert "workflow_resumed" in events, events  # parked at the wait, then replayed
    assert [s.kind for s in steps] == ["child", "child", "event", "signal", "signal"]
    assert steps[3].output == {"street": "Main St 1", "since": WHEN.isoformat()}


async def test_input_that_does_not_fit_is_refused_before_anything_is_stored(client):
    with pytest.raises(ValueError, match=r"workflow 'tw_order' needs 'items' \(its "
                                         r"parameters: \(order_id: str, items: list"):
        await client.start_workflow(tw_order, order_id="o-1")
    with pytest.raises(ValueError, match="takes no parameter 'bogus', 'other'"):
        await client.start_workflow(tw_order, order_id="o", items=[], bogus=1, other=2)
    with pytest.raises(ValueError, match="needs 'order_id', 'items'"):
        await client.start_workflow("tw_order", {})  # the name form checks it alike
    with pytest.raises(ValueError, match="its input is a dict of them, got list"):
        await client.start_workflow("tw_order", [1, 2])
    with pytest.raises(TypeError, match="takes 4 parameter"):
        await client.start_workflow(tw_order, "o", [], None, False, "one too many")
    with pytest.raises(TypeError, match="got parameter 'order_id' twice"):
        await client.start_workflow(tw_order, "o", order_id="o")
    with pytest.raises(TypeError, match="either input_data or its parameters"):
        await client.start_workflow(tw_order, input_data={"order_id": "o"}, items=[])
    with pytest.raises(TypeError, match="takes a @workflow function or a workflow's name"):
        await client.start_workflow(tw_total, items=[])  # an activity
    bad = [Item("a", Decimal("1")), Item("b", Decimal("NaN"))]
    with pytest.raises(SerializationError, match=r"the input of workflow 'tw_order', declared "
                                                 r"list\[.*Item\]: items\[1\]\.price: not a "
                                                 r"finite number"):
        await client.start_workflow(tw_order, order_id="o", items=bad)
    assert await client.count_workflow_executions() == 0


async def test_positional_arguments_and_options_in_the_function_form(client):
    run_id = await client.start_workflow(tw_child_total, ITEMS, workflow_id="totals",
                                         idempotency_key="k-1", wait=True)
    run = await client.get_workflow_status(run_id)
    assert (run.status, run.workflow_id, run.output_data) == ("completed", "totals",
                                                              {"result": "3.305"})
    assert await client.wait_for_result(run_id, type=Decimal) == Decimal("3.305")
    again = await client.start_workflow(tw_child_total, items=ITEMS, idempotency_key="k-1")
    assert again == run_id  # the same input, told the other way


@workflow(name="tw_named_like_options")
async def tw_named_like_options(ctx, wait: int, queue: str = "q") -> list:
    return [wait, queue]


async def test_a_parameter_named_like_an_option_is_the_workflows(client):
    run_id = await client.start_workflow(tw_named_like_options, wait=3)
    await client.recover_workflows()
    assert await client.wait_for_result(run_id, timeout=5) == [3, "q"]


@workflow(name="tw_later")
async def tw_later(ctx, count: int) -> int:
    return count


@workflow(name="tw_later_v2", retry_policy=RetryPolicy(max_retries=3, initial_delay=0))
async def tw_later_v2(ctx, count: int, step: Decimal) -> str:
    return str(count * step)


async def test_a_stored_input_that_no_longer_fits_fails_the_run_at_once(client):
    run_id = await client.start_workflow(tw_later, count=2)
    # Deployed again with a new required parameter before the run was executed.
    registry = tinyworkflow._internals.workflows
    registry["tw_later"] = dataclasses.replace(registry["tw_later_v2"], name="tw_later")
    await client.recover_workflows()
    run = await client.get_workflow_status(run_id)
    assert run.status == "failed" and run.retry_count == 0  # not retried: it cannot mend
    assert "NonRetryableError" in run.error and "needs 'step'" in run.error


@workflow(name="tw_counter")
async def tw_counter(ctx, count: int, total: Decimal) -> str:
    if count < 3:
        ctx.continue_as_new({"count": count + 1, "total": total + Decimal("0.1")})
    return f"{count} {total!r}"


async def test_continue_as_new_encodes_the_next_input_by_the_parameters(client):
    run_id = await client.start_workflow(tw_counter, count=1, total=Decimal("0.1"))
    for _ in range(3):  # the run, then each successor
        await client.recover_workflows()
    assert await client.wait_for_result(run_id, timeout=10) == "3 Decimal('0.3')"


@activity(name="tw_book")
async def tw_book(amount: Decimal) -> Booking:
    return Booking("b-1", WHEN, amount)


cancelled: list = []


@activity(name="tw_cancel")
async def tw_cancel(booking: Booking, reason: str, *, note: Optional[Address] = None) -> None:
    cancelled.append((booking, reason, note))


@activity(name="tw_fail", retry_policy=RetryPolicy(max_retries=0))
async def tw_fail() -> None:
    raise NonRetryableError("declined")


@workflow(name="tw_trip", retry_policy=RetryPolicy(max_retries=0))
async def tw_trip(ctx, amount: Decimal) -> None:
    booking = await tw_book(amount)
    ctx.add_compensation(tw_cancel, booking, "trip failed", note=Address("x", WHEN))
    await tw_fail()


async def test_a_compensation_gets_its_typed_arguments_back(db_url):
    cancelled.clear()
    async with TinyWorkflowClient(db_url) as client:
        run_id = await client.start_workflow(tw_trip, amount=Decimal("12.50"), wait=True)
        run = await client.get_workflow_status(run_id)
        steps = await client.get_workflow_steps(run_id)
    assert run.status == "compensated", run.error
    assert cancelled == [(Booking("b-1", WHEN, Decimal("12.50")), "trip failed",
                          Address("x", WHEN))]
    registered = next(s for s in steps if s.kind == "compensation")
    assert registered.input["args"][0] == {"id": "b-1", "at": WHEN.isoformat(),
                                           "amount": "12.50"}


def test_a_workflow_takes_its_context_first_then_parameters_by_name():
    for source in ("async def f(): pass", "async def f(ctx, *items): pass",
                   "async def f(ctx, a, /, b): pass", "async def f(*, ctx): pass"):
        space: dict = {}
        exec(source, space)
        with pytest.raises(TypeError, match="takes its context first, then its parameters"):
            workflow(name="tw_bad_signature")(space["f"])


@workflow(name="tw_events")
async def tw_events(ctx) -> None:
    ctx.set_event("when", WHEN)
    ctx.set_event("bad", [Decimal("1")])  # inside a plain list: plain JSON only


async def test_an_event_value_is_encoded_by_its_own_type(client):
    run_id = await client.start_workflow(tw_events, wait=True)
    assert await client.get_event(run_id, "when") == WHEN.isoformat()
    assert await client.get_event(run_id, "when", type=datetime) == WHEN
    run = await client.get_workflow_status(run_id)
    assert run.status == "failed" and "the value of event 'bad'" in run.error
    with pytest.raises(SerializationError, match="the payload of signal 'x'"):
        await client.send_signal(run_id, "x", {"a": Decimal("1")})
    with pytest.raises(SerializationError, match="the value of event 'when' of run .* does "
                                                 "not decode as Decimal"):
        await client.get_event(run_id, "when", type=Decimal)


def test_type_checkers_check_the_arguments_of_a_workflow_function(tmp_path, monkeypatch):
    """mypy, on the checkout's tinyworkflow.py (as a vendored copy is read; an installed
    single-file module is read by pyright, not mypy: see the README)."""
    try:
        import mypy.api as mypy
    except ImportError as exc:  # a dev dependency: missing is a failure under CI=true
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"mypy is not installed ({exc}) [CI=true: failing instead of skipping]")
        pytest.skip(f"mypy is not installed ({exc})")
    sample = tmp_path / "typed_sample.py"
    sample.write_text(
        "import dataclasses\n"
        "from tinyworkflow import TinyWorkflowClient, WorkflowContext, workflow\n"
        "@dataclasses.dataclass\n"
        "class Item:\n"
        "    sku: str\n"
        "@workflow(name='order')\n"
        "async def order(ctx: WorkflowContext, order_id: str, items: list[Item],\n"
        "                express: bool = False) -> int:\n"
        "    total: int = await ctx.execute_child_workflow(count, items=items)\n"
        "    await ctx.start_child_workflow(count, items=[Item('a')])\n"
        "    await ctx.start_child_workflow(count, items=[1])  # line 11: wrong item type\n"
        "    return total\n"
        "@workflow\n"
        "async def count(ctx: WorkflowContext, items: list[Item]) -> int:\n"
        "    return len(items)\n"
        "async def main(client: TinyWorkflowClient) -> None:\n"
        "    await client.start_workflow(order, order_id='o-1', items=[Item('a')])\n"
        "    await client.start_workflow(order, 'o-1', [Item('a')], express=True)\n"
        "    await client.start_workflow('order', {'order_id': 'o-1'}, wait=True)\n"
        "    await client.start_workflow(order, order_id=1, items=[])  # line 20\n"
        "    await client.start_workflow(order, order_id='o-1')  # line 21\n"
        "    await client.start_workflow(order, order_id='o', items=[], bogus=2)  # line 22\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout
    monkeypatch.setenv("MYPYPATH", root)
    out, _, _ = mypy.run(["--follow-imports=silent", "--no-error-summary", "--config-file",
                          os.devnull, "--cache-dir", str(tmp_path / "cache"), str(sample)])
    errors = sorted(int(line.split(":")[1]) for line in out.splitlines() if ": error:" in line)
    assert errors == [11, 20, 21, 22], out


# ---- a red-team pass: what must not be taken as something else --------------------------

@workflow(name="tw_extra")
async def tw_extra(ctx, name: str, **amounts: Decimal) -> str:
    return ",".join(f"{k}={v!r}" for k, v in sorted(amounts.items()))


async def test_other_keywords_are_decoded_by_their_declared_type(client):
    run_id = await client.start_workflow(tw_extra, name="x", tea=Decimal("1.5"), cake="2")
    await client.recover_workflows()
    assert await client.wait_for_result(run_id, timeout=5) == \
        "cake=Decimal('2'),tea=Decimal('1.5')"


@dataclasses.dataclass
class Pair:
    a: int
    b: int = 0


@workflow(name="tw_json_form")
async def tw_json_form(ctx, pair: tuple[int, int], tags: set[str], item: Pair) -> None:
    pass


async def test_a_value_in_its_json_form_is_taken_only_if_it_is_exactly_that(client):
    run_id = await client.start_workflow("tw_json_form", {"pair": [1, 2], "tags": ["a"],
                                                          "item": {"a": 1, "b": 0}})
    assert (await client.get_workflow_status(run_id)).input_data["item"] == {"a": 1, "b": 0}
    for wrong in ({"pair": [1, 2, 3]}, {"tags": "abc"}, {"item": {"a": 1, "bb": 2}}):
        given = {"pair": [1, 2], "tags": ["a"], "item": {"a": 1}, **wrong}
        with pytest.raises(SerializationError, match=f"{next(iter(wrong))}"):
            await client.start_workflow("tw_json_form", given)
    assert await client.count_workflow_executions() == 1


@workflow(name="tw_unannotated_undo", retry_policy=RetryPolicy(max_retries=0))
async def tw_unannotated_undo(ctx) -> str:
    booking = await tw_book(Decimal("1"))
    try:
        ctx.add_compensation(tw_plain_undo, booking)
    except SerializationError as exc:
        return str(exc)
    return "registered"


@activity(name="tw_plain_undo")
async def tw_plain_undo(booking) -> None:  # unannotated: it would get a dict back
    pass


async def test_a_compensation_argument_that_would_come_back_as_something_else_is_refused(
        client):
    run_id = await client.start_workflow(tw_unannotated_undo, wait=True)
    message = await client.wait_for_result(run_id)
    assert "the arguments of compensation 'tw_plain_undo'" in message, message
    assert "annotate a type the codec knows" in message


class _Pricer:
    async def __call__(self, n: int) -> Decimal:
        return Decimal(n) / 4


tw_pricer = activity(name="tw_pricer")(_Pricer())


@workflow(name="tw_priced")
async def tw_priced(ctx) -> str:
    return repr(await tw_pricer(3))


async def test_a_callable_object_keeps_its_declared_result_type(client):
    run_id = await client.start_workflow(tw_priced, wait=True)
    assert await client.wait_for_result(run_id) == "Decimal('0.75')"


async def test_a_schedule_takes_the_workflow_function(client):
    schedule_id = await client.schedule_workflow(tw_child_total, every=3600,
                                                 input_data={"items": ITEMS})
    schedule = await client.get_schedule(schedule_id)
    assert schedule.workflow_name == "tw_child_total"
    assert schedule.input_data["items"][1] == {"sku": "b", "price": "2.205"}
    with pytest.raises(ValueError, match="needs 'items'"):
        await client.schedule_delayed_workflow(tw_child_total, 60)


async def test_an_annotation_that_cannot_be_resolved_leaves_the_others(client, caplog):
    definition = tinyworkflow._internals.workflows["tw_checking_only"]
    vars(definition).pop("parameters", None)  # read anew (it is kept once read)
    assert definition.parameters["amount"][0] is Decimal
    assert "the annotation 'Fraction' of parameter 'share'" in caplog.text
    run_id = await client.start_workflow(typed_checking_only.tw_checking_only, amount="2.50")
    await client.recover_workflows()
    assert await client.wait_for_result(run_id, timeout=5) == "Decimal('2.50') None"


_NOT_GIVEN = object()


@workflow(name="tw_sentinel")
async def tw_sentinel(ctx, order_id: str, note=_NOT_GIVEN, tags: frozenset = frozenset()) -> bool:
    return note is _NOT_GIVEN and tags == frozenset()


async def test_a_default_that_cannot_be_stored_is_the_functions_each_time(client):
    run_id = await client.start_workflow(tw_sentinel, order_id="a", wait=True)
    assert await client.wait_for_result(run_id) is True
    stored = (await client.get_workflow_status(run_id)).input_data
    assert stored == {"order_id": "a", "tags": []}  # (the sentinel is not stored)


async def test_an_idempotent_start_reads_a_left_out_default_as_given(client):
    # As an earlier version stored it: without the default of ``express``.
    first = await client.start_workflow("tw_order", {"order_id": "o", "items": []},
                                        idempotency_key="k")
    again = await client.start_workflow(tw_order, order_id="o", items=[], express=False,
                                        idempotency_key="k")
    assert again == first


@workflow(name="tw_typed_form")
async def tw_typed_form(ctx, at: datetime, amount: Decimal, id: uuid.UUID,
                        item: Item) -> list:
    return [at.isoformat(), str(amount), str(id), str(item.price)]


async def test_what_people_type_is_read_as_the_declared_type(client):
    run_id = await client.start_workflow("tw_typed_form", {
        "at": "2024-01-01", "amount": 2.5, "id": "6BA7B810-9DAD-11D1-80B4-00C04FD430C8",
        "item": {"sku": "a", "price": 2.5}}, wait=True)
    assert await client.wait_for_result(run_id) == [
        "2024-01-01T00:00:00", "2.5", "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "2.5"]
    stored = (await client.get_workflow_status(run_id)).input_data
    assert stored["at"] == "2024-01-01T00:00:00" and stored["amount"] == "2.5"
