"""Typed values (issue 22, item 1, first part): an activity's return annotation decides
how its recorded JSON is decoded, on the first run and on every replay alike; encoding
refuses what the type cannot rebuild exactly, naming the path inside the value."""

import dataclasses
import enum
import json
import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, NamedTuple, Optional, TypedDict, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinyworkflow
from tinyworkflow import SerializationError, TinyWorkflowClient, activity, workflow

typed = tinyworkflow._internals.typed


class Color(enum.Enum):
    RED = "red"
    GREEN = 2


class Point(NamedTuple):
    x: int
    y: float


class Address(TypedDict):
    street: str
    since: date


@dataclasses.dataclass(frozen=True)
class Line:
    sku: str
    price: Decimal
    at: datetime
    tags: frozenset


@dataclasses.dataclass
class Order:
    id: uuid.UUID
    lines: list[Line]
    due: Optional[date]
    wait: timedelta
    blob: bytes
    where: Point
    pair: tuple[int, str]
    color: Color
    totals: dict[str, Decimal]
    seen: set[int]
    note: Union[str, None] = None


# ---- the codec, value by value ----------------------------------------------------------

aware = st.datetimes(timezones=st.sampled_from(
    [timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]))
decimals = st.decimals(allow_nan=False, allow_infinity=False, places=None)
finite = st.floats(allow_nan=False, allow_infinity=False)
lines = st.builds(Line, sku=st.text(), price=decimals, at=aware,
                  tags=st.frozensets(st.text(max_size=5), max_size=4))
orders = st.builds(
    Order, id=st.uuids(), lines=st.lists(lines, max_size=3), due=st.none() | st.dates(),
    wait=st.timedeltas(), blob=st.binary(max_size=40),
    where=st.builds(Point, x=st.integers(), y=finite),
    pair=st.tuples(st.integers(), st.text(max_size=5)), color=st.sampled_from(Color),
    totals=st.dictionaries(st.text(max_size=5), decimals, max_size=3),
    seen=st.sets(st.integers(), max_size=5), note=st.none() | st.text(max_size=10))
CASES = [
    (datetime, aware), (datetime, st.datetimes()), (date, st.dates()), (time, st.times()),
    (timedelta, st.timedeltas()), (Decimal, decimals), (uuid.UUID, st.uuids()),
    (bytes, st.binary()), (Color, st.sampled_from(Color)),
    (tuple[int, str], st.tuples(st.integers(), st.text())),
    (tuple[float, ...], st.lists(finite).map(tuple)), (set[int], st.sets(st.integers())),
    (frozenset[str], st.frozensets(st.text())), (list[Decimal], st.lists(decimals)),
    (dict[str, uuid.UUID], st.dictionaries(st.text(), st.uuids())),
    (Optional[datetime], st.none() | aware), (Point, st.builds(Point, x=st.integers(), y=finite)),
    (Address, st.builds(Address, street=st.text(), since=st.dates())),
    (Line, lines), (Order, orders), (list[Order], st.lists(orders, max_size=2)),
]


@pytest.mark.parametrize("kind, values", CASES, ids=[repr(k) for k, _ in CASES])
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_a_value_comes_back_equal_and_of_its_type(kind, values, data):
    value = data.draw(values)
    stored = json.loads(json.dumps(typed.encode(value, kind, "result"), allow_nan=False))
    back = typed.decode(stored, kind)
    assert back == value and type(back) is type(value)
    if isinstance(value, datetime):
        assert back.utcoffset() == value.utcoffset()  # aware stays aware, naive naive
    if isinstance(value, Decimal):
        assert str(back) == str(value)  # exact: no float on the way


