"""The tinyworkflow command line: one subcommand per call of TinyWorkflowClient.

    tinyworkflow --import-workflows examples.workflows workflows
    tinyworkflow --import-workflows examples.workflows start simple_etl --input '{"n": 1}' --wait
    tinyworkflow status <run_id>
    tinyworkflow list --status failed --json
    tinyworkflow result <run_id> --wait --timeout 60
    tinyworkflow --import-workflows examples.workflows schedule daily_backup "0 2 * * *"
    tinyworkflow --import-workflows examples.workflows worker --concurrency 20

Run as ``tinyworkflow`` (pip), ``python -m tinyworkflow`` or ``python tinyworkflow.py``;
each hands off to ``main()`` here. Uses only the public API of tinyworkflow.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import enum
import importlib
import importlib.util
import json
import logging
import math
import os
import re
import signal
import sys
import traceback
import uuid
from datetime import datetime, timezone
from typing import Any, Optional

import tinyworkflow

_STATUSES = [status.value for status in tinyworkflow.WorkflowStatus]
_EPILOG = """\
exit codes:
  0  success
  1  the operation failed: a run failed (start --wait) or has no result (result), an
     unknown run or schedule id, a run in the wrong state for it (cancel or signal a
     finished run, approve a run not waiting, resume a run that has not failed), the
     database could not be reached
  2  bad usage: an unknown command or option, malformed --input or --payload JSON, an
     unknown workflow name, a bad cron expression or other value the library rejects,
     a run id prefix that starts several ids, no workflow registered (recover, worker)
  130, 143  worker: a second Ctrl-C (SIGINT) or SIGTERM ended it without waiting

Run ids: tables show a generated id's first 8 characters; every command takes any
prefix of 6 or more characters that starts one run id only.

The workflows a command needs must be registered first: pass the module that defines
them with --import-workflows (a dotted module path such as examples.workflows, resolved
from the current directory, or a path to a .py file). --debug shows the traceback of
an error.
"""


class _UsageError(Exception):
    """Bad usage found by the command line itself; exit code 2."""

    def __init__(self, message: str, hint: Optional[str] = None):
        super().__init__(message)
        self.hint = hint


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # same "error: ..." shape as every other failure
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}\nhint: see '{self.prog} --help'\n")


# ---- output -----------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON-ready form: datetimes as ISO 8601, statuses as strings, records as dicts."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tinyworkflow.StepRecord):
            data["duration"] = value.duration
        return data
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _print_json(value: Any) -> None:
    print(json.dumps(_plain(value), indent=2, sort_keys=True, ensure_ascii=False))


def _compact(value: Any, width: Optional[int] = None) -> str:
    text = json.dumps(_plain(value), ensure_ascii=False, separators=(", ", ": "))
    if width is not None and len(text) > width:
        text = text[: width - 3] + "..."
    return text


def _time(value: Optional[datetime]) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _ago(value: Optional[datetime], now: Optional[datetime] = None) -> str:
    """A time relative to now, as a table shows it: "12s ago", "in 3h", "just now"."""
    if value is None:
        return "-"
    seconds = ((now or datetime.now(timezone.utc)) - value).total_seconds()
    size = abs(seconds)
    if size < 1:
        return "just now"
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if size >= length:
            amount = f"{int(size // length)}{unit}"
            break
    return f"in {amount}" if seconds < 0 else f"{amount} ago"


def _when(value: Optional[datetime]) -> str:
    """An absolute time with its relative one, for a record's own page."""
    return "-" if value is None else f"{_time(value)} UTC ({_ago(value)})"


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_SHORT = 8  # characters of a generated id a table shows; any unique prefix of 6+ works


def _short(identifier: Optional[str]) -> str:
    """A generated id's first characters (every command takes them); a chosen id whole."""
    if identifier is None:
        return "-"
    return identifier[:_SHORT] if _UUID.match(identifier) else identifier


def _seconds(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.3g}ms" if value < 1 else f"{value:.2f}s"


