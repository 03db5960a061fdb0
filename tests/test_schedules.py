"""Schedules: cron times (timezones, daylight saving), intervals, delayed runs, the
missed-time policy, pause/resume/update/delete, bad input, and exactly one run per due
time with three worker processes on one database."""

import asyncio
import functools
import signal
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings, strategies as st

import dbutil
import tinyworkflow
from tinyworkflow import (ScheduleNotFoundError, TestClock, TinyWorkflowClient,
                          WorkflowNotFoundError, workflow)

UTC = timezone.utc
NEW_YORK = ZoneInfo("America/New_York")
START = datetime(2026, 3, 1, tzinfo=UTC)  # a Sunday


@workflow(name="sched_echo")
async def sched_echo(ctx):
    return ctx.get_input("n")


def utc(*args) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def cron_times(expression: str, after: datetime, count: int, zone: str = "UTC") -> list:
    times = tinyworkflow._internals.Cron(expression, zone).times(after.timestamp())
    return [datetime.fromtimestamp(next(times), UTC) for _ in range(count)]


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


# ---- cron times -------------------------------------------------------------------------

def test_the_guides_cron_examples():
    after = at(2026, 11, 21, 10, 17)  # a Saturday
    assert cron_times("0 2 * * *", after, 2) == [at(2026, 11, 22, 2), at(2026, 11, 23, 2)]
    assert cron_times("*/5 * * * *", after, 3) == [
        at(2026, 11, 21, 10, 20), at(2026, 11, 21, 10, 25), at(2026, 11, 21, 10, 30)]
    assert cron_times("0 9 * * 1", after, 2) == [at(2026, 11, 23, 9), at(2026, 11, 30, 9)]
    assert cron_times("0 * * * *", after, 2) == [at(2026, 11, 21, 11), at(2026, 11, 21, 12)]
    assert cron_times("0 3 1 * *", after, 3) == [
        at(2026, 12, 1, 3), at(2027, 1, 1, 3), at(2027, 2, 1, 3)]


def test_a_sixth_field_is_seconds_first_and_aliases_work():
    after = at(2026, 11, 21, 10, 17, 1)
    assert cron_times("*/15 * * * * *", after, 3) == [
        at(2026, 11, 21, 10, 17, 15), at(2026, 11, 21, 10, 17, 30), at(2026, 11, 21, 10, 17, 45)]
    assert cron_times("30 0 9 * * *", after, 1) == [at(2026, 11, 22, 9, 0, 30)]
    assert cron_times("@daily", after, 1) == [at(2026, 11, 22)]
    assert cron_times("0 0 9 * * MON-FRI", after, 2) == [
        at(2026, 11, 23, 9), at(2026, 11, 24, 9)]


def test_a_timezone_moves_the_times_with_summer_time():
    # 9:00 in Paris is 8:00 UTC in winter and 7:00 UTC in summer.
    assert cron_times("0 9 * * *", at(2026, 3, 27), 3, "Europe/Paris") == [
        at(2026, 3, 27, 8), at(2026, 3, 28, 8), at(2026, 3, 29, 7)]


def test_spring_forward_a_skipped_time_fires_once_at_the_jump():
    # New York, 2026-03-08: 02:00 EST becomes 03:00 EDT (07:00 UTC).
    after = datetime(2026, 3, 7, 12, tzinfo=NEW_YORK)
    daily = cron_times("30 2 * * *", after, 3, "America/New_York")
    assert [t.astimezone(NEW_YORK).isoformat() for t in daily] == [
        "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00", "2026-03-10T02:30:00-04:00"]
    # Several skipped times: still one run at the jump.
    assert cron_times("*/15 2 * * *", after, 2, "America/New_York") == [
        at(2026, 3, 8, 7), at(2026, 3, 9, 6)]
    # Every hour goes by real time: 01:00 EST, then 03:00 EDT, an hour later.
    hourly = cron_times("0 * * * *", datetime(2026, 3, 8, 0, 30, tzinfo=NEW_YORK), 3,
                        "America/New_York")
    assert hourly == [at(2026, 3, 8, 6), at(2026, 3, 8, 7), at(2026, 3, 8, 8)]