def test_what_cannot_be_rebuilt_is_refused_with_its_path():
    bad = Order(uuid.uuid4(), [Line("a", Decimal("1"), datetime.now(timezone.utc), frozenset()),
                               Line("b", Decimal("NaN"), datetime.now(timezone.utc), frozenset())],
                None, timedelta(), b"", Point(1, float("nan")), (1, "x"), Color.RED, {}, set())
    with pytest.raises(SerializationError, match=r"result\.lines\[1\]\.price: not a finite"):
        typed.encode(bad, Order, "result")
    bad.lines.pop()
    with pytest.raises(SerializationError, match=r"result\.where\.y: float nan has no JSON"):
        typed.encode(bad, Order, "result")
    with pytest.raises(SerializationError, match=r"result: a datetime where a date"):
        typed.encode(datetime.now(), date, "result")
    with pytest.raises(SerializationError, match=r"result\[2\]: a datetime, which plain JSON"):
        typed.encode([1, 2, datetime.now()], list, "result")
    with pytest.raises(SerializationError, match=r"result\[1\]: a key that is not a string"):
        typed.encode({1: "x"}, dict[Any, str], "result")
    # A type the codec does not know takes plain JSON, as no annotation does.
    opaque = type("Opaque", (), {})
    assert typed.encode({"a": [1]}, opaque, "result") == {"a": [1]}
    with pytest.raises(SerializationError, match="result: a Opaque, which plain JSON"):
        typed.encode(opaque(), opaque, "result")


def test_plain_annotations_need_no_codec():
    for kind in (Any, int, str, bool, list, dict, list[int], dict[str, list[str]],
                 Optional[int]):
        assert typed.plain(kind), kind
    for kind in (float, datetime, Order, list[Decimal], Optional[date], tuple[int, int]):
        assert not typed.plain(kind), kind


def test_pydantic_models_round_trip():
    pydantic = pytest.importorskip("pydantic")

    class Customer(pydantic.BaseModel):
        name: str
        since: datetime
        credit: Decimal

    value = Customer(name="Ada", since=datetime(2026, 1, 2, tzinfo=timezone.utc),
                     credit=Decimal("10.25"))
    stored = json.loads(json.dumps(typed.encode(value, Customer, "result")))
    back = typed.decode(stored, Customer)
    assert back == value and type(back) is Customer and back.credit == Decimal("10.25")


# ---- through the database: first run and replay -----------------------------------------

SAMPLE = Order(uuid.UUID(int=7), [Line("sku-1", Decimal("19.990"),
                                        datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc),
                                        frozenset({"gift", "fragile"}))],
               date(2026, 3, 5), timedelta(hours=36, microseconds=1), b"\x00\x01\xfe",
               Point(3, -1.5), (4, "four"), Color.GREEN, {"net": Decimal("0.1")}, {3, 1, 2},
               "leave at the door")
calls = []


@activity(name="tv_order")
async def tv_order() -> Order:
    calls.append("tv_order")
    return SAMPLE


@activity(name="tv_when")
def tv_when(days: int) -> Optional[datetime]:  # sync: runs in a thread
    calls.append("tv_when")
    return datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(days=days) if days else None


@activity(name="tv_untyped")
async def tv_untyped():
    return [1, "two"]


@activity(name="tv_bad")
async def tv_bad() -> list[Decimal]:
    return [Decimal("1"), Decimal("Infinity")]


@workflow(name="tv_flow")
async def tv_flow(ctx) -> str:
    got = []
    for _ in range(2):  # the second time round is a replay of the first
        order = await ctx.execute_activity(tv_order)
        when = await tv_when(3)
        never = await tv_when(0)
        got.append([order == SAMPLE, type(order.lines[0].price).__name__,
                    type(order.seen).__name__, when.isoformat(), never,
                    await tv_untyped()])
        if len(got) == 1:
            await ctx.wait_for_signal("again")
            break
    try:
        await tv_bad()
    except SerializationError as exc:
        got.append(str(exc))
    return json.dumps(got)


async def test_a_typed_result_is_the_same_on_the_first_run_and_on_replay(db_url):
    calls.clear()
    async with TinyWorkflowClient(db_url) as client:
        run_id = await client.start_workflow("tv_flow")
        await client.recover_workflows()  # runs the steps, then parks
        await client.send_signal(run_id, "again")
        await client.recover_workflows()  # replays them from the records
        run = await client.get_workflow_status(run_id)
        steps = await client.get_workflow_steps(run_id)
    assert run.status == "completed", run.error
    first, message = json.loads(run.output_data["result"])
    assert first == [True, "Decimal", "set", "2026-01-04T00:00:00+00:00", None, [1, "two"]]
    assert "result[1]: not a finite number" in message and "tv_bad" in message
    assert calls == ["tv_order", "tv_when", "tv_when"]  # once each, not on the replay
    stored = steps[0].output  # the stored JSON, as the CLI and the web page show it
    assert stored["lines"][0]["price"] == "19.990" and stored["blob"] == "AAH+"