def _table(headers: list, rows: list) -> None:
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(str(h)), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for row in [list(headers), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _error(message: Any, hint: Optional[str] = None) -> None:
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def _print_run(run: tinyworkflow.WorkflowExecution) -> None:
    duration = None
    if run.started_at is not None and run.completed_at is not None:
        duration = (run.completed_at - run.started_at).total_seconds()
    fields = [
        ("run id", run.run_id),
        ("workflow", run.workflow_name),
        ("workflow id", run.workflow_id),
        ("status", run.status.value),
        ("created", _when(run.created_at)),
        ("started", _when(run.started_at)),
        ("completed", _when(run.completed_at)),
        ("duration", _seconds(duration)),
        ("retries", f"{run.retry_count} of {run.max_retries}"),
    ]
    if run.wake_at is not None:
        fields.append(("wakes", _when(run.wake_at)))
    if run.queue_name is not None:
        fields.append(("queue", run.queue_name + (f" (key {run.queue_key})" if run.queue_key
                                                  else "") + f", priority {run.priority}"))
    if run.owner is not None:
        fields.append(("owner", run.owner))
    if run.parent_run_id is not None:
        fields.append(("parent run", run.parent_run_id))
    if run.approval_required is not None:
        fields.append(("awaiting", run.approval_required))
    fields += [("input", _compact(run.input_data)),
               ("output", "-" if run.output_data is None else _compact(run.output_data)),
               ("error", run.error or "-")]
    width = max(len(label) for label, _ in fields) + 1
    for label, value in fields:
        print(f"{label + ':':<{width}} {value}")


# ---- commands ---------------------------------------------------------------------------

_MIN_PREFIX = 6  # shortest run id prefix a command resolves: fewer could name another run


async def _require_run(client: tinyworkflow.TinyWorkflowClient,
                       run_id: str) -> tinyworkflow.WorkflowExecution:
    """The run with this id, or with an id starting with it (a short id from a table)."""
    run = await client.get_workflow_status(run_id)
    if run is not None:
        return run
    if len(run_id) >= _MIN_PREFIX:
        runs = await client.list_workflow_executions(run_id_prefix=run_id, limit=2)
        if len(runs) == 1:
            return runs[0]
        if runs:
            raise _UsageError(f"more than one run id starts with {run_id!r}",
                              "give more of it; 'tinyworkflow list --json' shows whole ids")
    raise tinyworkflow.RunNotFoundError(f"no run with id {run_id!r}")


async def _cmd_workflows(client, args) -> int:
    workflows = client.list_registered_workflows()
    activities = client.list_registered_activities()
    served: dict = {}  # workflow name -> how many live workers serve it
    if not _no_sqlite_file(client.database_url):  # (no file: no worker, and none made)
        try:
            async with client:  # (the database is optional here: what is registered shows)
                for worker in await client.list_workers():
                    for name in worker.workflows:
                        served[name] = served.get(name, 0) + 1
        except Exception as exc:  # unreachable, no driver installed...
            print(f"warning: the live workers could not be read: {exc}", file=sys.stderr)
    if args.json:
        _print_json({"workflows": workflows, "activities": activities, "served": served})
        return 0
    names = sorted(set(workflows) | set(served))
    print(f"workflows ({len(names)}):")
    width = max(map(len, names), default=0)
    for name in names:
        where = (["here"] if name in workflows else []) + (
            [f"served by {served[name]} worker{'s' if served[name] > 1 else ''}"]
            if name in served else [])
        print(f"  {name:{width}}  {', '.join(where)}")
    print(f"activities ({len(activities)}):")
    for name in activities:
        print(f"  {name}")
    if not names:
        print("hint: none registered here and no live worker serves any; pass the module "
              "that defines them (--import-workflows MODULE_OR_FILE) or start a worker",
              file=sys.stderr)
    return 0


def _no_sqlite_file(url: str) -> bool:
    """Whether ``url`` names a SQLite database that does not exist (yet)."""
    if not url.startswith("sqlite"):
        return False
    path = url.partition(":///")[2].partition("?")[0]
    return not path or path == ":memory:" or not os.path.exists(path)


class _Progress:
    """Prints a run's steps to stderr as they are recorded (start --wait)."""

    def __init__(self, client: tinyworkflow.TinyWorkflowClient):
        self.client = client
        self.shown: set = set()
        self.done = False  # follow stops (also should a cancellation get lost on its way)

    async def show(self, run_id: str) -> None:
        for step in await self.client.get_workflow_steps(run_id):
            seen = (step.step, step.status, step.attempts)
            if step.status == "running" or seen in self.shown:
                continue
            self.shown.add(seen)
            attempts = f", {step.attempts} attempts" if step.attempts > 1 else ""
            print(f"  step {step.step} {step.name}: {step.status} in "
                  f"{_seconds(step.duration)}{attempts}", file=sys.stderr, flush=True)

    async def follow(self, run_id: str, every: float = 0.25) -> None:
        while not self.done:
            try:
                await self.show(run_id)
            except Exception as exc:  # progress is a courtesy: the run's outcome decides
                _wlog.debug("progress of run %s not read: %s", run_id, exc)
            await asyncio.sleep(every)


async def _cmd_start(client, args) -> int:
    options = {"workflow_id": args.workflow_id, "idempotency_key": args.idempotency_key,
               "queue": args.queue, "queue_key": args.queue_key, "priority": args.priority}
    if not args.wait:
        run_id = await client.start_workflow(args.name, args.input, **options)
        if args.json:
            _print_json({"run_id": run_id})
        else:
            print(run_id)
        return 0
    # The id is chosen here so that the run's steps can be followed while it executes
    # (with an idempotency key, the run may be one stored before: shown once it ends).
    progress = None if args.json else _Progress(client)
    follower = None
    if args.idempotency_key is None:
        args.executing = options["run_id"] = str(uuid.uuid4())
        follower = progress and asyncio.create_task(progress.follow(args.executing))
    try:
        run_id = await client.start_workflow(args.name, args.input, wait=True, **options)
    finally:
        if follower:
            # Python 3.11's asyncio.wait_for (the drivers' connect) can lose a
            # cancellation that meets a completion: the flag ends the loop regardless.
            progress.done = True
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
    run = await _require_run(client, run_id)
    if progress:
        await progress.show(run_id)  # the steps recorded since the last look
    if args.json:
        _print_json(run)
    else:
        print(run_id)
        print(f"status: {run.status.value}")
        if run.status == tinyworkflow.WorkflowStatus.COMPLETED:
            result = (run.output_data or {}).get("result")
            print(f"result: {_compact(result)}")
    if run.status == tinyworkflow.WorkflowStatus.COMPLETED:
        return 0
    _error(f"run {run_id} {run.status.value}" + (f": {run.error}" if run.error else ""),
           f"see its steps: tinyworkflow steps {_short(run_id)}")
    return 1


async def _cmd_status(client, args) -> int:
    run = await _require_run(client, args.run_id)
    if args.json:
        _print_json(run)
    else:
        _print_run(run)
    return 0


async def _cmd_result(client, args) -> int:
    run = await _require_run(client, args.run_id)
    wait = args.wait or args.timeout is not None
    outcome: dict = {"run_id": run.run_id}
    try:
        result = await client.wait_for_result(run.run_id,
                                              timeout=args.timeout if wait else 0)
    except tinyworkflow.WorkflowFailedError as exc:
        outcome.update(status=exc.status, error=exc.error)
        failure, hint = str(exc), f"see its steps: tinyworkflow steps {_short(run.run_id)}"
    except TimeoutError:
        if wait and args.timeout is None:
            raise  # not ours: the database's
        status = (await _require_run(client, run.run_id)).status.value
        outcome.update(status=status)
        failure = (f"run {run.run_id} is still {status} after {args.timeout:g}s" if wait
                   else f"run {run.run_id} is {status}: it has no result yet")
        hint = None if wait else f"wait for it: tinyworkflow result {_short(run.run_id)} --wait"
    else:
        if args.json:
            _print_json({**outcome, "status": "completed", "result": result})
        else:
            print(json.dumps(_plain(result), indent=2, ensure_ascii=False))
        return 0
    if args.json:
        _print_json(outcome)
    _error(failure, hint)
    return 1


async def _cmd_list(client, args) -> int:
    runs = await client.list_workflow_executions(status=args.status, workflow_name=args.workflow,
                                                 limit=args.limit, offset=args.offset)
    if args.json:
        _print_json(runs)
    elif not runs:
        print("no runs")
    else:
        now = datetime.now(timezone.utc)
        _table(["RUN ID", "WORKFLOW", "STATUS", "RETRIES", "CREATED", "FINISHED"],
               [[_short(r.run_id), r.workflow_name, r.status.value, r.retry_count,
                 _ago(r.created_at, now), _ago(r.completed_at, now)] for r in runs])
    return 0


async def _cmd_events(client, args) -> int:
    run = await _require_run(client, args.run_id)
    events = await client.get_workflow_events(run.run_id, limit=args.limit)
    if args.json:
        _print_json(events)
    else:
        _table(["ID", "TIME (UTC)", "EVENT", "DATA"],
               [[e.id, _time(e.timestamp), e.event_type,
                 "" if e.event_data in (None, {}) else _compact(e.event_data, 100)]
                for e in events])
    return 0


async def _cmd_steps(client, args) -> int:
    run = await _require_run(client, args.run_id)
    steps = await client.get_workflow_steps(run.run_id)
    if args.json:
        _print_json(steps)
    elif not steps:
        print("no steps recorded")
    else:
        rows = []
        for s in steps:
            error = ""
            if isinstance(s.error, dict):
                kind = str(s.error.get("type", "")).rpartition(".")[2]
                error = f"{kind}: {s.error.get('message', '')}"[:80]
            rows.append([s.step, s.name, s.kind, s.status, s.attempts, _seconds(s.duration),
                         error])
        _table(["STEP", "NAME", "KIND", "STATUS", "ATTEMPTS", "DURATION", "ERROR"], rows)
    return 0


async def _cmd_cancel(client, args) -> int:
    run_id = (await _require_run(client, args.run_id)).run_id
    try:
        cancelled = await client.cancel_workflow(run_id)
    except tinyworkflow.RunStateError:  # had already finished: reported below, exit 1
        cancelled = False
    run = await _require_run(client, run_id)
    if args.json:
        _print_json({"run_id": run_id, "cancelled": cancelled, "status": run.status})
    elif cancelled:
        print(f"cancelled {run_id}" + (" (its compensations run now)"
                                       if run.status == "compensating" else ""))
    if not cancelled:
        _error(f"run {run_id} had already finished ({run.status.value}); nothing to cancel")
        return 1
    return 0


async def _cmd_resume(client, args) -> int:
    run_id = (await _require_run(client, args.run_id)).run_id
    try:
        await client.resume_workflow(run_id)
    except tinyworkflow.RunStateError as exc:  # not failed or cancelled: nothing changed
        _error(exc)
        return 1
    if args.json:
        _print_json({"run_id": run_id, "resumed": True})
    else:
        print(f"resumed {run_id}: a worker executes it from its failure point")
    return 0


async def _cmd_fork(client, args) -> int:
    source = (await _require_run(client, args.run_id)).run_id
    run_id = await client.fork_workflow(source, args.from_step)
    if args.json:
        _print_json({"run_id": run_id, "forked_from": source, "from_step": args.from_step})
    else:
        print(run_id)
    return 0


async def _cmd_approvals(client, args) -> int:
    runs = await client.get_pending_approvals()
    if args.json:
        _print_json(runs)
    elif not runs:
        print("no runs are waiting for an approval")
    else:
        now = datetime.now(timezone.utc)
        _table(["RUN ID", "WORKFLOW", "APPROVAL", "WAITING SINCE", "TIMES OUT"],
               [[_short(r.run_id), r.workflow_name, r.approval_required,
                 _ago(r.updated_at, now), _ago(r.wake_at, now)] for r in runs])
    return 0


async def _cmd_approve(client, args) -> int:
    run_id = (await _require_run(client, args.run_id)).run_id
    decide = client.approve_workflow if args.approve else client.reject_workflow
    try:
        await decide(run_id, key=args.key)
    except tinyworkflow.RunStateError as exc:  # not waiting: nothing changed, exit 1
        _error(exc, "list the runs waiting for an approval with: tinyworkflow approvals")
        return 1
    decision = "approved" if args.approve else "rejected"
    if args.json:
        _print_json({"run_id": run_id, "decision": decision})
    else:
        print(f"{decision} {run_id}")
    return 0


async def _cmd_signal(client, args) -> int:
    run_id = (await _require_run(client, args.run_id)).run_id
    try:
        await client.send_signal(run_id, args.name, args.payload)
    except tinyworkflow.RunStateError as exc:  # finished: nothing stored, exit 1
        _error(exc)
        return 1
    if args.json:
        _print_json({"run_id": run_id, "signal": args.name})
    else:
        print(f"sent signal {args.name!r} to {run_id}")
    return 0


async def _cmd_recover(client, args) -> int:
    if not client.list_registered_workflows():
        _error("no workflows are registered, so there is nothing this process can execute",
               "pass the module that defines them: --import-workflows MODULE_OR_FILE")
        return 2
    run_ids = await client.recover_workflows()
    runs = [await _require_run(client, run_id) for run_id in run_ids]
    if args.json:
        _print_json([{"run_id": r.run_id, "workflow_name": r.workflow_name, "status": r.status}
                     for r in runs])
    elif not runs:
        print("no runs were due")
    else:
        _table(["RUN ID", "WORKFLOW", "STATUS"],
               [[_short(r.run_id), r.workflow_name, r.status.value] for r in runs])
    return 0


async def _cmd_cleanup(client, args) -> int:
    deleted = await client.cleanup_old_workflows(days=args.days)
    if args.json:
        _print_json({"deleted": deleted, "days": args.days})
    else:
        print(f"deleted {deleted} run(s) that finished more than {args.days:g} day(s) ago")
    return 0


def _timing(schedule: tinyworkflow.ScheduleInfo) -> str:
    if schedule.cron_expression is None:
        return f"every {schedule.every:g}s"
    return f"{schedule.cron_expression} ({schedule.timezone})"


async def _cmd_schedule(client, args) -> int:
    schedule_id = await client.schedule_workflow(
        args.name, args.cron, args.input, every=args.every, timezone=args.timezone,
        catch_up=args.catch_up, schedule_id=args.schedule_id, workflow_id=args.workflow_id)
    schedule = await client.get_schedule(schedule_id)
    if args.json:
        _print_json(schedule)
    else:
        print(schedule_id)
        print(f"{args.name} {_timing(schedule)}; next run {_when(schedule.next_run_at)}")
    return 0


async def _require_schedule(client, schedule_id: str) -> tinyworkflow.ScheduleInfo:
    """The schedule with this id, or the one whose id starts with it."""
    schedule = await client.get_schedule(schedule_id)
    if schedule is not None:
        return schedule
    matches = [s for s in await client.list_schedules() if s.schedule_id.startswith(schedule_id)]
    if len(matches) == 1 and len(schedule_id) >= _MIN_PREFIX:
        return matches[0]
    if len(matches) > 1 and len(schedule_id) >= _MIN_PREFIX:
        raise _UsageError(f"more than one schedule id starts with {schedule_id!r}",
                          "give more of it; 'tinyworkflow schedules --json' shows whole ids")
    raise tinyworkflow.ScheduleNotFoundError(f"no schedule has the id {schedule_id!r}")


async def _cmd_schedules(client, args) -> int:
    action = args.action or "list"
    if action == "list":
        schedules = await client.list_schedules()
        if args.json:
            _print_json(schedules)
        elif not schedules:
            print("no schedules")
        else:
            now = datetime.now(timezone.utc)
            _table(["SCHEDULE", "WORKFLOW", "TIMING", "STATE", "NEXT RUN", "LAST RUN",
                    "LAST RUN ID"],
                   [[_short(s.schedule_id), s.workflow_name, _timing(s),
                     "paused" if s.paused else "active", _ago(s.next_run_at, now),
                     _ago(s.last_run_at, now), _short(s.last_run_id)] for s in schedules])
        return 0
    schedule_id = (await _require_schedule(client, args.schedule_id)).schedule_id
    if action == "delete":
        await client.delete_schedule(schedule_id)
        if args.json:
            _print_json({"schedule_id": schedule_id, "deleted": True})
        else:
            print(f"deleted schedule {schedule_id}; the runs it started stay")
        return 0
    change = client.pause_schedule if action == "pause" else client.resume_schedule
    schedule = await change(schedule_id)
    if args.json:
        _print_json(schedule)
    else:
        state = "paused" if schedule.paused else "active"
        print(f"schedule {schedule_id} is {state}"
              + ("" if schedule.paused else f"; next run {_when(schedule.next_run_at)}"))
    return 0


def _limit(value: Optional[int]) -> str:
    return "-" if value is None else str(value)


async def _cmd_queues(client, args) -> int:
    queues = await client.list_queues()
    if args.json:
        _print_json(queues)
    elif not queues:
        print("no queues")
    else:
        _table(["QUEUE", "WAITING", "RUNNING", "CONCURRENCY", "PER WORKER", "PER KEY", "RATE",
                "STARTED IN PERIOD"],
               [[q.name, q.waiting, q.running, _limit(q.concurrency),
                 _limit(q.worker_concurrency), _limit(q.key_concurrency),
                 "-" if q.rate_limit is None else f"{q.rate_limit[0]}/{q.rate_limit[1]:g}s",
                 "-" if q.rate_limit is None else q.started_recently] for q in queues])
    return 0


async def _cmd_workers(client, args) -> int:
    workers = await client.list_workers()
    if args.json:
        _print_json(workers)
    elif not workers:
        print("no live workers")
    else:
        now = datetime.now(timezone.utc)
        _table(["WORKER", "HOST", "PID", "STARTED", "HEARTBEAT", "WORKFLOWS"],
               [[_short(w.worker_id), w.host, w.pid, _ago(w.started_at, now),
                 _ago(w.heartbeat_at, now), ", ".join(w.workflows)] for w in workers])
    return 0


# ---- the worker -------------------------------------------------------------------------

_wlog = logging.getLogger("tinyworkflow.cli")


def _masked(url: str) -> str:
    """The database URL without its password, fit for a log line."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


@contextlib.contextmanager
def _logging_to_stderr(verbose: bool):
    """Show the library's log (the "tinyworkflow" logger) on stderr while the worker runs."""
    logger = logging.getLogger("tinyworkflow")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s %(message)s",
                                           "%Y-%m-%d %H:%M:%S"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False  # once, even if the imported code configured the root logger
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


async def _cmd_worker(client, args) -> int:
    if not client.list_registered_workflows():
        _error("no workflows are registered, so there is nothing this worker can execute",
               "pass the module that defines them: --import-workflows MODULE_OR_FILE")
        return 2
    return await _serve(client, args, page=False)


async def _cmd_server(client, args) -> int:
    return await _serve(client, args, page=True)


async def _serve(client, args, page: bool) -> int:
    """The worker, and with ``page`` the web page beside it, until SIGTERM or Ctrl-C."""
    workflows = client.list_registered_workflows()
    webui = _webui() if page else None
    token = (getattr(args, "token", None) or os.environ.get("TINYWORKFLOW_UI_TOKEN")) or None
    with _logging_to_stderr(args.verbose), _stop_signals(args.grace) as stopping:
        async with client:  # opened only now: a refused worker leaves no database behind
            if stopping.is_set():  # a signal while the database was opening
                return 0
            ui = None
            if page:
                try:
                    ui = await webui.serve(client, args.host, args.port, token)
                except OSError as exc:
                    _error(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
                           "pick another --port, or stop what uses this one")
                    return 1
            if workflows:
                await client.start_worker()
            database = _masked(client.database_url)
            started = {"worker": "started" if workflows else "not started",
                       "workflows": workflows, "database": database}
            if ui is not None:
                started = {"server": "started", "url": ui.url, **started}
            if args.json:
                print(json.dumps(started), flush=True)
            elif ui is not None:
                print(f"serving {ui.url} with a worker for {len(workflows)} workflow(s) "
                      f"from {database}; Ctrl-C or SIGTERM stops it", flush=True)
            else:
                print(f"worker started: serving {len(workflows)} workflow(s) "
                      f"({', '.join(workflows)}) from {database}; Ctrl-C or SIGTERM stops it",
                      flush=True)
            if page and not workflows:
                _wlog.warning("no workflows are registered: the page shows the database, but "
                              "no run executes in this process (pass --import-workflows "
                              "MODULE_OR_FILE)")
            await stopping.wait()
            if ui is not None:
                await ui.stop()
            if workflows:
                await client.stop_worker(grace=args.grace)
        _wlog.info("server stopped" if page else "worker stopped")
    return 0


@contextlib.contextmanager
def _stop_signals(grace: float):
    """An event set by the first SIGINT or SIGTERM; a second one ends the process."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stopping.is_set():
            # Like a crash: whatever this worker still holds resumes elsewhere once its
            # lease expires. Nothing is awaited, so nothing can keep the process alive.
            _wlog.warning("%s again: exiting at once; runs still held here resume elsewhere "
                          "once their leases expire", name)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + signum)
        _wlog.info("%s: stopping; steps in flight get up to %gs to finish, then the runs "
                   "are released (send it again to exit at once)", name, grace)
        stopping.set()

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
        except (NotImplementedError, ValueError, RuntimeError):
            pass  # Windows, or not the main thread: Ctrl-C interrupts without the grace
    try:
        yield stopping
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


# ---- importing the user's workflows -----------------------------------------------------


def _import_workflows(specs: list) -> None:
    """Import each module or .py file so that its @workflow/@activity register here."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # the console script does not put it there; run from a root
    for spec in specs:
        if spec.endswith(".py") or "/" in spec or os.sep in spec:
            _import_file(spec)
        else:
            _import_module(spec)


def _codec(spec: Optional[str]) -> Any:
    """The codec ``--codec MODULE:NAME`` names (an instance, or a class to make one)."""
    if spec is None:
        return None
    module, _, name = spec.partition(":")
    if not module or not name:
        raise _UsageError(f"--codec takes MODULE:NAME, got {spec!r}",
                          "name the codec as it is imported: myapp.codecs:Compressed")
    _import_module(module)
    codec = getattr(sys.modules[module], name, None)
    if codec is None:
        raise _UsageError(f"module {module!r} has no {name!r}", None)
    return codec() if isinstance(codec, type) else codec


def _import_module(name: str) -> None:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
            raise  # the module exists but one of its own imports is missing
        raise _UsageError(f"no module named {name!r} importable from {os.getcwd()}",
                          "run from your project's root directory, or pass the path of "
                          "the .py file") from None


def _import_file(path: str) -> None:
    path = os.path.realpath(path)
    if not os.path.isfile(path):
        raise _UsageError(f"no such file: {path}",
                          "pass a .py file, or a dotted module path such as examples.workflows")
    name = os.path.splitext(os.path.basename(path))[0]
    loaded = sys.modules.get(name)
    if loaded is not None:
        loaded_file = getattr(loaded, "__file__", None)
        if loaded_file and os.path.realpath(loaded_file) == path:
            return
        raise _UsageError(f"cannot import {path} as module {name!r}: a module of that name is "
                          f"already loaded from {loaded_file or 'the standard library'}",
                          "rename the file, or pass it as a dotted module path")
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # as for a script: its sibling modules import
    _load(name, path)


def _load(name: str, path: str):
    """Execute the file at ``path`` as the module ``name`` (gone again if it fails)."""
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _webui():
    """The web page's module: webui.py beside this file (a checkout, or a project that
    copied both in), else tinyworkflow_webui as pip installs it beside tinyworkflow_cli."""
    name = "tinyworkflow_webui"  # the name tinyworkflow gives it too: one module
    if name in sys.modules:
        return sys.modules[name]
    here = os.path.dirname(os.path.abspath(__file__))
    for file in ("webui.py", f"{name}.py"):
        if os.path.exists(os.path.join(here, file)):
            return _load(name, os.path.join(here, file))
    raise ImportError(f"webui.py is not beside {__file__}; copy it from the tinyworkflow "
                      "sources too, or pip install tinyworkflow")


# ---- parser and main --------------------------------------------------------------------


def _json_input(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"not valid JSON ({exc}); quote it for the shell, e.g. "
            "--input '{\"key\": \"value\"}'") from None


def _number(cast: type, least: float, *, strict: bool = False, what: str = "a whole number"):
    """An argparse type: a finite number >= least (> least when strict)."""
    bound = f"{'>' if strict else '>='} {least:g}"

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < least or (strict and value == least):
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {text!r}")
        return value
    return parse


_count = _number(int, 0)
_positive_count = _number(int, 1)
_days = _number(float, 0, what="a number of days")


def _port(text: str) -> int:
    value = _number(int, 0, what="a port number")(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number up to 65535, got {text!r}")
    return value


def _seconds_type(zero_ok: bool):
    return _number(float, 0, strict=not zero_ok, what="a number of seconds")


def _add_global_options(parser: argparse.ArgumentParser, suffix: str = "") -> None:
    # Accepted before the command and again after it; after-values land in *_after
    # (a subcommand parses into a fresh namespace that would overwrite the first ones).
    group = parser.add_argument_group("global options")
    default, flag_default = (argparse.SUPPRESS, argparse.SUPPRESS) if suffix else (None, False)
    group.add_argument("--db", dest="db" + suffix, metavar="URL", default=default,
                       help="database URL (default: $TINYWORKFLOW_DATABASE_URL, else "
                            "sqlite+aiosqlite:///tinyworkflow.db)")
    group.add_argument("--import-workflows", dest="imports" + suffix, action="append",
                       metavar="MODULE_OR_FILE", default=default,
                       help="import a module (examples.workflows) or a .py file that "
                            "registers workflows; repeatable")
    group.add_argument("--codec", dest="codec" + suffix, metavar="MODULE:NAME",
                       default=default,
                       help="the codec the application gives its client (a "
                            "tinyworkflow.Codec, or its class), such as myapp.codecs:Compressed; "
                            "its module is imported")
    group.add_argument("--json", dest="json" + suffix, action="store_true",
                       default=flag_default,
                       help="print stable machine-readable JSON")
    group.add_argument("--debug", dest="debug" + suffix, action="store_true",
                       default=flag_default,
                       help="on an error, show the Python traceback too")


_COMMANDS: dict = {}


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tinyworkflow", epilog=_EPILOG,
                     description="Durable workflows: start, inspect, cancel and recover runs.",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"tinyworkflow {tinyworkflow.__version__}")
    _add_global_options(parser)
    after = _Parser(add_help=False)
    _add_global_options(after, "_after")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name, handler, help, needs_db=True):
        sub = commands.add_parser(name, help=help, description=help, parents=[after],
                                  epilog=_EPILOG,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(handler=handler, needs_db=needs_db)
        return sub

    command("workflows", _cmd_workflows, "list the registered workflows and activities",
            needs_db=False)
    sub = command("start", _cmd_start, "start a run of a workflow and print its run id")
    sub.add_argument("name", metavar="NAME", help="registered workflow name")
    sub.add_argument("--input", type=_json_input, default=None, metavar="JSON",
                     help="the run's input as JSON, e.g. '{\"key\": \"value\"}'")
    sub.add_argument("--wait", action="store_true",
                     help="execute the run here until it finishes, showing its steps as they "
                          "complete; exit 1 if it fails")
    sub.add_argument("--workflow-id", default=None, metavar="ID",
                     help="groups related runs (default: the workflow name)")
    sub.add_argument("--idempotency-key", default=None, metavar="KEY",
                     help="start at most one run for this key: again, it prints the same run")
    sub.add_argument("--queue", default=None, metavar="NAME",
                     help="start the run within this queue's limits")
    sub.add_argument("--queue-key", default=None, metavar="KEY",
                     help="the run's key for the queue's per-key limit (a tenant, a user)")
    sub.add_argument("--priority", type=int, default=None, metavar="N",
                     help="its place among the queue's waiting runs: lower first (default 0)")
    sub = command("status", _cmd_status, "show one run")
    sub.add_argument("run_id", metavar="RUN_ID")
    sub = command("result", _cmd_result,
                  "print a finished run's result as JSON; exit 1 if it failed or has not "
                  "finished")
    sub.add_argument("run_id", metavar="RUN_ID")
    sub.add_argument("--wait", action="store_true",
                     help="wait until it finishes (a worker executes it)")
    sub.add_argument("--timeout", type=_seconds_type(zero_ok=True), default=None, metavar="S",
                     help="wait at most this long (implies --wait); exit 1 if it has not "
                          "finished by then")
    sub = command("list", _cmd_list, "list runs, newest first")
    sub.add_argument("--status", choices=_STATUSES, default=None)
    sub.add_argument("--workflow", default=None, metavar="NAME")
    sub.add_argument("--limit", type=_count, default=100, metavar="N")
    sub.add_argument("--offset", type=_count, default=0, metavar="N")
    sub = command("events", _cmd_events, "show a run's audit trail, oldest first")
    sub.add_argument("run_id", metavar="RUN_ID")
    sub.add_argument("--limit", type=_count, default=100, metavar="N")
    sub = command("steps", _cmd_steps, "show a run's recorded steps")
    sub.add_argument("run_id", metavar="RUN_ID")
    sub = command("cancel", _cmd_cancel, "cancel a run that has not finished")
    sub.add_argument("run_id", metavar="RUN_ID")
    sub = command("resume", _cmd_resume,
                  "run a failed or cancelled run again from its failure point (its completed "
                  "steps are not executed again); a worker executes it")
    sub.add_argument("run_id", metavar="RUN_ID")
    sub = command("fork", _cmd_fork,
                  "start a new run of the same workflow and input that reuses the steps "
                  "before --from-step and executes from there; prints its run id")
    sub.add_argument("run_id", metavar="RUN_ID")
    sub.add_argument("--from-step", type=_positive_count, required=True, metavar="N",
                     help="the first step to execute again (see: tinyworkflow steps RUN_ID)")
    command("approvals", _cmd_approvals, "list the runs waiting for an approval")
    sub = command("approve", _cmd_approve,
                  "approve or reject the approval a paused run waits for")
    sub.add_argument("run_id", metavar="RUN_ID")
    decision = sub.add_mutually_exclusive_group(required=True)
    decision.add_argument("--approve", action="store_true", help="wait_for_approval returns True")
    decision.add_argument("--reject", action="store_true", help="wait_for_approval returns False")
    sub.add_argument("--key", default=None, metavar="KEY",
                     help="decide only if the run waits for this approval key")
    sub = command("signal", _cmd_signal, "send a signal to a run that has not finished")
    sub.add_argument("run_id", metavar="RUN_ID")
    sub.add_argument("name", metavar="NAME", help="the name its wait_for_signal waits for")
    sub.add_argument("--payload", type=_json_input, default=None, metavar="JSON",
                     help="the signal's payload as JSON (default null)")
    sub = command("schedule", _cmd_schedule,
                  "start runs of a workflow on a cron schedule (or --every S seconds), kept in "
                  "the database and started by the workers that serve it; prints its id")
    sub.add_argument("name", metavar="NAME", help="the workflow to start")
    sub.add_argument("cron", metavar="CRON", nargs="?", default=None,
                     help="minute hour day month weekday, e.g. '0 2 * * *' (a sixth field "
                          "first: seconds)")
    sub.add_argument("--every", type=_seconds_type(zero_ok=False), default=None, metavar="S",
                     help="start a run every S seconds instead of on a cron expression")
    sub.add_argument("--input", type=_json_input, default=None, metavar="JSON",
                     help="each run's input as JSON")
    sub.add_argument("--timezone", default=None, metavar="ZONE",
                     help="the cron expression's timezone, e.g. Europe/Paris (default UTC)")
    sub.add_argument("--catch-up", type=_positive_count, default=1, metavar="N",
                     help="of the times missed while no worker ran, start the latest N "
                          "(default 1)")
    sub.add_argument("--id", dest="schedule_id", default=None, metavar="ID",
                     help="name the schedule: declaring it again updates it (default: a new "
                          "id)")
    sub.add_argument("--workflow-id", default=None, metavar="ID",
                     help="the workflow id of the runs it starts (default: the workflow name)")
    sub = command("schedules", _cmd_schedules,
                  "list the schedules, or pause, resume or delete one")
    actions = sub.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    actions.add_parser("list", help="list the schedules (the default)", parents=[after])
    for action, text in (("pause", "start no more runs until resumed"),
                         ("resume", "start runs again from the next due time"),
                         ("delete", "delete the schedule; the runs it started stay")):
        one = actions.add_parser(action, help=text, description=text, parents=[after])
        one.add_argument("schedule_id", metavar="SCHEDULE_ID")
    command("queues", _cmd_queues,
            "list the queues: runs waiting and running in each, and their limits")
    command("workers", _cmd_workers, "list the live workers sharing the database")
    command("recover", _cmd_recover,
            "execute here every due run of the imported workflows (pending, due for a "
            "retry, or left by a crashed process) and print their run ids")
    sub = command("cleanup", _cmd_cleanup,
                  "delete finished runs older than --days, with their steps and events")
    sub.add_argument("--days", type=_days, required=True, metavar="N")
    sub = command("worker", _cmd_worker,
                  "execute runs of the imported workflows until SIGTERM or Ctrl-C: due runs, "
                  "runs started elsewhere with wait=False, and runs left by a crashed worker "
                  "once their lease expires; logs to stderr",
                  needs_db=False)  # opens it itself, once it knows it will serve
    _add_worker_options(sub)
    sub = command("server", _cmd_server,
                  "serve the web page (dashboard, runs, start form, approvals, schedules) "
                  "and its JSON API, with a worker for the imported workflows beside it, "
                  "until SIGTERM or Ctrl-C",
                  needs_db=False)
    sub.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default 127.0.0.1: this machine only); "
                          "another needs --token")
    sub.add_argument("--port", type=_port, default=8080,
                     help="port (default 8080; 0 picks a free one)")
    sub.add_argument("--token", default=None, metavar="TOKEN",
                     help="require this token on every request (default "
                          "$TINYWORKFLOW_UI_TOKEN); open the page as /?token=TOKEN")
    _add_worker_options(sub)
    return parser


