"""Issue 19, property-based: random workflow programs built from activities, durable
sleeps, signal waits, ``asyncio.gather``, sequences, ``asyncio.wait(FIRST_COMPLETED)``
and ``asyncio.wait_for`` replay exactly.

A program is a JSON tree, interpreted by one generic workflow (``loop_prop_interpreter``):

- ``["act", label, value, delay]``: an activity that returns ``value`` after ``delay``
  real seconds (counted per execution);
- ``["sleep", seconds]``: ``ctx.sleep(seconds)`` -> ``"slept"``;
- ``["signal", name]``: ``ctx.wait_for_signal(name)`` -> its payload (every signal is
  sent by the test right after the start);
- ``["gather", [nodes]]``: ``asyncio.gather`` of the nodes -> their results;
- ``["seq", [nodes]]``: the nodes one after another -> their results;
- ``["first", [leaves]]``: ``asyncio.wait(..., FIRST_COMPLETED)`` -> the index of the
  winner, then every leaf is awaited -> ``{"first": i, "results": [...]}``;
- ``["wait_for", leaf, timeout]``: ``asyncio.wait_for(leaf, timeout)`` -> its result or
  ``"timeout"``.

Each program runs twice on a TestClock (SQLite in a temporary directory): once
uninterrupted, and once with ``await ctx.sleep(2)`` after every node, which parks the
run (more than a second) after each node and so forces a full replay after every
activation. Both runs must give the result the program's meaning says, record the same
steps (name, kind, status and, for activities and signals, output) and execute every
activity exactly once.

Races are generated so that their outcome does not depend on machine timing: under a
TestClock workflow time stands still while an activity is in flight (``advance``
settles first), so an activity or a signal (sent before time moves) beats every timer;
a race holds at most one such leaf, and its sleeps are all different. ``wait_for``
timeouts never equal a sleep.

Shrinking is off by default (a broken engine makes each example slow);
TW_LOOP_PROP_SHRINK=1 turns it on, TW_LOOP_PROP_EXAMPLES sets the number of examples.
"""

import asyncio
import collections
import itertools
import json
import os
import shutil
import tempfile
import time
import uuid
from datetime import datetime, timezone

from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from tinyworkflow import RetryPolicy, TestClock, TinyWorkflowClient, activity, workflow

NO_RETRY = RetryPolicy(max_retries=0)
START = datetime(2030, 1, 1, tzinfo=timezone.utc)
FORCED_SLEEP = 2.0  # seconds: parks the run (> 1 s)
SLEEPS = (0.5, 1.5, 3.0)  # held in memory, parked, parked
TIMEOUTS = (1.0, 2.5)  # wait_for timeouts: never equal to a sleep
DELAYS = (0.0, 0.01, 0.03)  # real seconds an activity takes
MAX_DEPTH = 2
ADVANCE = 5.0  # workflow seconds per clock.advance while a run is unfinished
RUN_TIMEOUT = 30.0  # real seconds a run may take before the example fails
FINAL = ("completed", "failed", "cancelled", "compensated", "continued")
MAX_EXAMPLES = int(os.environ.get("TW_LOOP_PROP_EXAMPLES", "25"))
PHASES = (tuple(Phase) if os.environ.get("TW_LOOP_PROP_SHRINK") == "1"
          else (Phase.explicit, Phase.reuse, Phase.generate))

EXECUTIONS: collections.Counter = collections.Counter()  # (token, label) -> executions


@activity(name="loop_prop_act", retry_policy=NO_RETRY)
async def prop_act(token: str, label: str, value: int, delay: float) -> int:
    EXECUTIONS[token, label] += 1
    if delay:
        await asyncio.sleep(delay)
    return value


@workflow(name="loop_prop_interpreter", retry_policy=NO_RETRY)
async def interpreter(ctx):
    token, forced = ctx.get_input("token"), ctx.get_input("forced")

    async def run(node, park: bool = True):
        kind = node[0]
        if kind == "act":
            _, label, value, delay = node
            result = await ctx.execute_activity(prop_act, token, label, value, delay)
        elif kind == "sleep":
            await ctx.sleep(node[1])
            result = "slept"
        elif kind == "signal":
            result = await ctx.wait_for_signal(node[1])
        elif kind == "gather":
            result = list(await asyncio.gather(*(run(child) for child in node[1])))
        elif kind == "seq":
            result = []
            for child in node[1]:
                result.append(await run(child))
        elif kind == "first":
            # The racers are leaves, without forced sleeps: those would change the race.
            racers = [asyncio.ensure_future(run(child, park=False)) for child in node[1]]
            done, _ = await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
            winner = min(i for i, racer in enumerate(racers) if racer in done)
            result = {"first": winner, "results": [await racer for racer in racers]}
        elif kind == "wait_for":
            try:
                result = await asyncio.wait_for(run(node[1], park=False), node[2])
            except asyncio.TimeoutError:
                result = "timeout"
        else:
            raise ValueError(f"unknown node {node!r}")
        if forced and park:
            await ctx.sleep(FORCED_SLEEP)  # parks: the next activation is a replay
        return result

    return await run(ctx.get_input("program"))