@workflow(name="tv_returns_order")
async def tv_returns_order(ctx) -> Order:
    return await ctx.execute_activity(tv_order)


@workflow(name="tv_returns_bad")
async def tv_returns_bad(ctx) -> date:
    return datetime(2026, 1, 1, 12, 0)  # its time would be lost as a date


async def test_a_workflow_result_is_encoded_by_its_annotation(client):
    run_id = await client.start_workflow("tv_returns_order", wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "completed", run.error
    assert run.output_data["result"]["pair"] == [4, "four"]
    assert typed.decode(run.output_data["result"], Order) == SAMPLE
    run_id = await client.start_workflow("tv_returns_bad", wait=True)
    run = await client.get_workflow_status(run_id)
    assert run.status == "failed"
    assert "the result of workflow 'tv_returns_bad', declared date: result: " \
        in run.error and "a datetime where a date is declared" in run.error


@dataclasses.dataclass
class Node:
    name: str
    children: "list[Node]" = dataclasses.field(default_factory=list)
    weight: Optional[Decimal] = None


def test_a_type_that_holds_itself():
    tree = Node("root", [Node("a", [Node("a1", weight=Decimal("0.5"))]), Node("b")])
    stored = json.loads(json.dumps(typed.encode(tree, Node, "result")))
    assert stored["children"][0]["children"][0]["weight"] == "0.5"
    assert typed.decode(stored, Node) == tree


# ---- what must not come back as something else (a red-team pass) -----------------------

@dataclasses.dataclass
class Base:
    id: str


@dataclasses.dataclass
class Derived(Base):
    extra: int = 0


@dataclasses.dataclass
class Wide:
    x: int
    y: int = 0


@dataclasses.dataclass
class Narrow:
    x: int


def round_trip(value, kind):
    return typed.decode(json.loads(json.dumps(typed.encode(value, kind, "result"))), kind)


def test_a_union_reads_the_same_whatever_the_order_of_its_members():
    for kind in (Union[Narrow, Wide], Union[Wide, Narrow]):  # equal, and hashed alike
        assert round_trip(Wide(1, 2), kind) == Wide(1, 2)
        assert round_trip(Narrow(1), kind) == Narrow(1)
    for kind, value in ((Union[Decimal, float], 1.5), (Union[Decimal, float], Decimal("1.5")),
                        (Union[float, int], 2), (Union[float, int], 2.0),
                        (Union[date, datetime], date(2026, 1, 1)),
                        (Union[datetime, date], datetime(2026, 1, 1, 9)),
                        (Union[uuid.UUID, int], 7)):
        back = round_trip(value, kind)
        assert back == value and type(back) is type(value), (kind, value, back)
    assert type(round_trip(3, Optional[float])) is float  # a float, as declared
    for kind, value in ((Union[datetime, str], "2024-01-01T00:00:00"),
                        (Union[bytes, str], "abcd"), (Union[Decimal, str], "1.5")):
        # The text is what the other member writes: it would read back as that one.
        with pytest.raises(SerializationError, match="a str that would not come back as one"):
            typed.encode(value, kind, "result")
    # Text another member would write otherwise is this member's.
    assert round_trip("2024-01-01T00:00", Union[datetime, str]) == "2024-01-01T00:00"
    assert round_trip("2024-01-01", Union[datetime, str]) == "2024-01-01"


def test_what_would_come_back_as_something_else_is_refused():
    with pytest.raises(SerializationError, match="result: a Derived where Base is declared"):
        typed.encode(Derived("d", 1), Base, "result")
    with pytest.raises(SerializationError, match=r"result\[0\]: a Derived where Base"):
        typed.encode([Derived("d")], list[Base], "result")
    Grid = enum.Enum("Grid", {"ORIGIN": (0, 0)})
    with pytest.raises(SerializationError, match="whose value JSON does not hold"):
        typed.encode(Grid.ORIGIN, Grid, "result")
    with pytest.raises(SerializationError, match="a set of tuples"):
        typed.encode({(1, 2)}, set, "result")
    assert round_trip({(1, 2)}, set[tuple[int, int]]) == {(1, 2)}
    with pytest.raises(SerializationError, match="an int that a float does not hold"):
        typed.encode(10**400, float, "result")
    with pytest.raises(SerializationError, match=r"result\[1\]: a key that is not a string"):
        typed.encode({1: "a"}, dict[int, str], "result")
    assert not typed.plain(dict[int, str]) and typed.plain(dict[str, int])

    @dataclasses.dataclass
    class WithInitVar:
        x: int
        seed: dataclasses.InitVar[int] = 0

    with pytest.raises(SerializationError, match="takes an InitVar"):
        typed.encode(WithInitVar(1), WithInitVar, "result")

    @dataclasses.dataclass
    class Invoice:
        total: Decimal
        status: str = dataclasses.field(init=False, default="new")

    paid = Invoice(Decimal("2"))
    paid.status = "paid"
    assert round_trip(paid, Invoice).status == "paid"


def test_more_typing_forms():
    from typing import Annotated, Generic, Mapping, NewType, Sequence, TypeVar
    OrderId = NewType("OrderId", uuid.UUID)
    T = TypeVar("T")

    @dataclasses.dataclass
    class Page(Generic[T]):
        items: list
        total: Decimal

    one = uuid.UUID(int=1)
    assert round_trip(one, OrderId) == one
    assert round_trip(Decimal("1.5"), Annotated[Decimal, "money"]) == Decimal("1.5")
    assert round_trip([Decimal("1")], Sequence[Decimal]) == [Decimal("1")]
    assert round_trip({"a": Decimal("1")}, Mapping[str, Decimal]) == {"a": Decimal("1")}
    assert round_trip(Page([1], Decimal("2")), Page[int]) == Page([1], Decimal("2"))


class RTree:
    children: "list[RTree]"


RTree.__annotations__["label"] = "RLabel"  # defined by the test below, once it has failed
RTree = dataclasses.dataclass(RTree)


def test_a_type_that_fails_to_be_read_does_not_stay_broken():
    tree = RTree([RTree([], "leaf")], "root")
    with pytest.raises(SerializationError, match="NameError"):
        typed.encode(tree, RTree, "result")  # list[RTree] was made on the way
    globals()["RLabel"] = str
    try:
        assert round_trip(tree, RTree) == tree  # made anew: nothing of the failure kept
    finally:
        del globals()["RLabel"]


def test_the_codec_of_ones_own_does_not_show_values_in_its_errors():
    with pytest.raises(SerializationError) as caught:
        tinyworkflow.Codec().encode({"token": "sk_live_SECRET"}, dict[str, bytes])
    assert str(caught.value) == "value[...]: not a bytes or bytearray"  # no key, no value


@dataclasses.dataclass
class Charge:
    order: str
    fee: int = 0


@dataclasses.dataclass
class Refund:
    order: str


class Level(enum.Enum):
    LOW = "low"


class Limits(TypedDict):
    cap: Decimal


def test_optional_types_and_unions_after_a_second_pass():
    when = datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)
    for kind in (Optional[datetime], datetime | None):  # equal, one cache entry
        assert not typed.plain(kind)
        assert typed.encode(when, kind, "r") == when.isoformat()
        assert typed.decode(when.isoformat(), kind) == when
    assert round_trip(Line("a", Decimal("1"), when, frozenset()), Line | None).price == 1
    assert typed.decode(1.5, Optional[Decimal]) == Decimal("1.5")  # a number, as typed
    with pytest.raises(SerializationError, match="not any of"):
        typed.decode("garbage", Optional[datetime])
    with pytest.raises(SerializationError):
        tinyworkflow.Codec().decode("twelve", Decimal)
    for kind in (Union[Refund, Charge], Union[Charge, Refund]):
        assert round_trip(Refund("o"), kind) == Refund("o")
        assert round_trip(Charge("o"), kind) == Charge("o")
    assert round_trip({"cap": Decimal("2")}, Optional[Limits]) == {"cap": Decimal("2")}
    assert round_trip(3, Union[float, str]) == 3.0
    with pytest.raises(SerializationError) as caught:
        tinyworkflow.Codec().encode({"level": "sk_live_SECRET"}, dict[str, Level])
    assert "SECRET" not in str(caught.value)


@dataclasses.dataclass
class Cons:
    head: int
    tail: "Union[Cons, Leaf]"


@dataclasses.dataclass
class Leaf:
    end: bool = True


def test_a_chain_through_a_union_round_trips():
    chain = Leaf()
    for i in range(100):
        chain = Cons(i, chain)
    assert round_trip(chain, Cons) == chain