def _add_worker_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--concurrency", type=_positive_count, default=None, metavar="N",
                     help="runs executed at once (default 100)")
    sub.add_argument("--lease-seconds", type=_seconds_type(zero_ok=False), default=None,
                     metavar="S", help="how long a run stays with this worker after its last "
                                       "heartbeat (default $TINYWORKFLOW_LEASE_SECONDS, else 30)")
    sub.add_argument("--poll-interval", type=_seconds_type(zero_ok=False), default=None,
                     metavar="S",
                     help="how often to look for runs stored by other processes (default 1)")
    sub.add_argument("--grace", type=_seconds_type(zero_ok=True), default=10.0, metavar="S",
                     help="on SIGTERM or Ctrl-C, how long steps in flight may take to finish "
                          "before their runs are released to other workers (default 10)")
    sub.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")


def _client_options(args: argparse.Namespace) -> dict:
    """TinyWorkflowClient keywords given on the command line (the worker's options)."""
    given = {"worker_concurrency": getattr(args, "concurrency", None),
             "lease_seconds": getattr(args, "lease_seconds", None),
             "poll_interval": getattr(args, "poll_interval", None)}
    return {key: value for key, value in given.items() if value is not None}


async def _run(client: tinyworkflow.TinyWorkflowClient, args: argparse.Namespace) -> int:
    if not args.needs_db:
        return await args.handler(client, args)
    async with client:
        return await args.handler(client, args)