# ---- programs ------------------------------------------------------------------------


@st.composite
def leaves(draw):
    kind = draw(st.sampled_from(["act", "act", "sleep", "signal"]))
    if kind == "act":
        return ["act", draw(st.integers(-99, 99)), draw(st.sampled_from(DELAYS))]
    if kind == "sleep":
        return ["sleep", draw(st.sampled_from(SLEEPS))]
    return ["signal"]


@st.composite
def races(draw):
    """FIRST_COMPLETED over leaves: at most one activity or signal, distinct sleeps."""
    immediate = draw(st.sampled_from([None, "act", "signal"]))
    sleeps = draw(st.lists(st.sampled_from(SLEEPS), unique=True,
                           min_size=2 if immediate is None else 1, max_size=3))
    racers = [["sleep", s] for s in sleeps]
    if immediate == "act":
        racers.append(["act", draw(st.integers(-99, 99)), draw(st.sampled_from(DELAYS))])
    elif immediate == "signal":
        racers.append(["signal"])
    return ["first", list(draw(st.permutations(racers)))]


@st.composite
def timed_waits(draw):
    return ["wait_for", draw(leaves()), draw(st.sampled_from(TIMEOUTS))]


@st.composite
def nodes(draw, depth: int = 0):
    kinds = ["leaf", "first", "wait_for"] + (["gather", "seq"] * 2 if depth < MAX_DEPTH else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "leaf":
        return draw(leaves())
    if kind == "first":
        return draw(races())
    if kind == "wait_for":
        return draw(timed_waits())
    return [kind, draw(st.lists(nodes(depth + 1), min_size=1, max_size=3 if depth == 0 else 2))]


def programs():
    return st.builds(lambda kind, children: [kind, children], st.sampled_from(["gather", "seq"]),
                     st.lists(nodes(1), min_size=1, max_size=3))


def numbered(program) -> list:
    """The program with a unique label on every activity and name on every signal."""
    counter = itertools.count(1)

    def walk(node):
        kind = node[0]
        if kind == "act":
            return ["act", f"a{next(counter)}", node[1], node[2]]
        if kind == "signal":
            return ["signal", f"s{next(counter)}"]
        if kind == "sleep":
            return list(node)
        if kind == "wait_for":
            return ["wait_for", walk(node[1]), node[2]]
        return [kind, [walk(child) for child in node[1]]]

    return walk(program)


def walk_all(node):
    yield node
    if node[0] in ("gather", "seq", "first"):
        for child in node[1]:
            yield from walk_all(child)
    elif node[0] == "wait_for":
        yield from walk_all(node[1])


def payload(name: str) -> dict:
    return {"signal": name}


def rank(leaf) -> float:
    """Which leaf of a race finishes first: an activity or a signal at once, a sleep
    after its seconds (of workflow time, which stands still while activities run)."""
    return -1.0 if leaf[0] in ("act", "signal") else leaf[1]


def meaning(node):
    """The result the program must have, whatever the execution."""
    kind = node[0]
    if kind == "act":
        return node[2]
    if kind == "sleep":
        return "slept"
    if kind == "signal":
        return payload(node[1])
    if kind in ("gather", "seq"):
        return [meaning(child) for child in node[1]]
    if kind == "first":
        ranks = [rank(child) for child in node[1]]
        return {"first": ranks.index(min(ranks)), "results": [meaning(c) for c in node[1]]}
    leaf, timeout = node[1], node[2]
    return "timeout" if leaf[0] == "sleep" and leaf[1] > timeout else meaning(leaf)


def parks(node, park: bool = True) -> int:
    """How many forced sleeps the forced run takes: one after every node but racers."""
    kind, own = node[0], 1 if park else 0
    if kind in ("gather", "seq"):
        return own + sum(parks(child) for child in node[1])
    if kind == "first":
        return own + sum(parks(child, False) for child in node[1])
    if kind == "wait_for":
        return own + parks(node[1], False)
    return own


def recorded(steps) -> tuple:
    """The steps of a run, comparable between the two runs: the activities and signal
    waits with their outputs (sorted), and the timers that fired, as a Counter of
    (name, kind) -- their deadlines differ between the runs, and how a timer's input
    is recorded is not what this test is about. The forced sleeps are told apart by
    difference: the forced run has them on top of the plain run's timers."""
    others = sorted(((s.name, s.kind, s.status, json.dumps(s.output, sort_keys=True))
                     for s in steps if s.kind != "timer"), key=repr)
    fired = collections.Counter((s.name, s.kind) for s in steps
                                if s.kind == "timer" and s.status == "completed")
    return others, fired


# ---- running a program ---------------------------------------------------------------


async def execute(url: str, program: list, forced: bool) -> dict:
    token = uuid.uuid4().hex
    clock = TestClock(START)
    async with TinyWorkflowClient(url, auto_start_worker=True, clock=clock) as client:
        run_id = await client.start_workflow("loop_prop_interpreter", {
            "program": program, "token": token, "forced": forced})
        for node in walk_all(program):  # every signal, before any time passes
            if node[0] == "signal":
                await client.send_signal(run_id, node[1], payload(node[1]))
        give_up = time.monotonic() + RUN_TIMEOUT
        while (run := await client.get_workflow_status(run_id)).status not in FINAL:
            if time.monotonic() > give_up:
                steps = [(s.step, s.name, s.kind, s.status)
                         for s in await client.get_workflow_steps(run_id)]
                raise AssertionError(
                    f"{'forced' if forced else 'plain'} run still {run.status} after "
                    f"{RUN_TIMEOUT} s (wake_at {run.wake_at}, owner {run.owner}); steps {steps}")
            await clock.advance(ADVANCE)
        steps = await client.get_workflow_steps(run_id)
        events = collections.Counter(
            e.event_type for e in await client.get_workflow_events(run_id, limit=10_000))
    return {"status": run.status, "error": run.error, "events": events,
            "result": (run.output_data or {}).get("result"), "steps": steps,
            "executions": {label: n for (t, label), n in EXECUTIONS.items() if t == token}}


def run_both(program: list) -> tuple:
    directory = tempfile.mkdtemp(prefix="tw-loop-props-")
    try:
        plain = asyncio.run(execute(f"sqlite+aiosqlite:///{directory}/plain.db"
                                    "?synchronous=off", program, forced=False))
        forced = asyncio.run(execute(f"sqlite+aiosqlite:///{directory}/forced.db"
                                     "?synchronous=off", program, forced=True))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return plain, forced


EXAMPLE = ["seq", [
    ["gather", [["act", 1, 0.01], ["sleep", 1.5], ["signal"]]],
    ["first", [["sleep", 3.0], ["act", 2, 0.03], ["sleep", 0.5]]],
    ["first", [["sleep", 1.5], ["sleep", 0.5]]],
    ["first", [["signal"], ["sleep", 0.5]]],
    ["wait_for", ["act", 3, 0.03], 1.0],
    ["wait_for", ["sleep", 3.0], 1.0],
    ["wait_for", ["sleep", 0.5], 2.5],
    ["wait_for", ["signal"], 1.0],
    ["gather", [["seq", [["act", 4, 0.0], ["sleep", 1.5]]], ["seq", [["sleep", 0.5],
                                                                      ["act", 5, 0.0]]]]],
]]


@settings(max_examples=MAX_EXAMPLES, deadline=None, phases=PHASES,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(program=programs())
@example(program=EXAMPLE)
@example(program=["gather", [["act", 7, 0.0]]])
def test_random_programs_give_the_same_result_and_steps_with_a_replay_after_every_node(
        program):
    """Every random program: the uninterrupted run and the run replayed after every
    node complete with the program's meaning as result, record the same steps, and
    execute each activity exactly once."""
    program = numbered(program)
    plain, forced = run_both(program)
    where = f"program {json.dumps(program)}"
    expected = meaning(program)
    labels = [node[1] for node in walk_all(program) if node[0] == "act"]
    for name, outcome in (("plain", plain), ("forced", forced)):
        assert outcome["status"] == "completed", (name, outcome["error"], where)
        assert outcome["result"] == expected, (name, outcome["result"], expected, where)
        assert outcome["executions"] == {label: 1 for label in labels}, (
            name, outcome["executions"], where)
    # The activities and signal waits, each recorded once with its output.
    wanted = sorted(
        [("loop_prop_act", "activity", "completed", json.dumps(node[2]))
         for node in walk_all(program) if node[0] == "act"]
        + [(node[1], "signal", "completed", json.dumps(payload(node[1]), sort_keys=True))
           for node in walk_all(program) if node[0] == "signal"], key=repr)
    (plain_steps, plain_fired), (forced_steps, forced_fired) = (
        recorded(plain["steps"]), recorded(forced["steps"]))
    assert plain_steps == wanted, (plain_steps, where)
    assert forced_steps == wanted, (forced_steps, where)
    # The same timers fired, and in the forced run one forced sleep more per node: it
    # did park after every node.
    assert not plain_fired - forced_fired, (plain_fired, forced_fired, where)
    assert sum((forced_fired - plain_fired).values()) == parks(program), (
        plain_fired, forced_fired, parks(program), where)
    # Parked and replayed: at least once per node of a top-level sequence.
    assert forced["events"]["workflow_resumed"] >= (
        len(program[1]) if program[0] == "seq" else 1), (forced["events"], where)