def test_fall_back_a_repeated_time_fires_once_but_hourly_keeps_real_time():
    # New York, 2026-11-01: 02:00 EDT becomes 01:00 EST (06:00 UTC); 01:xx happens twice.
    after = datetime(2026, 10, 31, 12, tzinfo=NEW_YORK)
    daily = cron_times("30 1 * * *", after, 3, "America/New_York")
    assert [t.astimezone(NEW_YORK).isoformat() for t in daily] == [
        "2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00", "2026-11-03T01:30:00-05:00"]
    hourly = cron_times("0 * * * *", datetime(2026, 11, 1, 0, 30, tzinfo=NEW_YORK), 3,
                        "America/New_York")
    assert hourly == [at(2026, 11, 1, 5), at(2026, 11, 1, 6), at(2026, 11, 1, 7)]
    # Every 20 minutes stays every 20 minutes of real time through the repeated hour.
    frequent = cron_times("*/20 * * * *", datetime(2026, 11, 1, 0, 50, tzinfo=NEW_YORK), 9,
                          "America/New_York")
    assert {b - a for a, b in zip(frequent, frequent[1:])} == {timedelta(minutes=20)}


@settings(max_examples=60, deadline=None)
@given(expression=st.sampled_from(["*/7 * * * *", "0 2 * * *", "30 1 * * *", "15 * * * *",
                                   "0 9 * * 1", "*/20 1-3 * * *", "0 0 1 * *"]),
       zone=st.sampled_from(["UTC", "America/New_York", "Europe/Paris", "Australia/Lord_Howe"]),
       after=st.floats(min_value=utc(2024, 1, 1), max_value=utc(2030, 1, 1)))
def test_cron_times_increase_and_match_the_wall_clock(expression, zone, after):
    times = tinyworkflow._internals.Cron(expression, zone).times(after)
    got = [next(times) for _ in range(6)]
    assert got[0] > after and all(a < b for a, b in zip(got, got[1:]))
    for t in got:  # each is a matching wall time, or the jump over a skipped one
        wall = datetime.fromtimestamp(t, ZoneInfo(zone)).replace(tzinfo=None)
        earlier = datetime.fromtimestamp(t - 1, ZoneInfo(zone)).replace(tzinfo=None)
        assert croniter.match(expression, wall) or wall - earlier > timedelta(seconds=1)
    if zone == "UTC":  # no daylight saving: exactly croniter's times
        matches = croniter(expression, datetime.fromtimestamp(after, UTC))
        assert got == [matches.get_next(float) for _ in range(6)]


def test_real_time_expressions_fire_in_the_repeated_hour_from_anywhere_in_it():
    zone = "America/New_York"
    first_pass = datetime(2026, 11, 1, 5, 50, tzinfo=UTC)  # 01:50 EDT
    second_pass = datetime(2026, 11, 1, 6, 10, tzinfo=UTC)  # 01:10 EST
    assert cron_times("*/20 * * * *", first_pass, 3, zone) == [
        at(2026, 11, 1, 6), at(2026, 11, 1, 6, 20), at(2026, 11, 1, 6, 40)]
    assert cron_times("*/20 * * * *", second_pass, 1, zone) == [at(2026, 11, 1, 6, 20)]
    # A fixed hour's second showing is skipped, from either pass.
    assert cron_times("*/20 1 * * *", first_pass, 1, zone) == [at(2026, 11, 2, 6)]
    assert cron_times("*/20 1 * * *", second_pass, 1, zone) == [at(2026, 11, 2, 6)]


@functools.lru_cache(maxsize=None)
def fields(expression: str) -> list:
    return croniter(expression).expanded


def matches(expression: str, wall: datetime) -> bool:
    """Whether the wall time matches (the expressions here restrict no day fields)."""
    values = (wall.minute, wall.hour, wall.day, wall.month, wall.isoweekday() % 7)
    return wall.second == 0 and all(f == ["*"] or v in f
                                    for f, v in zip(fields(expression), values))