def main(argv: Optional[list] = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    args.db = getattr(args, "db_after", None) or args.db
    args.json = args.json or getattr(args, "json_after", False)
    args.debug = args.debug or getattr(args, "debug_after", False)
    imports = (args.imports or []) + getattr(args, "imports_after", [])
    client = None
    try:
        _import_workflows(imports)
        codec = _codec(getattr(args, "codec_after", None) or args.codec)
        # ValueError on a bad URL or option:
        client = tinyworkflow.TinyWorkflowClient(args.db, codec=codec, **_client_options(args))
        return asyncio.run(_run(client, args))
    except _UsageError as exc:
        return _failed(args, 2, exc, exc.hint)
    except (ValueError, TypeError) as exc:  # the library rejected an argument
        hint = None
        if client is not None and args.command in ("start", "schedule") \
                and args.name not in client.list_registered_workflows():
            hint = "pass the module that defines it: --import-workflows MODULE_OR_FILE"
        return _failed(args, 2, exc, hint)
    except (LookupError, tinyworkflow.TinyWorkflowError) as exc:
        hint = None
        if isinstance(exc, tinyworkflow.RunNotFoundError):
            hint = "list the runs with: tinyworkflow list"
        return _failed(args, 1, exc, hint)
    except KeyboardInterrupt:
        executing = getattr(args, "executing", None)
        return _failed(args, 130, "interrupted",
                       f"run {executing} resumes once its lease expires, in a worker or with "
                       "'tinyworkflow recover'" if executing else None)
    except Exception as exc:  # the database unreachable, a bug in an imported module...
        return _failed(args, 1, f"{type(exc).__name__}: {exc}",
                       None if args.debug else "run again with --debug to see where")


def _failed(args: argparse.Namespace, code: int, message: Any, hint: Optional[str]) -> int:
    """Report a failure on stderr (with the traceback under --debug); the exit code."""
    if args.debug:
        traceback.print_exc()
    _error(message, hint)
    return code


if __name__ == "__main__":
    sys.exit(main())