def reference_times(expression: str, zone: str, after: float, minutes: int) -> list:
    """The rule, minute by minute: every instant whose wall time matches, except a
    fixed hour's second showing; a jump over a matching wall time fires at the jump."""
    tz, by_real_time = ZoneInfo(zone), fields(expression)[1] == ["*"]
    found, t = [], (int(after) // 60 + 1) * 60
    for _ in range(minutes):
        local = datetime.fromtimestamp(t, tz)
        wall, before = local.replace(tzinfo=None), datetime.fromtimestamp(t - 60, tz)
        skipped = wall - before.replace(tzinfo=None) - timedelta(minutes=1)
        jumped_over = [before.replace(tzinfo=None) + timedelta(minutes=k + 1)
                       for k in range(int(skipped.total_seconds() // 60))]
        if matches(expression, wall) and (by_real_time or local.fold == 0):
            found.append(float(t))
        elif not by_real_time and any(matches(expression, w) for w in jumped_over):
            found.append(float(t))
        t += 60
    return found


@settings(max_examples=100, deadline=None)
@given(expression=st.sampled_from(["*/7 * * * *", "30 2 * * *", "30 1 * * *", "15 * * * *",
                                   "*/20 1-3 * * *", "45 1,2 * * *", "0 0 * * *"]),
       case=st.sampled_from([("America/New_York", utc(2026, 3, 8, 7)),
                             ("America/New_York", utc(2026, 11, 1, 6)),
                             ("Europe/Paris", utc(2026, 3, 29, 1)),
                             ("Europe/Paris", utc(2026, 10, 25, 1)),
                             ("Australia/Lord_Howe", utc(2026, 4, 4, 15)),
                             ("Australia/Lord_Howe", utc(2026, 10, 3, 15, 30))]),
       hours=st.floats(min_value=-22, max_value=4))
def test_cron_times_around_daylight_saving_changes_follow_the_rule(expression, case, hours):
    zone, change = case
    after = change + hours * 3600
    minutes = 27 * 60  # past the change, and a day of each daily expression
    times = tinyworkflow._internals.Cron(expression, zone).times(after)
    expected = reference_times(expression, zone, after, minutes)
    got = []
    while len(got) < len(expected):
        got.append(next(times))
    assert got == expected and next(times) > after + minutes * 60


@settings(max_examples=100, deadline=None)
@given(missed=st.integers(min_value=0, max_value=400), limit=st.integers(1, 50),
       extra=st.floats(min_value=0, max_value=299))
def test_due_times_are_the_latest_missed_ones(missed, limit, extra):
    cron = tinyworkflow._internals.Cron("*/5 * * * *", "UTC")
    first = utc(2026, 3, 1, 0, 5)
    now = first + missed * 300 + extra
    every = [first + k * 300 for k in range(missed + 1)]
    assert tinyworkflow._internals.due_times(cron, first, now, limit) == every[-limit:]


def test_interval_times_keep_to_their_anchor():
    every = tinyworkflow._internals.Every(2.5, 1000.0)
    times = every.times(1000.0)
    assert [next(times) for _ in range(3)] == [1002.5, 1005.0, 1007.5]
    times = every.times(1006.0)
    assert next(times) == 1007.5
    assert tinyworkflow._internals.due_times(every, 1002.5, 1011.0, 2) == [1007.5, 1010.0]


# ---- the client -------------------------------------------------------------------------

async def runs_of(client, schedule_id) -> list:
    runs = await client.list_workflow_executions(limit=1000)
    return sorted((r for r in runs if r.schedule_id == schedule_id),
                  key=lambda r: r.scheduled_for)


async def test_a_cron_schedule_starts_one_run_per_due_time(db_url):
    clock = TestClock(START)
    async with TinyWorkflowClient(db_url, clock=clock, auto_start_worker=True) as client:
        schedule_id = await client.schedule_workflow("sched_echo", "*/5 * * * *", {"n": 7})
        [info] = await client.list_schedules()
        assert info.schedule_id == schedule_id and info.cron_expression == "*/5 * * * *"
        assert info.next_run_at == at(2026, 3, 1, 0, 5) and info.timezone == "UTC"
        assert info.input_data == {"n": 7} and not info.paused and info.catch_up == 1
        await clock.advance(timedelta(minutes=15))
        runs = await dbutil.until(lambda: _finished(client, schedule_id, 3), 10, "three runs")
        assert [r.scheduled_for for r in runs] == [
            at(2026, 3, 1, 0, 5), at(2026, 3, 1, 0, 10), at(2026, 3, 1, 0, 15)]
        assert {r.output_data["result"] for r in runs} == {7}
        info = await client.get_schedule(schedule_id)
        assert info.next_run_at == at(2026, 3, 1, 0, 20)
        assert info.last_run_at == at(2026, 3, 1, 0, 15) and info.last_run_id == runs[-1].run_id
        [created, *_] = await client.get_workflow_events(runs[0].run_id)
        assert created.event_data == {"workflow_name": "sched_echo", "schedule_id": schedule_id,
                                      "scheduled_for": utc(2026, 3, 1, 0, 5)}


async def _finished(client, schedule_id, count):
    runs = await runs_of(client, schedule_id)
    return runs if len(runs) == count and all(r.status == "completed" for r in runs) else None


async def test_a_schedule_in_a_timezone_runs_once_on_the_day_the_clocks_go_back(db_url):
    clock = TestClock(datetime(2026, 10, 31, 12, tzinfo=NEW_YORK))
    async with TinyWorkflowClient(db_url, clock=clock, auto_start_worker=True) as client:
        schedule_id = await client.schedule_workflow("sched_echo", "30 1 * * *",
                                                     timezone="America/New_York")
        await clock.advance(timedelta(days=3))
        runs = await dbutil.until(lambda: _finished(client, schedule_id, 3), 10, "three runs")
        assert [r.scheduled_for.astimezone(NEW_YORK).isoformat() for r in runs] == [
            "2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00",
            "2026-11-03T01:30:00-05:00"]


async def test_an_interval_schedule(db_url):
    clock = TestClock(START)
    async with TinyWorkflowClient(db_url, clock=clock, auto_start_worker=True) as client:
        schedule_id = await client.schedule_workflow("sched_echo", every=timedelta(minutes=10))
        info = await client.get_schedule(schedule_id)
        assert info.every == 600 and info.cron_expression is None
        assert info.next_run_at == at(2026, 3, 1, 0, 10)
        await clock.advance(1800)
        runs = await dbutil.until(lambda: _finished(client, schedule_id, 3), 10, "three runs")
        assert [r.scheduled_for for r in runs] == [
            at(2026, 3, 1, 0, 10), at(2026, 3, 1, 0, 20), at(2026, 3, 1, 0, 30)]


@pytest.mark.parametrize("catch_up, expected", [
    (False, [60]), (3, [50, 55, 60]), (True, list(range(5, 61, 5)))])
async def test_times_missed_while_no_worker_ran(db_url, catch_up, expected):
    clock = TestClock(START)
    async with TinyWorkflowClient(db_url, clock=clock) as client:
        schedule_id = await client.schedule_workflow("sched_echo", "*/5 * * * *",
                                                     catch_up=catch_up)
        await clock.advance(timedelta(minutes=62))  # no worker: every time is missed
        assert await runs_of(client, schedule_id) == []
        await client.start_worker()
        runs = await dbutil.until(lambda: _finished(client, schedule_id, len(expected)), 10,
                                  "the catch-up runs")
        assert [r.scheduled_for for r in runs] == [
            at(2026, 3, 1, 0, minute) if minute < 60 else at(2026, 3, 1, 1)
            for minute in expected]
        [created, *_] = await client.get_workflow_events(runs[0].run_id)
        if catch_up is True:
            assert "skipped_from" not in created.event_data
        else:  # the runs say which times were skipped
            assert created.event_data["skipped_from"] == utc(2026, 3, 1, 0, 5)
        assert (await client.get_schedule(schedule_id)).next_run_at == at(2026, 3, 1, 1, 5)
        await clock.advance(timedelta(minutes=5))  # then on time again
        await dbutil.until(lambda: _finished(client, schedule_id, len(expected) + 1), 10,
                           "the next run")


async def test_pause_resume_and_delete(db_url):
    clock = TestClock(START)
    async with TinyWorkflowClient(db_url, clock=clock, auto_start_worker=True) as client:
        schedule_id = await client.schedule_workflow("sched_echo", every=60)
        paused = await client.pause_schedule(schedule_id)
        assert paused.paused and paused.next_run_at is None
        await clock.advance(600)
        assert await runs_of(client, schedule_id) == []
        assert (await client.pause_schedule(schedule_id)).paused  # again: no change
        resumed = await client.resume_schedule(schedule_id)
        # The paused time is not made up for: the next minute mark from now.
        assert not resumed.paused and resumed.next_run_at == at(2026, 3, 1, 0, 11)
        await clock.advance(60)
        await dbutil.until(lambda: _finished(client, schedule_id, 1), 10, "one run")
        await client.delete_schedule(schedule_id)
        assert await client.list_schedules() == [] and await client.get_schedule(schedule_id) is None
        await clock.advance(600)
        await clock.settle()
        assert len(await runs_of(client, schedule_id)) == 1  # its run stays, no more come
        for change in (client.pause_schedule, client.resume_schedule, client.delete_schedule):
            with pytest.raises(ScheduleNotFoundError, match=schedule_id):
                await change(schedule_id)


async def test_update_a_schedule(db_url):
    clock = TestClock(START)
    async with TinyWorkflowClient(db_url, clock=clock, auto_start_worker=True) as client:
        schedule_id = await client.schedule_workflow("sched_echo", "0 * * * *", {"n": 1})
        info = await client.update_schedule(schedule_id, input_data={"n": 2}, catch_up=True)
        assert info.input_data == {"n": 2} and info.catch_up == 100
        assert info.next_run_at == at(2026, 3, 1, 1)
        info = await client.update_schedule(schedule_id, cron_expression="0 9 * * *",
                                            timezone="Europe/Paris")
        assert info.next_run_at == at(2026, 3, 1, 8) and info.timezone == "Europe/Paris"
        info = await client.update_schedule(schedule_id, timezone="UTC")
        assert info.next_run_at == at(2026, 3, 1, 9) and info.cron_expression == "0 9 * * *"
        info = await client.update_schedule(schedule_id, every=120)
        assert info.cron_expression is None and info.every == 120
        assert info.next_run_at == at(2026, 3, 1, 0, 2)
        await clock.advance(120)
        [run] = await dbutil.until(lambda: _finished(client, schedule_id, 1), 10, "one run")
        assert run.output_data == {"result": 2}
        before = await client.get_schedule(schedule_id)
        with pytest.raises(ValueError, match="interval"):
            await client.update_schedule(schedule_id, timezone="Europe/Paris")
        with pytest.raises(ValueError, match="invalid cron"):
            await client.update_schedule(schedule_id, cron_expression="99 * * * *")
        with pytest.raises(ValueError, match="catch_up"):
            await client.update_schedule(schedule_id, catch_up=-1)
        assert await client.get_schedule(schedule_id) == before  # nothing changed
        with pytest.raises(ScheduleNotFoundError):
            await client.update_schedule("nope", every=5)


@workflow(name="sched_other")
async def sched_other(ctx):
    return "other"


async def test_declaring_a_named_schedule_again_returns_it_as_declared(db_url):
    clock = TestClock(START)
    async with TinyWorkflowClient(db_url, clock=clock) as client:
        first = await client.schedule_workflow("sched_echo", "0 2 * * *", {"n": 1, "m": 2},
                                               schedule_id="nightly")
        before = await client.get_schedule("nightly")
        await clock.advance(60)
        again = await client.schedule_workflow("sched_echo", "0 2  * * *", {"m": 2, "n": 1},
                                               schedule_id="nightly")
        assert first == again == "nightly"
        assert await client.list_schedules() == [before]  # unchanged, not even rewritten
        # The application's code changed: the next start declares another time.
        await client.pause_schedule("nightly")
        await client.schedule_workflow("sched_echo", "0 3 * * *", {"n": 5}, timezone="Asia/Tokyo",
                                       schedule_id="nightly")
        [info] = await client.list_schedules()
        assert (info.cron_expression, info.timezone, info.input_data) == (
            "0 3 * * *", "Asia/Tokyo", {"n": 5})
        assert info.paused  # an operator's pause stays
        await client.schedule_workflow("sched_echo", every=60, schedule_id="nightly")
        [info] = await client.list_schedules()
        assert (info.every, info.cron_expression, info.input_data) == (60, None, None)
        with pytest.raises(ValueError, match="starts workflow 'sched_echo'"):
            await client.schedule_workflow("sched_other", every=60, schedule_id="nightly")
        assert await client.list_schedules() == [info]


@pytest.mark.parametrize("call, message", [
    (dict(cron_expression="61 * * * *"), "invalid cron expression '61 \\* \\* \\* \\*'"),
    (dict(cron_expression="* * *"), "3 fields"),
    (dict(cron_expression="every day"), "2 fields"),
    (dict(cron_expression="0 0 31 2 *"), "never matches"),
    (dict(cron_expression=""), "cron expression"),
    (dict(cron_expression="0 2 * * *", timezone="Mars/Olympus"), "unknown timezone"),
    (dict(cron_expression="0 2 * * *", every=60), "not both"),
    (dict(), "cron expression or every"),
    (dict(every=0), "every must be"),
    (dict(every=float("nan")), "every must be"),
    (dict(every=1e-300), "every must be"),
    (dict(every=0.05), "every must be"),
    (dict(every=timedelta(days=400)), "every must be"),
    (dict(cron_expression="R * * * *"), "random field"),
    (dict(cron_expression="0 R(1-5) * * *"), "random field"),
    (dict(cron_expression="0 2 * * *", schedule_id=""), "schedule_id"),
    (dict(every=60, timezone="Europe/Paris"), "timezone applies to cron"),
    (dict(cron_expression="0 2 * * *", catch_up=0), "catch_up"),
    (dict(cron_expression="0 2 * * *", catch_up=5000), "catch_up"),
    (dict(cron_expression="0 2 * * *", workflow_name="no_such_workflow"), "no_such_workflow"),
])
async def test_bad_schedules_are_refused_and_nothing_is_stored(db_url, call, message):
    call = {"workflow_name": "sched_echo", **call}
    async with TinyWorkflowClient(db_url) as client:
        with pytest.raises(ValueError, match=message):
            await client.schedule_workflow(**call)
        assert await client.list_schedules() == []


async def test_an_unknown_workflow_is_a_workflow_not_found_error(db_url):
    async with TinyWorkflowClient(db_url) as client:
        with pytest.raises(WorkflowNotFoundError):
            await client.schedule_workflow("nope", "0 2 * * *")
        with pytest.raises(WorkflowNotFoundError):
            await client.schedule_delayed_workflow("nope", 10)
        assert await client.list_schedules() == []
        assert await client.list_workflow_executions() == []


async def test_a_stale_worker_cannot_start_a_due_time_twice(db_url):
    """Two workers that read the same due schedule: the revision fences the second."""
    clock = TestClock(START)
    async with TinyWorkflowClient(db_url, clock=clock) as client:
        schedule_id = await client.schedule_workflow("sched_echo", every=60)
        await clock.advance(60)
        store, engine = tinyworkflow._internals.store(client), tinyworkflow._internals.engine(client)
        [due] = await store.due_schedules(clock.time(), ["sched_echo"], 10)
        await engine.fire_schedules()
        assert len(await runs_of(client, schedule_id)) == 1
        assert not await engine.fire(due, clock.time())  # the row it read is stale
        await asyncio.gather(*(engine.fire_schedules() for _ in range(5)))
        assert len(await runs_of(client, schedule_id)) == 1
        # The database refuses a second run for a schedule's due time too.
        [run] = await runs_of(client, schedule_id)
        twin = tinyworkflow._internals.new_run("sched_echo", "null", None, (0, None), clock.time(),
                                     schedule_id=schedule_id,
                                     scheduled_for=run.scheduled_for.timestamp())
        with pytest.raises(Exception):
            await store.insert_run(twin, [])
        assert len(await runs_of(client, schedule_id)) == 1


async def test_a_stale_read_of_a_deleted_schedule_cannot_fire_its_namesake(db_url):
    clock = TestClock(START)
    async with TinyWorkflowClient(db_url, clock=clock) as client:
        await client.schedule_workflow("sched_echo", "0 * * * *", {"n": "old"},
                                       schedule_id="hourly")
        await clock.advance(3600)
        [stale] = await tinyworkflow._internals.store(client).due_schedules(clock.time(), ["sched_echo"], 10)
        await client.delete_schedule("hourly")
        await client.schedule_workflow("sched_echo", "30 5 * * *", {"n": "new"},
                                       schedule_id="hourly")
        assert not await tinyworkflow._internals.engine(client).fire(stale, clock.time())
        assert await client.list_workflow_executions() == []
        assert (await client.get_schedule("hourly")).next_run_at == at(2026, 3, 1, 5, 30)


async def test_schedule_ids_are_checked(db_url):
    async with TinyWorkflowClient(db_url) as client:
        await client.schedule_workflow("sched_echo", "0 2 * * *", schedule_id="nightly")
        before = await client.list_schedules()
        for call in (client.get_schedule, client.pause_schedule, client.resume_schedule,
                     client.delete_schedule):
            for bad in ("", None, 42):
                with pytest.raises(ValueError, match="schedule_id"):
                    await call(bad)
        with pytest.raises(ValueError, match="schedule_id"):
            await client.update_schedule(None, every=5)
        assert await client.list_schedules() == before


async def test_a_schedule_that_cannot_fire_does_not_hold_up_the_others(db_url):
    """One broken schedule (a timezone this machine lacks) and 150 due at once: every
    good one fires at its time, without waiting for the worker's next regular look."""
    clock = TestClock(START)
    async with TinyWorkflowClient(db_url, clock=clock, poll_interval=60) as client:
        broken = await client.schedule_workflow("sched_echo", "* * * * *")
        await dbutil.execute(db_url, "UPDATE tinyworkflow_schedules SET timezone = ? "
                                     "WHERE schedule_id = ?", ("Nowhere/Atlantis", broken))
        many = [await client.schedule_workflow("sched_echo", every=60) for _ in range(150)]
        await clock.advance(61)
        await client.start_worker()
        await dbutil.until(lambda: _started(client, many), 10, "150 runs")
        late = await client.schedule_workflow("sched_echo", every=30)
        await clock.advance(30)
        await dbutil.until(lambda: _started(client, [late]), 5, "the run of the new schedule")


async def _started(client, schedule_ids) -> bool:
    runs = await client.list_workflow_executions(limit=1000)
    return set(schedule_ids) <= {r.schedule_id for r in runs}


# ---- delayed runs -----------------------------------------------------------------------

async def test_a_delayed_run_starts_at_its_time(db_url):
    clock = TestClock(START)
    async with TinyWorkflowClient(db_url, clock=clock, auto_start_worker=True) as client:
        run_id = await client.schedule_delayed_workflow("sched_echo", delay_seconds=3600,
                                                        input_data={"n": 5})
        other = await client.schedule_delayed_workflow("sched_echo", at=at(2026, 3, 1, 0, 30),
                                                       input_data={"n": 6})
        run = await client.get_workflow_status(run_id)
        assert run.status == "pending" and run.scheduled_for == at(2026, 3, 1, 1)
        await clock.advance(timedelta(minutes=59))
        assert (await client.get_workflow_status(other)).status == "completed"
        assert (await client.get_workflow_status(run_id)).status == "pending"
        await clock.advance(timedelta(minutes=1))
        assert await client.wait_for_result(run_id, timeout=10) == 5
        [created, *_] = await client.get_workflow_events(run_id)
        assert created.event_data == {"workflow_name": "sched_echo",
                                      "scheduled_for": utc(2026, 3, 1, 1)}


@pytest.mark.parametrize("call, message", [
    (dict(), "delay_seconds or at"),
    (dict(delay_seconds=5, at=at(2026, 3, 1)), "not both"),
    (dict(delay_seconds=-1), "delay_seconds must be"),
    (dict(delay_seconds="soon"), "delay_seconds must be"),
    (dict(delay_seconds=1e12), "delay_seconds must be"),
    (dict(delay_seconds=2.53e11), "year 9999"),
    (dict(at=datetime(2026, 3, 1)), "timezone-aware"),
])
async def test_bad_delays_are_refused(db_url, call, message):
    async with TinyWorkflowClient(db_url) as client:
        with pytest.raises(ValueError, match=message):
            await client.schedule_delayed_workflow("sched_echo", **call)
        assert await client.list_workflow_executions() == []


async def test_a_delayed_run_survives_a_restart(db_url):
    async with TinyWorkflowClient(db_url, clock=TestClock(START)) as client:
        run_id = await client.schedule_delayed_workflow("sched_echo", 600, {"n": 9})
    # Before its time: a worker leaves it.
    async with TinyWorkflowClient(db_url, clock=TestClock(START + timedelta(minutes=5))) as c:
        assert await c.recover_workflows() == []
    async with TinyWorkflowClient(db_url, clock=TestClock(START + timedelta(minutes=11)),
                                  auto_start_worker=True) as client:
        assert await client.wait_for_result(run_id, timeout=10) == 9


# ---- processes --------------------------------------------------------------------------

WORKER = """
import asyncio, sys
from tinyworkflow import TinyWorkflowClient, workflow

@workflow(name="sched_echo")
async def sched_echo(ctx):
    return ctx.get_input("n")
"""


@pytest.mark.slow
async def test_three_worker_processes_start_each_due_time_exactly_once(db_url):
    workers = [dbutil.start_worker_script(WORKER, db_url, poll=0.05) for _ in range(3)]
    try:
        async with TinyWorkflowClient(db_url) as client:
            await dbutil.until(lambda: _served_by(client, 3), 10, "three workers")
            schedule_id = await client.schedule_workflow("sched_echo", every=0.1,
                                                         catch_up=True, input_data={"n": 1})
            await dbutil.until(lambda: _count(db_url, schedule_id, 60), 60, "60 due times")
            await client.pause_schedule(schedule_id)
            info = await client.get_schedule(schedule_id)
        rows = await dbutil.rows(db_url, "SELECT scheduled_for, COUNT(*) FROM tinyworkflow_runs "
                                         "WHERE schedule_id = ? GROUP BY scheduled_for "
                                         "ORDER BY scheduled_for", (schedule_id,))
        [(anchor,)] = await dbutil.rows(db_url, "SELECT anchor_at FROM tinyworkflow_schedules")
        assert [count for _, count in rows] == [1] * len(rows)  # none twice
        # ... and none missed: every due time from the first to the last has its run.
        assert [due for due, _ in rows] == [anchor + k * 0.1 for k in range(1, len(rows) + 1)]
        assert info.last_run_at.timestamp() == pytest.approx(rows[-1][0], abs=1e-5)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)


async def _served_by(client, count):
    return sum("sched_echo" in w.workflows for w in await client.list_workers()) >= count


async def _count(url, schedule_id, count):
    [(n,)] = await dbutil.rows(url, "SELECT COUNT(*) FROM tinyworkflow_runs WHERE schedule_id = ?",
                               (schedule_id,))
    return n >= count


@pytest.mark.crash
async def test_a_delayed_run_survives_a_killed_worker(db_url):
    worker = dbutil.start_worker_script(WORKER, db_url)
    try:
        async with TinyWorkflowClient(db_url) as client:
            await dbutil.until_served(client, "sched_echo")
            run_id = await client.schedule_delayed_workflow("sched_echo", 1.5, {"n": 3})
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            await asyncio.sleep(2)
            assert (await client.get_workflow_status(run_id)).status == "pending"
            worker = dbutil.start_worker_script(WORKER, db_url)
            assert await client.wait_for_result(run_id, timeout=15) == 3
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
