"""tinyworkflow: durable workflow execution for Python, in one file.

Workflows are async functions. Every activity a workflow calls is a *step*,
numbered in call order and recorded in a database (SQLite by default). When a
run executes again -- after a crash, a workflow-level retry or a restart -- the
workflow function runs from the top, every step already recorded returns its
stored result without running, and the run carries on where it stopped.

    import asyncio
    from tinyworkflow import workflow, activity, WorkflowContext, TinyWorkflowClient

    @activity(name="greet")
    async def greet(name: str) -> str:
        return f"hello {name}"

    @workflow(name="hello")
    async def hello(ctx: WorkflowContext):
        return await ctx.execute_activity(greet, ctx.get_input("name", "world"))

    async def main():
        async with TinyWorkflowClient() as client:      # ./tinyworkflow.db
            run_id = await client.start_workflow("hello", {"name": "Ada"}, wait=True)
            print((await client.get_workflow_status(run_id)).output_data)

    asyncio.run(main())

Sections, in dependency order, each using only what stands above it (grep for
"# ---- "): statuses and records; errors; helpers; retry policy; time; schedule
times; dialects: database URLs; dialects: SQL, migrations; drivers: their errors,
transactions; drivers: SQLite (aiosqlite); drivers: database servers (asyncpg,
aiomysql); drivers: the connection pool; the store; the store: SQLite; the store:
database servers; the store: PostgreSQL; the store: MySQL; registry and decorators;
the workflow loop (each run's own deterministic event loop, which replays its steps'
outcomes in their recorded order); workflow context; wake-ups in this process: the
hub; engine: one run, replayed; engine: claims, leases, the watchdog; the worker;
client; test hook; command-line hand-off.
"""

from __future__ import annotations

__version__ = "0.2.0"
__all__ = [
    "workflow",
    "activity",
    "with_options",
    "WorkflowContext",
    "TinyWorkflowClient",
    "RetryPolicy",
    "WorkflowStatus",
    "WorkflowExecution",
    "WorkflowEvent",
    "StepRecord",
    "ActivityInfo",
    "activity_info",
    "TinyWorkflowError",
    "NonDeterminismError",
    "SerializationError",
    "WorkflowTimeoutError",
    "ActivityTimeoutError",
    "ActivityError",
    "NonRetryableError",
    "Codec",
    "RunNotFoundError",
    "WorkflowNotFoundError",
    "RunStateError",
    "WorkflowLoopError",
    "IdempotencyError",
    "WorkflowFailedError",
    "DatabaseError",
    "DatabaseBusyError",
    "DatabaseUnavailableError",
    "DatabaseIntegrityError",
    "DataTooLargeError",
    "WorkerInfo",
    "ScheduleInfo",
    "ScheduleNotFoundError",
    "Queue",
    "QueueInfo",
    "QueueNotFoundError",
    "ChildWorkflowHandle",
    "Clock",
    "TestClock",
]

import asyncio
import collections
import collections.abc
import contextlib
import contextvars
import dataclasses
import enum
import functools
import base64
import builtins
import hashlib
import heapq
import inspect
import itertools
import json
import logging
import math
import operator
import os
import random
import re
import socket
import sqlite3
import sys
import threading
import time
import traceback
import types
import typing
import uuid
import weakref
from datetime import date as _date, datetime, time as _time, timedelta, timezone
from typing import Any, Awaitable, Callable, Coroutine, NamedTuple, NoReturn, Optional
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

_F = typing.TypeVar("_F", bound=Callable[..., Any])
_P = typing.ParamSpec("_P")  # a workflow's parameters, for type checkers (start_workflow)
_R = typing.TypeVar("_R")

_log = logging.getLogger("tinyworkflow")
_log.addHandler(logging.NullHandler())  # a library logs; the application shows it, or not

_DEFAULT_URL = "sqlite+aiosqlite:///tinyworkflow.db"
_DEFAULT_PREFIX = "tinyworkflow_"
_DEFAULT_LEASE_SECONDS = 30.0
_SLEEP_IN_MEMORY = 1.0  # seconds: a longer timer parks its run in the database
_KEY_LENGTH = 255  # the longest name or id (workflow, activity, workflow_id) in characters
# The largest row count a listing returns or skips, and the largest step number: what
# every database's integers hold.
_MAX_COUNT = 2**31 - 1


# ---- statuses and records ---------------------------------------------------------------


class WorkflowStatus(str, enum.Enum):
    """The state of a run. A ``str`` enum: ``run.status == "completed"`` holds."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    RETRYING = "retrying"
    COMPENSATING = "compensating"  # failed or cancelled: undoing its steps (a saga)
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    COMPENSATED = "compensated"  # failed or cancelled, and its compensations all ran
    CONTINUED = "continued"  # ended by continue_as_new: its successor carries on

    def __str__(self) -> str:
        return self.value


_TERMINAL = ("completed", "failed", "cancelled", "compensated", "continued")


# The longest duration anything accepts (a timer, a timeout, a retry delay, a lease):
# 100 years. Far longer, and a stored time would pass what a datetime holds (year 9999).
_MAX_SECONDS = 100 * 365.25 * 86400
_MAX_TEXT = "100 years"


def _dt(ts: Optional[float]) -> Optional[datetime]:
    """The stored time ``ts`` as an aware UTC datetime. Never fails: a time stored out of
    a datetime's range (by an older version) reads as its first or last moment."""
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, timezone.utc)
    except (OverflowError, OSError, ValueError):
        if ts != ts:  # NaN
            return None
        return (datetime.max if ts > 0 else datetime.min).replace(tzinfo=timezone.utc)


@dataclasses.dataclass
class WorkflowExecution:
    """One run of a workflow, as stored. Times are timezone-aware UTC datetimes.

    ``output_data`` of a completed run is ``{"result": <return value>}``, of a run
    that continued as new ``{"continued_as": <the successor's run id>}``; a failed
    (or compensated) run has ``error`` set to ``"ExceptionType: message"``. A child
    run has ``parent_run_id`` set. A run started by a schedule has ``schedule_id`` and
    the due time it was started for (``scheduled_for``); a delayed run has its start
    time in ``scheduled_for``. A run started in a queue has ``queue_name`` (and its
    ``queue_key`` and ``priority``); ``dequeued_at`` is when it left the queue.
    """

    run_id: str
    workflow_id: str
    workflow_name: str
    status: WorkflowStatus
    input_data: Any = None
    output_data: Any = None
    error: Optional[str] = None
    retry_count: int = 0
    max_retries: int = 0
    created_at: Optional[datetime] = None
    started_at: Optional[datetime] = None
    completed_at: Optional[datetime] = None
    updated_at: Optional[datetime] = None
    wake_at: Optional[datetime] = None
    owner: Optional[str] = None
    parent_run_id: Optional[str] = None
    approval_required: Optional[str] = None
    schedule_id: Optional[str] = None
    scheduled_for: Optional[datetime] = None
    idempotency_key: Optional[str] = None
    queue_name: Optional[str] = None
    queue_key: Optional[str] = None
    priority: int = 0
    dequeued_at: Optional[datetime] = None


@dataclasses.dataclass
class WorkflowEvent:
    """One entry of a run's audit trail."""

    id: int
    run_id: str
    event_type: str
    event_data: Any
    timestamp: datetime


@dataclasses.dataclass
class StepRecord:
    """A recorded step of a run: what ran, with which result, how many attempts."""

    run_id: str
    step: int
    name: str
    kind: str
    status: str
    input: Any
    output: Any
    error: Any
    attempts: int
    started_at: Optional[datetime]
    completed_at: Optional[datetime]

    @property
    def duration(self) -> Optional[float]:
        """Seconds from the first attempt's start to the recorded outcome."""
        if self.started_at is None or self.completed_at is None:
            return None
        return (self.completed_at - self.started_at).total_seconds()


@dataclasses.dataclass
class WorkerInfo:
    """A live worker, as it advertises itself in the database."""

    worker_id: str
    host: str
    pid: int
    workflows: list
    started_at: datetime
    heartbeat_at: datetime


@dataclasses.dataclass
class ScheduleInfo:
    """A stored schedule: a cron expression in a timezone, or an interval (``every``,
    in seconds). ``next_run_at`` is the next due time (None while paused);
    ``last_run_at`` the latest due time a run was started for, ``last_run_id`` that
    run. ``catch_up`` is how many of the times missed while no worker ran are started
    (1: the latest only)."""

    schedule_id: str
    workflow_name: str
    cron_expression: Optional[str]
    every: Optional[float]
    timezone: str
    input_data: Any
    workflow_id: str
    catch_up: int
    paused: bool
    next_run_at: Optional[datetime]
    last_run_at: Optional[datetime]
    last_run_id: Optional[str]
    created_at: datetime
    updated_at: datetime


@dataclasses.dataclass
class QueueInfo:
    """A queue's limits (None: no limit) and what is in it now: ``waiting`` runs not
    started yet (delayed and debounced ones included), ``running`` runs holding a
    place (executing, waiting on a timer, signal or approval, or between retries),
    ``started_recently`` runs started within the rate limit's period."""

    name: str
    concurrency: Optional[int]
    worker_concurrency: Optional[int]
    key_concurrency: Optional[int]
    rate_limit: Optional[tuple]
    waiting: int
    running: int
    started_recently: int
    updated_at: datetime


# `from tinyworkflow.models import WorkflowStatus` works as it did in TinyWorkflow
# 0.1.0, also when this file is copied alone into a project.
models = types.ModuleType(__name__ + ".models", "The data classes of tinyworkflow.")
for _cls in (WorkflowStatus, WorkflowExecution, WorkflowEvent, StepRecord, WorkerInfo,
             ScheduleInfo, QueueInfo):
    setattr(models, _cls.__name__, _cls)
sys.modules[models.__name__] = models


# ---- errors -----------------------------------------------------------------------------


class TinyWorkflowError(Exception):
    """Root of the errors tinyworkflow raises. Subclasses also inherit the matching
    builtin (``TypeError``, ``TimeoutError``, ...) so either ``except`` works."""


class NonDeterminismError(TinyWorkflowError, RuntimeError):
    """A replay found another step at a number than the one recorded there."""

    def __init__(self, message: str, *, run_id: str = "", step: int = 0, recorded: str = "",
                 requested: str = ""):
        super().__init__(message)  # (defaults: an instance unpickled gets its own back)
        self.run_id, self.step, self.recorded, self.requested = run_id, step, recorded, requested


class SerializationError(TinyWorkflowError, TypeError):
    """An input or a result that cannot be stored as JSON."""


class WorkflowTimeoutError(TinyWorkflowError, TimeoutError):
    """A workflow attempt ran longer than its ``timeout``."""


class ActivityTimeoutError(TinyWorkflowError, TimeoutError):
    """An activity attempt ran longer than its ``timeout``."""


class ActivityError(TinyWorkflowError):
    """A recorded activity failure, replayed when its original type cannot be rebuilt.
    ``error_type`` names the original (``module.QualName``), ``traceback`` is its
    traceback as recorded (text), ``non_retryable`` says it was not to be retried."""

    def __init__(self, message: str, *, error_type: str = "", run_id: str = "", step: int = 0,
                 non_retryable: bool = False, traceback: str = ""):
        super().__init__(message)
        self.error_type, self.run_id, self.step = error_type, run_id, step
        self.non_retryable, self.traceback = non_retryable, traceback


class NonRetryableError(Exception):
    """Raise it (or a subclass) in an activity or a workflow for a failure that trying
    again cannot mend -- a declined card, a malformed order: the attempt fails at once,
    whatever the retry policy says, and the workflow (or the run) gets the error. A
    ``RetryPolicy(non_retryable=...)`` names such errors among exceptions you do not
    raise yourself."""


class RunNotFoundError(TinyWorkflowError, LookupError):
    """No run has the given id."""


class ScheduleNotFoundError(TinyWorkflowError, LookupError):
    """No schedule has the given id."""


class QueueNotFoundError(TinyWorkflowError, LookupError):
    """No queue of that name is declared or was used."""


class WorkflowNotFoundError(TinyWorkflowError, ValueError):
    """No workflow of the given name is registered here or served by a live worker."""


class IdempotencyError(TinyWorkflowError, ValueError):
    """An idempotency key (or run id) already names a run of another workflow or input."""

    def __init__(self, message: str, *, run_id: str = ""):
        super().__init__(message)
        self.run_id = run_id


class RunStateError(TinyWorkflowError, ValueError):
    """The run is not in a state that allows the operation (say, cancelling a run that
    has finished); nothing was changed."""

    def __init__(self, message: str, *, run_id: str = "", status: str = ""):
        super().__init__(message)
        self.run_id, self.status = run_id, status


class WorkflowFailedError(TinyWorkflowError):
    """``wait_for_result``, or awaiting a child's handle: the run failed or was
    cancelled. ``error`` is the run's recorded error (``"ExceptionType: message"``),
    ``status`` its final status; ``non_retryable`` says its failure ended its attempts
    at once (a ``NonRetryableError``, or one its policy names): a parent that fails with
    it is not retried either, as the child would fail the same way."""

    def __init__(self, message: str, *, run_id: str = "", status: str = "", error: str = "",
                 non_retryable: bool = False):
        super().__init__(message)
        self.run_id, self.status, self.error = run_id, status, error
        self.non_retryable = non_retryable


class WorkflowLoopError(TinyWorkflowError, RuntimeError):
    """Workflow code asked its deterministic loop for what it cannot do (I/O, threads,
    subprocesses): do that in an activity."""


class DatabaseError(TinyWorkflowError):
    """The database failed the operation. The driver's exception is ``__cause__``; the
    subclasses say which kind of failure it was (tinyworkflow never lets a driver's own
    exception type reach a caller of its API)."""


class DatabaseBusyError(DatabaseError):
    """The database stayed busy: SQLite's write lock held by another connection past
    the busy timeout, a lock wait timeout, a deadlock. Trying again may succeed."""


class DatabaseUnavailableError(DatabaseError, ConnectionError):
    """The database cannot be reached, or the connection to it was lost."""


class DatabaseIntegrityError(DatabaseError):
    """The database refused a write that breaks one of its constraints."""


class DataTooLargeError(DatabaseError, ValueError):
    """A value or a statement too large for the database (or its configuration)."""


class _Released(BaseException):
    """The worker is stopping: the run stops before its next step and is given back."""


class _StoreFailed(BaseException):
    """A step could not be recorded (the database is unreachable or failing), or a
    record read (see _Undecodable). It is not the workflow's failure: the execution
    stops, the run is given back (or, if even that fails, its lease expires) and the
    step runs again. A BaseException, so that the workflow's own ``except Exception``
    cannot swallow it."""


def _stopped(run_id: str, cause: BaseException) -> _StoreFailed:
    failure = _StoreFailed(run_id, cause)
    failure.__cause__ = cause
    return failure


class _ContinuedAsNew(BaseException):
    """``ctx.continue_as_new``: the run ends and a successor with this input starts (the
    execution knows already; this only leaves the workflow's code)."""

    def __init__(self, input_text: str):
        super().__init__(input_text)
        self.input_text = input_text


class _LostOwnership(BaseException):
    """This executor no longer owns the run (cancelled, or taken over after its lease
    expired). A BaseException so that ``except Exception`` in a workflow cannot hide it."""


# ---- helpers ----------------------------------------------------------------------------


def _encoders(**options: Any) -> tuple:
    """Compact JSON encoders, made once (json.dumps with options makes one per call):
    one that keeps text as it is, one that escapes it to ASCII, and the first one's C
    encoder, called directly (see _c_encoder)."""
    encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, **options)
    return encoder, json.JSONEncoder(separators=(",", ":"), **options), _c_encoder(encoder)


def _c_encoder(encoder: json.JSONEncoder) -> Callable[[Any, int], Any]:
    """What ``encoder.encode`` does, made once: ``encode`` makes the json module's C
    encoder anew for every value, which for a small one costs more than the encoding.
    This one has no cycle check (a cycle recurses until RecursionError; _encode then
    asks ``encode``, which says which it was; and _encode does not use it while the
    recursion limit is high). Where the json module has no C encoder,
    or one of another signature, ``encode`` itself. (tests/test_hardening.py checks that
    both write the same text.)"""
    try:
        return json.encoder.c_make_encoder(  # type: ignore[misc]
            None, encoder.default, json.encoder.encode_basestring, None,
            encoder.key_separator, encoder.item_separator, encoder.sort_keys,
            encoder.skipkeys, encoder.allow_nan)
    except TypeError:  # None, or not these parameters
        return lambda value, _: (encoder.encode(value),)


_ENCODE, _ENCODE_STRICT, _ENCODE_LENIENT = (_encoders(), _encoders(allow_nan=False),
                                            _encoders(default=repr))
_scan = json.JSONDecoder().scan_once  # one JSON value at an index: (value, end)


# Past this recursion limit the C encoder without a cycle check is not used: a cycle
# would recurse until the limit, and far enough that overflows the C stack (seen at
# 100,000 on an 8 MiB stack; a thread's may be far smaller).
_UNCHECKED_DEPTH = 4000


def _encode(value: Any, encoders: tuple = _ENCODE) -> str:
    try:
        text = ("".join(encoders[2](value, 0)) if sys.getrecursionlimit() <= _UNCHECKED_DEPTH
                else encoders[0].encode(value))
    except RecursionError:  # nested too deeply, or a cycle: encode says which
        text = encoders[0].encode(value)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: no database stores them raw
            text = encoders[1].encode(value)
    return text


def _dumps(value: Any, what: str) -> str:
    try:
        return _encode(value, _ENCODE_STRICT)
    except RecursionError:
        raise SerializationError(
            f"{what} is nested too deeply to store as JSON (more levels than Python's "
            f"recursion limit, {sys.getrecursionlimit()}): flatten it") from None
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"{what} is not JSON-serialisable ({exc}); pass and return JSON values (dict, "
            "list, str, int, float, bool, None), or annotate a type the codec knows"
        ) from None


def _loads(text: Optional[str]) -> Any:
    if text is None:
        return None
    if type(text) is str:  # what we wrote: compact JSON, read without json.loads' checks
        try:
            value, end = _scan(text, 0)
            if end == len(text):
                return value
        except StopIteration:
            pass
    return json.loads(text)  # (or its error)


def _successor(status: str, output: Optional[str]) -> Optional[str]:
    """The run a run that continued as new handed over to (None for any other run)."""
    return (_loads(output) or {}).get("continued_as") if status == "continued" else None


def _dumps_for_display(value: Any) -> str:
    """For what is recorded only to be read by people (activity arguments): never fails."""
    try:
        return _encode(value, _ENCODE_LENIENT)
    except (TypeError, ValueError):  # non-string keys, circular references
        try:
            return _encode(repr(value))
        except RecursionError:
            return _encode(f"<{type(value).__name__} nested too deeply to show>")
        except Exception:  # a repr that raises
            return _encode(f"<{type(value).__name__} that cannot be shown>")
    except RecursionError:
        return _encode(f"<{type(value).__name__} nested too deeply to show>")
    except Exception:  # a default=repr that raises
        return _encode(f"<{type(value).__name__} that cannot be shown>")


def _shown(value: Any, width: int = 60) -> str:
    """``repr(value)``, cut to ``width`` characters, for an error message."""
    try:
        shown = repr(value)
    except Exception:
        shown = f"<{type(value).__name__}>"
    return shown if len(shown) <= width else shown[:width - 3] + "..."


def _signature(fn: Callable) -> str:
    """The parameters of a workflow after its context, as written."""
    listed = list(inspect.signature(fn).parameters.values())[1:]
    return str(inspect.Signature(listed)).replace("'", "")


def _message(exc: BaseException) -> str:
    """``str(exc)``, or what can be said of it when its ``__str__`` fails."""
    try:
        return str(exc)
    except Exception:
        try:
            return repr(exc.args)
        except Exception:
            return "(its message cannot be shown)"


def _error_text(exc: BaseException) -> str:
    # Stored as text: no NUL (PostgreSQL refuses it) and no lone surrogates.
    text = f"{type(exc).__name__}: {_message(exc)}".replace("\x00", "\\x00")
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode()


def _error_record(exc: BaseException) -> dict:
    try:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:  # a __str__ that fails on the way
        tb = _error_text(exc)
    record = {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": _message(exc),
        "traceback": tb[-8000:],
    }
    try:  # the arguments it was made with, if plain JSON: a replay makes it the same way
        json.dumps(exc.args, allow_nan=False)
        record["args"] = list(exc.args)
    except Exception:
        pass
    return record


def _rebuild_error(record: dict, run_id: str, step: int) -> BaseException:
    """The exception a replay raises for a recorded failure: the original type when it
    is already imported, made with the arguments it was made with (or its message),
    else ActivityError with the type's name and the recorded traceback. Never imports:
    a module named in a record may be the program itself run under another name."""
    module, _, qualname = record.get("type", "").rpartition(".")
    message = record.get("message", "")
    cls: Any = sys.modules.get(module)
    for part in qualname.split(".") if cls is not None else ():
        cls = getattr(cls, part, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        made_with = [tuple(record["args"])] if isinstance(record.get("args"), list) else []
        for args in made_with + [(message,)]:
            try:
                error = cls(*args)
                str(error)  # one that cannot even say what it is: not made this way
                return error
            except Exception:
                continue
    if isinstance(cls, type) and issubclass(cls, BaseException) \
            and not issubclass(cls, Exception):  # SystemExit, say
        message = f"the activity raised {qualname}" + (f": {message}" if message else "")
    return ActivityError(message, error_type=record.get("type", ""), run_id=run_id, step=step,
                         non_retryable=record.get("non_retryable") is True,
                         traceback=record.get("traceback", ""))


async def _held(awaitable: Awaitable) -> tuple:
    """(value, None) or (None, what it raised): a SystemExit raised in a task of its own
    would otherwise leave the event loop itself (asyncio re-raises it there)."""
    try:
        return await awaitable, None
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except BaseException as exc:
        return None, exc


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()


async def _with_timeout(awaitable: Awaitable, seconds: float,
                        error: Callable[[], Exception]):
    """Await with a time limit (the machine's time), telling our timeout apart from a
    TimeoutError raised by the awaited code itself (asyncio.wait_for cannot). On timeout
    the work is cancelled and abandoned to finish on its own (a sync activity's thread
    cannot be interrupted); cancelled from outside, it is over once it has stopped."""
    task = asyncio.ensure_future(_held(awaitable))
    try:
        done, _ = await asyncio.wait({task}, timeout=max(seconds, 0.0))
    except asyncio.CancelledError:
        task.cancel()
        await asyncio.wait({task})
        _retrieve(task)
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_retrieve)  # whatever it ends with, the verdict is timeout
        raise error()
    value, raised = task.result()
    if raised is not None:
        raise raised
    return value


def _cancelling(task: Optional[asyncio.Task]) -> bool:
    """Whether the task is being cancelled. Python 3.10 cannot tell (no
    ``Task.cancelling``): there every CancelledError counts as a cancellation."""
    cancelling = getattr(task, "cancelling", None)
    return cancelling is None or cancelling() > 0


def _check_name(what: str, name: Any) -> None:
    if not isinstance(name, str) or not name or len(name) > _KEY_LENGTH or "\x00" in name:
        raise ValueError(f"{what} is a non-empty string of at most {_KEY_LENGTH} "
                         f"characters, without NUL, got {name!r}")


def _real(value: Any, whole: bool = False) -> bool:
    """Whether ``value`` is a number (a whole one if ``whole``); not a bool, though bool
    is an int. NaN is a number: the range checks that follow refuse it."""
    return not isinstance(value, bool) and isinstance(value, int if whole else (int, float))


def _check_count(what: str, value: Any, low: int = 0) -> None:
    """A limit, an offset or a step number: a whole number from ``low`` to _MAX_COUNT."""
    if not _real(value, whole=True) or not low <= value <= _MAX_COUNT:
        raise ValueError(f"{what} must be a whole number from {low} to {_MAX_COUNT}, "
                         f"got {value!r}")


def _check_days(what: str, days: Any) -> None:
    """A retention period: days from 0 to 100 years (not NaN, not infinite)."""
    if (not _real(days)
            or not 0 <= days * 86400 <= _MAX_SECONDS):  # NaN too
        raise ValueError(f"{what} must be a number of days from 0 to "
                         f"{_MAX_SECONDS / 86400:g} ({_MAX_TEXT}), got {days!r}")


def _check_timeout(what: str, timeout: Any) -> None:
    if timeout is not None and (not _real(timeout)
                                or not 0 <= timeout <= _MAX_SECONDS):  # NaN too
        raise ValueError(f"{what} timeout must be None or seconds from 0 to {_MAX_SECONDS:g} "
                         f"({_MAX_TEXT}), got {timeout!r}")


def _run_filters(status: Any, workflow_name: Any, run_id_prefix: Any,
                 parent_run_id: Any) -> dict:
    """The checked filters of list/count_workflow_executions, as run columns."""
    if status is not None:
        try:
            status = WorkflowStatus(status).value
        except ValueError:
            raise ValueError(f"unknown status {status!r}; statuses: "
                             f"{', '.join(s.value for s in WorkflowStatus)}") from None
    for what, value in (("workflow_name", workflow_name), ("run_id_prefix", run_id_prefix),
                        ("parent_run_id", parent_run_id)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{what} must be a string, got {value!r}")
    return {"status": status, "workflow_name": workflow_name, "prefix": run_id_prefix or None,
            "parent_run_id": parent_run_id}


# ---- typed values: the codec ------------------------------------------------------------
# A value crossing a step is stored as JSON. When the code declares its type (an
# activity's return annotation), the value is encoded against that type and decoded
# back to it -- on the first run and on every replay alike, since the workflow always
# gets the decoded record. Encoding never loses information silently: what the type
# cannot rebuild exactly is a SerializationError naming the path inside the value.


_SCALARS = (str, int, float, bool, type(None))


def _decimal() -> type:
    import decimal  # (on first use: not every program needs it)
    return decimal.Decimal


class _Refused(Exception):
    """A value the codec cannot store; ``where`` collects its path on the way out."""

    def __init__(self, value: Any, why: str):
        super().__init__(why)
        self.value, self.why, self.where = value, why, []


def _union(kind: Any) -> bool:
    return typing.get_origin(kind) is typing.Union or \
        typing.get_origin(kind) is getattr(types, "UnionType", None)


def _listed(values: Any, encode: Callable) -> list:
    out = []
    for i, v in enumerate(values):
        try:
            out.append(encode(v))
        except _Refused as exc:
            exc.where.append(f"[{i}]")
            raise
    return out


class _Key(str):
    """A mapping's key on a refused value's path (not shown by a codec of one's own: a
    key may be a secret too)."""


def _mapped(value: dict, encode: Callable) -> dict:
    out = {}
    for k, v in value.items():
        try:
            if not isinstance(k, str):
                raise _Refused(k, "a key that is not a string")
            out[k] = encode(v)
        except _Refused as exc:
            exc.where.append(_Key(f"[{k!r}]"))
            raise
    return out


def _float(value: float) -> float:
    if not math.isfinite(value):
        raise _Refused(value, f"float {value!r} has no JSON")
    return value


def _float_value(value: Any) -> float:
    """A number where a float is declared: an int only if a float holds it exactly."""
    if isinstance(value, float):
        return _float(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Refused(value, "not a float")
    try:
        exact = float(value) == value
    except OverflowError:
        exact = False
    if not exact:
        raise _Refused(value, "an int that a float does not hold exactly")
    return value


def _plain_json(value: Any) -> Any:
    """A value without a type to go by: plain JSON only (as without annotations)."""
    if type(value) in (str, int, bool) or value is None:
        return value
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        return _listed(value, _plain_json)
    if isinstance(value, dict):
        return _mapped(value, _plain_json)
    raise _Refused(value, f"a {type(value).__name__}, which plain JSON does not hold: "
                          "declare it as a type the codec knows (see Codec)")


def _of(value: Any, kind: Any) -> Any:
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise _Refused(value, f"not a {names}")
    return value


def _same(data: Any) -> Any:
    return data


_ABSTRACT = {collections.abc.Sequence: list, collections.abc.MutableSequence: list,
             collections.abc.Collection: list, collections.abc.Iterable: list,
             collections.abc.Set: frozenset, collections.abc.MutableSet: set,
             collections.abc.Mapping: dict, collections.abc.MutableMapping: dict}


def _norm(kind: Any) -> Any:
    """The type the codec goes by for an annotation: ``Annotated[X, ...]`` and
    ``NewType`` as X, an abstract collection as the concrete one it is stored as
    (``Sequence[X]`` as ``list[X]``), a generic class (``Page[int]``) as the class."""
    while True:
        origin = typing.get_origin(kind)
        if origin is typing.Annotated:
            kind = typing.get_args(kind)[0]
        elif getattr(kind, "__supertype__", None) is not None:  # a NewType
            kind = kind.__supertype__
        elif origin in _ABSTRACT or kind in _ABSTRACT:
            concrete, args = _ABSTRACT[origin or kind], typing.get_args(kind)
            return concrete[args] if args else concrete
        elif isinstance(origin, type) and not _union(kind) and origin not in (
                list, dict, set, frozenset, tuple, type):
            return origin  # a generic class: its fields by their declared types
        else:
            return kind


def _isa(kind: Any) -> Callable[[Any], bool]:
    """Whether a value is of ``kind`` (for choosing a member of a union)."""
    kind = _norm(kind)
    origin = typing.get_origin(kind) or kind
    if origin is typing.Literal:
        return lambda value: value in typing.get_args(kind)
    if kind in (Any, object):
        return lambda value: True
    if not isinstance(origin, type):
        return lambda value: False
    if typing.is_typeddict(origin):  # (isinstance refuses a TypedDict)
        return lambda value: isinstance(value, dict)
    if origin is int:  # a bool is an int, but not the int a union means
        return lambda value: isinstance(value, int) and not isinstance(value, bool)
    if origin is float:  # an int is a float as far as a float annotation goes
        return lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)
    return lambda value: isinstance(value, origin)


def _record(kind: Any) -> bool:
    """Whether values of ``kind`` are stored as a JSON object of their fields."""
    return isinstance(kind, type) and (
        dataclasses.is_dataclass(kind) or typing.is_typeddict(kind)
        or (issubclass(kind, tuple) and hasattr(kind, "_fields"))
        or hasattr(kind, "model_validate"))


def _shapes(kind: Any) -> Optional[tuple]:
    """The JSON types a value of ``kind`` is stored as (None: any), so that a union
    tries only the members its data can be."""
    kind = _norm(kind)
    origin = typing.get_origin(kind) or kind
    if not isinstance(origin, type) or issubclass(origin, enum.Enum):
        return None  # (an Enum is stored as its value, whatever that is)
    if _record(origin) or issubclass(origin, dict):
        return (dict,)
    if issubclass(origin, (list, tuple, set, frozenset)):
        return (list,)
    if issubclass(origin, bool):
        return (bool,)
    if issubclass(origin, (int, timedelta)):
        return (int,)
    if issubclass(origin, float):
        return (int, float)
    if issubclass(origin, (str, _date, _time, uuid.UUID, bytes, bytearray, _decimal())):
        return (str,)
    return None


def _rank(kind: Any) -> tuple:
    """Where a union's member is tried: the most particular first (a record before a
    dict, a datetime before a date, anything read from text before ``str``); then by
    name, so that ``Union[A, B]`` and ``Union[B, A]`` are the same everywhere."""
    norm = _norm(kind)
    origin = typing.get_origin(norm) or norm
    if not isinstance(origin, type):
        place = 1 if origin is typing.Literal else 9
    elif _record(origin):
        place = 0
    elif issubclass(origin, enum.Enum):
        place = 1
    elif issubclass(origin, datetime):
        place = 2
    elif issubclass(origin, (_date, _time, timedelta, uuid.UUID, bytes, bytearray,
                             _decimal())):
        place = 3
    elif issubclass(origin, (list, tuple, set, frozenset, dict)):
        place = 4
    else:
        place = {bool: 5, int: 6, float: 7, str: 8}.get(origin, 9)
    return place, repr(kind)


def _declared(kind: Any, how: str = ", declared") -> str:
    """The declared type, for a message: ", declared list[Item]" ("" for Any)."""
    if kind is Any:
        return ""
    return f"{how} " + (kind.__qualname__ if isinstance(kind, type)
                        else repr(kind).replace("typing.", ""))


class _Member(NamedTuple):
    """A union's member, as the codec goes by it."""
    kind: Any
    encode: Callable
    decode: Callable
    isa: Callable
    record: bool
    shapes: Optional[tuple]  # the JSON types it is stored as (None: any)
    keys: Optional[frozenset]  # a record's field names


def _candidates(members: list, data: Any) -> list:
    """The members a union tries for stored ``data``, in order: those it is stored as
    the JSON type of -- for a JSON object, the records naming exactly its keys first,
    then those whose fields include them, then other mappings -- then the rest (a
    number for a Decimal, a model's data under its aliases)."""
    kind = type(data)
    fitting = [m for m in members if m.shapes is None or kind in m.shapes]
    if kind is dict:
        keys = data.keys()
        fitting = ([m for m in fitting if m.keys is not None and m.keys == keys]
                   + [m for m in fitting if m.keys is not None and m.keys != keys
                      and keys <= m.keys]
                   + [m for m in fitting if m.keys is None])
    return fitting + [m for m in members if m not in fitting]


class _Typed:
    """Encode a value to JSON data, and decode it, by a type: dataclasses (nested),
    NamedTuple, TypedDict, Enum, datetime, date, time, timedelta, Decimal, UUID, bytes
    (base64), tuple, set, frozenset, list[X], dict[str, X], Optional[X] / X | None, and
    pydantic v2 models (by their model_dump / model_validate). A type it does not know
    takes plain JSON values, as no annotation does. ``plain(T)``: whether ``T`` needs
    nothing of this (then the JSON value is used as it is). Each type's encoder and
    decoder are made once (a function per type) and kept.

    What is stored must come back as what was given: a value its type would rebuild
    as something else (a subclass of a declared dataclass, a member of a union that
    reads back as another member) is refused."""

    def __init__(self) -> None:
        self._plain: dict = {}
        self._encoders: dict = {}
        self._decoders: dict = {}

    def plain(self, kind: Any) -> bool:
        try:
            found = self._plain.get(kind)
        except TypeError:  # an unhashable annotation
            return False
        if found is None:
            found = self._plain[kind] = self._is_plain(kind)
        return found

    def _is_plain(self, kind: Any) -> bool:
        if kind in (Any, None, object, type(None), str, int, bool, list, dict) or \
                kind is inspect.Parameter.empty:
            return True
        args = typing.get_args(kind)
        if typing.get_origin(kind) is dict:  # keys other than str would turn into str
            return not args or (args[0] is str and self.plain(args[1]))
        if typing.get_origin(kind) is list or _union(kind):
            return all(self.plain(a) for a in args if a is not Ellipsis)
        return False  # float too: a NaN is to be refused with its path

    def encode(self, value: Any, kind: Any, path: str, show: bool = True) -> Any:
        """JSON data for ``value``; a SerializationError naming ``path`` inside it
        (and, if ``show``, the value refused) if the type cannot rebuild it."""
        try:
            return self._made(self._encoders, self._encoder, kind)(value)
        except _Refused as exc:
            where = path + "".join("[...]" if isinstance(step, _Key) and not show else step
                                   for step in reversed(exc.where))
            raise SerializationError(f"{where}: {exc.why} ({_shown(exc.value)})" if show
                                     else f"{where}: {exc.why}") from None
        except RecursionError:
            raise SerializationError(f"{path}: nested too deeply to store") from None
        except Exception as exc:  # a type that cannot be read, a model that cannot dump
            raise SerializationError(f"{path}: {type(exc).__name__}"
                                     + (f": {exc}" if show else "")) from None

    def decode(self, data: Any, kind: Any) -> Any:
        """The value of ``kind`` JSON ``data`` stands for; a SerializationError if it
        does not stand for one."""
        try:
            return self._made(self._decoders, self._decoder, kind)(data)
        except _Refused as exc:
            raise SerializationError(exc.why) from None
        except RecursionError:
            raise SerializationError("nested too deeply to read") from None
        except Exception as exc:
            raise SerializationError(f"{type(exc).__name__}: {exc}") from exc

    def _made(self, cache: dict, make: Callable, kind: Any) -> Callable:
        try:
            made = cache.get(kind)
        except TypeError:  # unhashable: made each time
            return make(kind)
        if made is None:
            later: list = []  # a type that holds itself (a tree) uses it while it is made
            before = [(c, set(c)) for c in (self._encoders, self._decoders)]
            cache[kind] = lambda value: later[0](value)
            try:
                made = make(kind)
            except BaseException:
                for made_here, known in before:  # nothing of the failed attempt stays
                    for key in set(made_here) - known:
                        del made_here[key]
                raise
            later.append(made)
            cache[kind] = made
        return made

    def _members(self, kind: Any) -> list:
        """A union's members but None, in the order they are tried (see _rank): the
        same for ``Union[A, B]`` and ``Union[B, A]``, which are equal."""
        return [_Member(m, self._made(self._encoders, self._encoder, m),
                        self._made(self._decoders, self._decoder, m), _isa(m), _record(m),
                        _shapes(m), self._keys(_norm(m)))
                for m in sorted((m for m in typing.get_args(kind) if m is not type(None)),
                                key=_rank)]

    # -- encoders: value -> JSON data, or _Refused
    def _encoder(self, kind: Any) -> Callable:
        kind = _norm(kind)
        if kind in (Any, object, None) or kind is inspect.Parameter.empty:
            return _plain_json
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if _union(kind):
            members, optional = self._members(kind), type(None) in args
            # Each member's data must read back as that member: else which one it was
            # would be lost (a str that reads as a datetime, a float as a Decimal). A
            # JSON object or array is read by the member tried first (no need to read
            # all of it, at every level of a tree); text or a number is read back.
            decode = self._made(self._decoders, self._decoder, kind) \
                if len(members) > 1 else None

            def union(value: Any) -> Any:
                if value is None and optional:
                    return None
                for member in members:
                    if member.isa(value):
                        data = member.encode(value)
                        if decode is None:
                            return data
                        if isinstance(data, (dict, list)):
                            first = _candidates(members, data)[0]
                            back = value if first is member else None
                        else:
                            back = decode(data)
                        if type(back) is not type(value) and not (
                                type(back) is float and type(value) is int):  # as declared
                            raise _Refused(value, f"a {type(value).__name__} that would not "
                                                  f"come back as one ({_declared(kind, 'of')})")
                        return data
                raise _Refused(value, f"not any of {_declared(kind, '')[1:]}")
            return union
        if origin is typing.Literal:
            return _plain_json
        if isinstance(kind, type):
            return self._class_encoder(kind)
        if origin in (list, set, frozenset):
            return self._sequence_encoder(args[0] if args else Any, origin)
        if origin is tuple:
            return self._tuple_encoder(kind, args)
        if origin is dict:
            return self._dict_encoder(args[1] if args else Any)
        return _plain_json  # a type the codec does not know: plain JSON

    def _class_encoder(self, kind: type) -> Callable:
        if issubclass(kind, enum.Enum):
            def member(value: Any) -> Any:
                try:
                    value = kind(value)
                except Exception:
                    raise _Refused(value, f"not a {kind.__qualname__}") from None
                data = _plain_json(value.value)
                try:
                    back = kind(data)
                except Exception:
                    back = None
                if back is not value:  # a tuple value comes back a list, say
                    raise _Refused(value, f"a member of {kind.__qualname__} whose value "
                                          "JSON does not hold as it is")
                return data
            return member
        if issubclass(kind, (str, int)):  # bool too
            return _plain_json
        if issubclass(kind, float):
            return _float_value
        if issubclass(kind, datetime):
            return lambda value: _of(value, datetime).isoformat()
        if kind is _date:
            def day(value: Any) -> str:
                if isinstance(value, datetime):  # its time would be lost
                    raise _Refused(value, "a datetime where a date is declared")
                return _of(value, _date).isoformat()
            return day
        if kind is _time:
            return lambda value: _of(value, _time).isoformat()
        if issubclass(kind, timedelta):
            return lambda value: _of(value, timedelta) // timedelta(microseconds=1)
        if issubclass(kind, _decimal()):
            def number(value: Any) -> str:
                if not _of(value, _decimal()).is_finite():
                    raise _Refused(value, "not a finite number")
                return str(value)
            return number
        if issubclass(kind, uuid.UUID):
            return lambda value: str(_of(value, uuid.UUID))
        if issubclass(kind, (bytes, bytearray)):
            return lambda value: base64.b64encode(_of(value, (bytes, bytearray))).decode()
        if kind in (list, set, frozenset):
            return self._sequence_encoder(Any, kind)
        if kind is tuple:
            return self._tuple_encoder(kind, ())
        if kind is dict:
            return self._dict_encoder(Any)
        fields = self._fields(kind)
        if fields is not None:  # a dataclass, NamedTuple or TypedDict
            encoders = [(name, f".{name}", self._made(self._encoders, self._encoder, hint))
                        for name, hint in fields]
            typed_dict = typing.is_typeddict(kind)

            def record(value: Any) -> dict:
                if typed_dict:
                    _of(value, dict)
                elif type(value) is not kind:  # a subclass's own fields would be lost
                    raise _Refused(value, f"a {type(value).__qualname__} where "
                                          f"{kind.__qualname__} is declared" if
                                   isinstance(value, kind) else f"not a {kind.__qualname__}")
                out = {}
                for name, where, encode in encoders:
                    try:
                        if not typed_dict:
                            out[name] = encode(getattr(value, name))
                        elif name in value:  # (a TypedDict's keys may be optional)
                            out[name] = encode(value[name])
                    except _Refused as exc:
                        exc.where.append(where)
                        raise
                return out
            return record
        if hasattr(kind, "model_validate"):  # pydantic
            def model(value: Any) -> Any:
                if type(value) is kind:
                    return value.model_dump(mode="json")
                if isinstance(value, kind):
                    raise _Refused(value, f"a {type(value).__qualname__} where "
                                          f"{kind.__qualname__} is declared")
                return _plain_json(value)
            return model
        return _plain_json

    def _sequence_encoder(self, item: Any, made: Any = list) -> Callable:
        encode = self._made(self._encoders, self._encoder, item)
        # A set's items must come back hashable: a list (a tuple, stored) would not.
        unhashable = made in (set, frozenset) and self._decoder(item) is _same

        def sequence(value: Any) -> list:
            out = _listed(_of(value, (list, tuple, set, frozenset)), encode)
            if isinstance(value, (set, frozenset)):
                if unhashable and any(isinstance(v, (list, dict)) for v in out):
                    raise _Refused(value, "a set of tuples or other containers: declare "
                                          "their type (set[tuple[int, int]])")
                with contextlib.suppress(TypeError):  # the same text each time, if it sorts
                    out.sort(key=lambda v: json.dumps(v, sort_keys=True))
            return out
        return sequence

    def _tuple_encoder(self, kind: Any, args: tuple) -> Callable:
        if not args or args[-1] is Ellipsis:
            return self._sequence_encoder(args[0] if args else Any)
        encoders = [self._made(self._encoders, self._encoder, a) for a in args]

        def fixed(value: Any) -> list:
            if len(_of(value, (tuple, list))) != len(encoders):
                raise _Refused(value, f"{len(value)} items where {kind} has {len(encoders)}")
            items = iter(encoders)
            return _listed(value, lambda v: next(items)(v))
        return fixed

    def _dict_encoder(self, item: Any) -> Callable:
        encode = self._made(self._encoders, self._encoder, item)

        return lambda value: _mapped(_of(value, dict), encode)

    def _fields(self, kind: type) -> Optional[list]:
        """(name, type) of a dataclass's, NamedTuple's or TypedDict's fields, else None."""
        if dataclasses.is_dataclass(kind):
            names: Optional[list] = [f.name for f in dataclasses.fields(kind)]
        elif issubclass(kind, tuple) and hasattr(kind, "_fields"):
            names = list(kind._fields)
        elif typing.is_typeddict(kind):
            names = None  # its keys are its annotations
        else:
            return None
        hints = typing.get_type_hints(kind)
        if any(isinstance(h, dataclasses.InitVar) or h is dataclasses.InitVar
               for h in hints.values()):
            raise _Refused(kind, f"{kind.__qualname__} takes an InitVar, which its fields "
                                 "do not hold: it cannot be rebuilt from them")
        return [(name, hints.get(name, Any)) for name in (hints if names is None else names)]

    def _keys(self, kind: Any) -> Optional[frozenset]:
        """The names of a record type's fields (None for any other type)."""
        if not _record(kind):
            return None
        if hasattr(kind, "model_validate"):
            return frozenset(getattr(kind, "model_fields", {}))
        return frozenset(name for name, _ in self._fields(kind))

    # -- decoders: JSON data -> a value of the type
    def _decoder(self, kind: Any) -> Callable:
        kind = _norm(kind)
        if kind in (Any, object, None) or kind is inspect.Parameter.empty:
            return _same
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if _union(kind):
            members = self._members(kind)
            many = len(members) > 1

            def union(data: Any) -> Any:
                if data is None:
                    return None
                fallback: list = []
                for member in _candidates(members, data):
                    try:
                        value = member.decode(data)
                    except Exception:
                        continue
                    if many and not (member.record or member.isa(value)):
                        continue
                    if many and not isinstance(data, (dict, list)):
                        # Text or a number: the member that wrote it writes it so.
                        try:
                            canonical = member.encode(value) == data
                        except Exception:
                            canonical = False
                        if not canonical:
                            fallback = fallback or [value]
                            continue
                    return value
                if fallback:
                    return fallback[0]
                raise ValueError(f"not any of {_declared(kind, '')[1:]}")
            return union
        if origin is typing.Literal:
            return _same
        if isinstance(kind, type):
            return self._class_decoder(kind)
        if origin in (list, set, frozenset) or origin is tuple and (not args or
                                                                    args[-1] is Ellipsis):
            decode = self._made(self._decoders, self._decoder, args[0] if args else Any)
            made = {list: None, set: set, frozenset: frozenset, tuple: tuple}[origin]
            return (lambda data: None if data is None else
                    [decode(v) for v in data] if made is None else
                    made(decode(v) for v in data))
        if origin is tuple:
            decoders = [self._made(self._decoders, self._decoder, a) for a in args]

            def fixed(data: Any) -> Any:
                if data is None:
                    return None
                if len(data) != len(decoders):
                    raise ValueError(f"{len(data)} items where {kind} has {len(decoders)}")
                return tuple(decode(v) for decode, v in zip(decoders, data))
            return fixed
        if origin is dict:
            decode = self._made(self._decoders, self._decoder, args[1] if args else Any)
            return lambda data: None if data is None else {k: decode(v)
                                                            for k, v in data.items()}
        return _same

    def _class_decoder(self, kind: type) -> Callable:
        def maybe(convert: Callable) -> Callable:
            return lambda data: None if data is None else convert(data)
        if issubclass(kind, enum.Enum):
            return maybe(kind)
        if issubclass(kind, (str, int)):
            return _same
        if issubclass(kind, float):
            return lambda data: float(data) if type(data) is int else data
        if issubclass(kind, datetime):
            return maybe(datetime.fromisoformat)
        if kind is _date:
            return maybe(_date.fromisoformat)
        if kind is _time:
            return maybe(_time.fromisoformat)
        if issubclass(kind, timedelta):
            return maybe(lambda data: timedelta(microseconds=data))
        if issubclass(kind, _decimal()):
            return maybe(lambda data: kind(str(data)))
        if issubclass(kind, uuid.UUID):
            return maybe(kind)
        if issubclass(kind, (bytes, bytearray)):
            return maybe(lambda data: kind(base64.b64decode(data)))
        if kind in (set, frozenset, tuple):
            return maybe(kind)
        fields = self._fields(kind)
        if fields is not None:
            decoders = [(name, self._made(self._decoders, self._decoder, hint))
                        for name, hint in fields]
            later = set()  # a dataclass's fields set after it is made (init=False)
            if dataclasses.is_dataclass(kind):
                later = {f.name for f in dataclasses.fields(kind) if not f.init}
            typed_dict = typing.is_typeddict(kind)

            def record(data: Any) -> Any:
                if data is None:
                    return None
                values = {name: decode(data[name]) for name, decode in decoders
                          if name in data}
                if typed_dict:
                    return values
                if not later:
                    return kind(**values)
                value = kind(**{k: v for k, v in values.items() if k not in later})
                for name in later & values.keys():
                    object.__setattr__(value, name, values[name])
                return value
            return record
        if hasattr(kind, "model_validate"):
            return maybe(kind.model_validate)
        return _same


_TYPED = _Typed()


class Codec:
    """How a value crossing a step becomes the JSON stored for it, and back: activity
    and workflow results, workflow inputs, signal payloads, event values.

    ``encode(value, type)`` returns JSON-compatible data (dict, list, str, int, float,
    bool, None) for ``value``; ``decode(data, type)`` rebuilds the value from it.
    ``type`` is what the code declares -- an annotation, a ``type=`` argument -- or,
    for a value sent without one (a signal's payload, an event's value), the value's
    own class; ``typing.Any`` where nothing is known. This one, the default, handles
    the types listed in the README ("Typed values"); a subclass adds its own or wraps
    what is stored, and is given to the client (``TinyWorkflowClient(codec=...)``)::

        class Compressed(Codec):
            def encode(self, value, type):
                text = json.dumps(super().encode(value, type))
                return {"zlib": base64.b64encode(zlib.compress(text.encode())).decode()}

            def decode(self, data, type):
                text = zlib.decompress(base64.b64decode(data["zlib"])).decode()
                return super().decode(json.loads(text), type)

    A codec must be deterministic in what ``decode`` gives back (a replay decodes the
    same record again) and used by every process sharing the database. Raise
    ``SerializationError`` (or any error: it is reported as one) for what it cannot
    store."""

    def encode(self, value: Any, type: Any = Any) -> Any:
        return _TYPED.encode(value, type, "value", show=False)

    def decode(self, data: Any, type: Any = Any) -> Any:
        return _TYPED.decode(data, type)


_CODEC = Codec()


def _check_codec(codec: Any) -> "Codec":
    if codec is None:
        return _CODEC
    if isinstance(codec, type):
        raise TypeError(f"codec takes a codec, not its class: codec={codec.__name__}()")
    if not all(callable(getattr(codec, name, None)) for name in ("encode", "decode")):
        raise TypeError(f"codec must have encode(value, type) and decode(data, type) "
                        f"methods (a tinyworkflow.Codec subclass), got {codec!r}")
    return codec


def _to_data(codec: "Codec", value: Any, kind: Any, what: str, path: str = "value") -> Any:
    """``value``, declared ``kind``, as the JSON-compatible data to store for ``what``
    (a SerializationError naming it if it cannot be). The default codec leaves a value
    of a plain JSON type as it is: JSON encoding checks it."""
    if codec is _CODEC and _TYPED.plain(kind):
        return value
    try:
        if codec is _CODEC:
            return _TYPED.encode(value, kind, path)
        return codec.encode(value, kind)
    except SerializationError as exc:
        raise SerializationError(f"{what}{_declared(kind)}: {exc}") from None
    except Exception as exc:
        raise SerializationError(f"{what}: the codec {type(codec).__name__} failed: "
                                 f"{type(exc).__name__}: {exc}") from None


class _Undecodable(SerializationError):
    """A codec of one's own failed to read a record with an error of its own, not a
    SerializationError: perhaps passing trouble (a key service away). The execution
    stops and the run resumes later; the workflow is not handed the failure."""


def _from_data(codec: "Codec", data: Any, kind: Any, what: str) -> Any:
    """The value of ``kind`` the stored ``data`` of ``what`` stands for."""
    if codec is _CODEC and _TYPED.plain(kind):
        return data
    try:
        return codec.decode(data, kind)
    except Exception as exc:  # a record older than the annotation, say
        error = SerializationError if codec is _CODEC or isinstance(
            exc, SerializationError) else _Undecodable
        raise error(f"{what} does not decode{_declared(kind, ' as')}: "
                    f"{type(exc).__name__}: {exc}") from exc


def _own_type(value: Any) -> Any:
    """The type a value sent without a declared one is encoded by: its class, unless it
    is plain JSON data (then nothing needs the codec)."""
    kind = type(value)
    return Any if kind in (dict, list, str, int, bool, type(None)) else kind


def _hints(fn: Callable) -> dict:
    """The annotations of ``fn`` (a function, a partial, a callable object), resolved one
    by one: one that cannot be (a name imported only for type checkers) is Any, with a
    warning, and leaves the others as declared."""
    fn = inspect.unwrap(fn)
    while isinstance(fn, functools.partial):
        fn = inspect.unwrap(fn.func)
    if not (inspect.isfunction(fn) or inspect.ismethod(fn)) and callable(fn):
        fn = getattr(type(fn), "__call__", fn)
    try:
        return typing.get_type_hints(fn)
    except Exception:
        pass
    hints, host = {}, getattr(fn, "__func__", fn)
    for name, annotation in getattr(host, "__annotations__", {}).items():
        probe = types.FunctionType((lambda: None).__code__, getattr(host, "__globals__", {}))
        probe.__annotations__ = {name: annotation}
        try:
            hints[name] = typing.get_type_hints(probe)[name]
        except Exception as exc:
            hints[name] = Any
            _log.warning("the annotation %r of %s (%s) cannot be resolved here (%s: %s): "
                         "its value is taken as plain JSON", annotation,
                         "the result" if name == "return" else f"parameter {name!r}",
                         getattr(host, "__qualname__", host), type(exc).__name__, exc)
    return hints


def _returns(fn: Callable) -> Any:
    """The return annotation of ``fn``, resolved (Any when there is none)."""
    return _hints(fn).get("return", Any)


# ---- retry policy -----------------------------------------------------------------------


_GROUPS = getattr(builtins, "BaseExceptionGroup", ())  # Python 3.11 and later


@dataclasses.dataclass
class RetryPolicy:
    """How often and how fast to retry a failed activity or workflow.

    ``max_retries`` counts retries after the first attempt. The delay before retry
    ``n`` (0-based) is ``min(initial_delay * backoff_multiplier ** n, max_delay)``,
    moved by up to ``± jitter_factor`` of itself when ``jitter`` is on.

        RetryPolicy(max_retries=5, initial_delay=1.0, max_delay=10.0)  # 1, 2, 4, 8, 10 s
    """

    max_retries: int = 3
    initial_delay: float = 1.0
    max_delay: float = 60.0
    backoff_multiplier: float = 2.0
    jitter: bool = True
    jitter_factor: float = 0.1
    non_retryable: Any = ()

    def __post_init__(self) -> None:
        kinds = self.non_retryable
        if isinstance(kinds, (str, type)):
            kinds = (kinds,)
        try:
            kinds = tuple(kinds)
        except TypeError:
            raise TypeError(f"non_retryable takes exception types or names, got "
                            f"{self.non_retryable!r}") from None
        for kind in kinds:
            if not ((isinstance(kind, type) and issubclass(kind, BaseException))
                    or (isinstance(kind, str) and kind.strip())):
                raise TypeError(f"non_retryable takes exception types or their names "
                                f"(\"ValueError\", \"billing.PaymentDeclined\"), got {kind!r}")
        self.non_retryable = kinds
        if (not _real(self.max_retries, whole=True)
                or self.max_retries < 0):
            raise ValueError(f"max_retries must be a whole number >= 0, got {self.max_retries!r}")
        for field in ("initial_delay", "max_delay", "backoff_multiplier", "jitter_factor"):
            value = getattr(self, field)
            if (not _real(value)
                    or not math.isfinite(value) or value < 0):
                raise ValueError(f"{field} must be a finite number >= 0, got {value!r}")
            if field in ("initial_delay", "max_delay") and value > _MAX_SECONDS:
                raise ValueError(f"{field} is seconds, at most {_MAX_SECONDS:g} ({_MAX_TEXT}), "
                                 f"got {value!r}")
        if self.jitter_factor > 1:
            raise ValueError(f"jitter_factor must be between 0 and 1, got {self.jitter_factor!r}")

    def retryable(self, error: BaseException) -> bool:
        """Whether ``error`` may be tried again under this policy: not a
        ``NonRetryableError`` (nor recorded as one), and not among ``non_retryable`` --
        a type it is an instance of, or a name of its class or of a base class: the
        class name, its qualified name or ``module.QualName``."""
        if isinstance(error, NonRetryableError) or (
                isinstance(error, (ActivityError, WorkflowFailedError)) and error.non_retryable):
            return False
        if isinstance(error, _GROUPS):  # TaskGroup's: one branch that cannot succeed is enough
            return all(self.retryable(inner) for inner in error.exceptions)
        if not self.non_retryable:
            return True
        names = set()
        for cls in type(error).__mro__:
            names.update((cls.__name__, cls.__qualname__, f"{cls.__module__}.{cls.__qualname__}"))
        recorded = getattr(error, "error_type", "") if isinstance(error, ActivityError) else ""
        if recorded:  # a failure replayed without its type: the name it was recorded with
            names.update((recorded, recorded.rpartition(".")[2]))
        return not any(kind in names if isinstance(kind, str) else isinstance(error, kind)
                       for kind in self.non_retryable)

    def calculate_delay(self, retry_count: int) -> float:
        """Seconds to wait before retry number ``retry_count`` (0 for the first)."""
        try:  # float powers: an int multiplier would build huge exact integers
            delay = min(self.initial_delay * float(self.backoff_multiplier) ** max(retry_count, 0),
                        self.max_delay)
        except OverflowError:  # the growth passed any float: the cap applies
            delay = self.max_delay if self.initial_delay > 0 else 0.0
        if self.jitter and self.jitter_factor:
            delay += delay * self.jitter_factor * random.uniform(-1.0, 1.0)
        return max(0.0, delay)


# ---- time -------------------------------------------------------------------------------


class Clock:
    """The time of workflows: what timers, timeouts, retry delays and the recorded
    times read, and how the engine waits for them. ``TinyWorkflowClient`` uses this
    one, the machine's time, unless given another (``TestClock`` in tests). Leases and
    worker heartbeats always use the machine's time: they tell whether a process is
    alive, which skipping time in a test must not change."""

    def time(self) -> float:
        """Now, in seconds since the epoch."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))

    async def wait(self, event: asyncio.Event, seconds: Optional[float],
                   real: Optional[float] = None) -> bool:
        """Until ``event`` is set (True), or ``seconds`` of this clock or ``real``
        seconds of the machine's time have passed (False). None: no such limit."""
        limits = [limit for limit in (seconds, real) if limit is not None]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), max(min(limits), 0.0) if limits else None)
        return event.is_set()


class _InFlight:
    """Database calls and activities in flight, which the event loop cannot show as
    ready work: ``TestClock.settle`` waits for them."""

    count = 0


_IN_FLIGHT = _InFlight()


class TestClock(Clock):
    """A clock for tests that moves only when told, so a workflow that sleeps a week
    finishes in milliseconds, in-process, with nothing to install::

        clock = TestClock()
        async with TinyWorkflowClient(url, auto_start_worker=True, clock=clock) as client:
            run_id = await client.start_workflow("trial_reminder", {"user": 42})
            await clock.advance(timedelta(days=7))
            assert await client.wait_for_result(run_id) == "reminded"

    ``advance`` lets the work in flight settle first (the run reaches its timer), then
    moves time forward deadline by deadline: each timer, timeout, retry delay and
    parked run that falls due fires in order, and what it sets off settles before the
    next. *Settled* means no task is ready to run and no database call and no activity
    is in flight: time does not skip under a running activity (up to its ``timeout``).
    Only ``advance`` moves this clock; waits that poll the database (the worker's,
    ``wait_for_result``'s) and leases go by the machine's time.
    ``start`` (a timezone-aware datetime or epoch seconds) defaults to the real now.
    """

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, start: Any = None):
        if isinstance(start, datetime):
            if start.tzinfo is None:
                raise ValueError(f"TestClock needs a timezone-aware datetime, got {start!r}")
            start = start.timestamp()
        if start is not None and (not _real(start)
                                  or not math.isfinite(start)):
            raise ValueError(f"TestClock start must be a datetime or epoch seconds, "
                             f"got {start!r}")
        self._now = time.time() if start is None else float(start)
        self._due: list = []  # heap of (deadline, sequence, future) of the waits here
        self._sequence = itertools.count()

    def time(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        await self.wait(asyncio.Event(), seconds)

    async def wait(self, event: asyncio.Event, seconds: Optional[float],
                   real: Optional[float] = None) -> bool:
        if event.is_set():
            return True
        if seconds is not None and seconds <= 0:
            return False
        waits = [asyncio.ensure_future(event.wait())]
        if seconds is not None:
            due = asyncio.get_running_loop().create_future()
            heapq.heappush(self._due, (self._now + seconds, next(self._sequence), due))
            waits.append(due)
        try:
            await asyncio.wait(waits, timeout=real, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in waits:
                future.cancel()  # a deadline of a finished wait is skipped by advance
        return event.is_set()

    async def advance(self, seconds: Any) -> None:
        """Let ``seconds`` (a number or a ``timedelta``) pass, as described above."""
        if isinstance(seconds, timedelta):
            seconds = seconds.total_seconds()
        if (not _real(seconds)
                or not 0 <= seconds <= _MAX_SECONDS):  # NaN too
            raise ValueError(f"advance needs seconds from 0 to {_MAX_SECONDS:g} ({_MAX_TEXT}) "
                             f"or a timedelta, got {seconds!r}")
        target = self._now + seconds
        await self.settle()
        while True:
            while self._due and self._due[0][2].done():
                heapq.heappop(self._due)
            if not self._due or self._due[0][0] > target:
                break
            self._now = max(self._now, self._due[0][0])
            while self._due and self._due[0][0] <= self._now:
                future = heapq.heappop(self._due)[2]
                if not future.done():
                    future.set_result(None)
            await self.settle()
        self._now = target
        await self.settle()

    async def settle(self) -> None:
        """Return once the work in flight has settled (see the class doc)."""
        loop, quiet = asyncio.get_running_loop(), 0
        while quiet < 3:  # quiet on three turns of the loop in a row
            await asyncio.sleep(0)
            if _IN_FLIGHT.count:  # threads and sockets at work: do not spin
                quiet = 0
                await asyncio.sleep(0.001)
            elif getattr(loop, "_ready", ()):  # asyncio's run queue (others: assume empty)
                quiet = 0
            else:
                quiet += 1


_REAL_CLOCK = Clock()


# ---- schedule times ---------------------------------------------------------------------

_CATCH_UP_ALL = 100  # catch_up=True: the latest this many missed times start
_EVERY_RANGE = (0.1, 366 * 86400.0)  # the shortest and longest interval, in seconds
_LATEST_TIME = datetime(9999, 1, 1, tzinfo=timezone.utc).timestamp()  # datetimes end
_CATCH_UP_LIMIT = 1000  # the most missed times one schedule may start at once


def _zone(name: Any):
    """The IANA timezone ``name`` (zoneinfo), or ValueError."""
    import zoneinfo

    if not isinstance(name, str) or not name:
        raise ValueError(f"timezone must be an IANA name such as 'Europe/Paris', got {name!r}")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name!r}: use an IANA name such as "
                         "'Europe/Paris', 'America/New_York' or 'UTC'") from None


class _Cron:
    """The due times of a cron expression in a timezone; croniter does the matching.

    Five fields (minute hour day-of-month month day-of-week), six with seconds first,
    or croniter's ``@hourly``, ``@daily``, ... The times follow the zone's wall clock
    the way cron does across daylight saving changes: a time the clock skips (spring
    forward) fires once, when the clock jumps; a time the clock shows twice (fall back)
    fires once, the first time, except in expressions that fire every hour (hour field
    ``*``): those go by real time, and fire in both of the repeated hours."""

    def __init__(self, expression: Any, zone_name: str):
        if not isinstance(expression, str) or not expression.strip():
            raise ValueError(f"a cron expression is a string such as '0 2 * * *', "
                             f"got {expression!r}")
        fields = expression.split()
        if len(fields) not in (5, 6) and not (len(fields) == 1 and fields[0].startswith("@")):
            raise ValueError(f"invalid cron expression {expression!r}: {len(fields)} fields, "
                             "expected five (minute hour day month weekday), or six with "
                             "seconds first")
        try:
            from croniter import croniter
        except ImportError:
            raise ImportError("tinyworkflow needs croniter for cron schedules: "
                              "pip install croniter") from None
        if any(re.fullmatch(r"[Rr](\(.*\))?", field) for field in fields):
            raise ValueError(f"invalid cron expression {expression!r}: a random field (R) "
                             "would pick another time at each reading; write the time")
        self.expression, self.zone, self._croniter = " ".join(fields), _zone(zone_name), croniter
        self._seconds = len(fields) == 6
        try:
            probe = croniter(self.expression, datetime.now(self.zone),
                             second_at_beginning=self._seconds)
        except (ValueError, KeyError, TypeError) as exc:  # croniter's errors are ValueErrors
            raise ValueError(f"invalid cron expression {expression!r}: {exc}") from None
        self._by_real_time = probe.expanded[1] == ["*"]

    def times(self, after: float):
        """The due times after ``after`` (epoch seconds), in order, without end.

        croniter matches wall-clock times (naive datetimes: its own handling of
        timezones has differed from version to version); each matching wall time
        becomes instants here. A wall time the clock shows twice has two instants, a
        skipped one none: the rule above picks."""
        start = datetime.fromtimestamp(after, self.zone).replace(tzinfo=None)
        start -= timedelta(seconds=self._instant(start, 1) - self._instant(start, 0))
        # (In a repeated hour, from its start: the second showings may still be ahead.)
        walls = self._croniter(self.expression, start, second_at_beginning=self._seconds)
        last, repeats = after, []  # second showings of repeated times, in order
        while True:
            wall = walls.get_next(datetime)
            first, second = self._instant(wall, 0), self._instant(wall, 1)
            if first > second:  # skipped: first and second straddle the jump
                if self._by_real_time:
                    continue
                first = self._jump(second, first)
            if first < second:  # shown twice: the second showing comes after the hour
                if self._by_real_time:
                    repeats.append(second)
                due = [first]
            else:
                due, repeats = repeats + [first], []
            for at in due:
                if at > last:
                    last = at
                    yield at

    def _instant(self, wall: datetime, fold: int) -> float:
        return wall.replace(tzinfo=self.zone, fold=fold).timestamp()

    def _jump(self, before: float, after: float) -> float:
        """The instant in (before, after] at which the clock jumps forward."""
        offset = datetime.fromtimestamp(after, self.zone).utcoffset()
        low, high = math.floor(before), math.ceil(after)
        while high - low > 1:  # offsets change on whole seconds
            middle = (low + high) // 2
            if datetime.fromtimestamp(middle, self.zone).utcoffset() == offset:
                high = middle
            else:
                low = middle
        return float(high)


class _Every:
    """The due times of an interval schedule: ``anchor + k * seconds``, k >= 1."""

    def __init__(self, seconds: float, anchor: float):
        self.seconds, self.anchor = seconds, anchor

    def times(self, after: float):
        k = max(1, math.floor((after - self.anchor) / self.seconds))
        while True:
            at = self.anchor + k * self.seconds
            if at > after:
                yield at
            k += 1


def _first_after(timing: Any, after: float) -> float:
    """The first due time after ``after``; ValueError if there is none."""
    try:
        return next(iter(timing.times(after)))
    except ValueError as exc:  # croniter: no date matches (such as February 31)
        raise ValueError(f"cron expression {timing.expression!r} never matches: {exc}") from None


def _due_times(timing: Any, first_due: float, now: float, limit: int) -> list:
    """The latest ``limit`` due times from ``first_due`` (itself one) up to ``now``.
    Looks back from ``now`` over a span that grows until it holds ``limit`` times or
    reaches ``first_due``: a schedule missed for weeks costs a few steps, not one per
    missed time."""
    span = 60.0
    while True:
        start = max(first_due, now - span)
        found = [first_due] if start == first_due else []
        for at in timing.times(start):
            if at > now:
                break
            found.append(at)
        if start == first_due or len(found) >= limit:
            return found[-limit:]
        span *= 4


def _timing(schedule: dict) -> Any:
    if schedule["cron_expression"] is not None:
        return _Cron(schedule["cron_expression"], schedule["timezone"])
    return _Every(schedule["interval_seconds"], schedule["anchor_at"])


def _schedule_timing(cron_expression: Any, every: Any, zone_name: Any) -> dict:
    """The timing columns of a schedule, checked: ValueError names the problem."""
    if (cron_expression is None) == (every is None):
        raise ValueError("a schedule takes a cron expression or every=<seconds>"
                         + (", not both" if every is not None else ""))
    if every is None:
        cron = _Cron(cron_expression, "UTC" if zone_name is None else zone_name)
        return {"cron_expression": cron.expression, "timezone": cron.zone.key,
                "interval_seconds": None}
    if zone_name is not None:
        raise ValueError("timezone applies to cron expressions; an interval is the same "
                         "in every timezone")
    if isinstance(every, timedelta):
        every = every.total_seconds()
    low, high = _EVERY_RANGE
    if (not _real(every)
            or not low <= every <= high):  # NaN too
        raise ValueError(f"every must be seconds from {low:g} to {high:g} (366 days; a cron "
                         f"expression for longer periods) or a timedelta, got {every!r}")
    return {"cron_expression": None, "timezone": "UTC", "interval_seconds": float(every)}


def _catch_up(value: Any) -> int:
    """How many missed times a schedule starts: False 1 (the latest), True
    ``_CATCH_UP_ALL``, or a number from 1 to ``_CATCH_UP_LIMIT``."""
    if value is False or value is True:
        return _CATCH_UP_ALL if value else 1
    if not isinstance(value, int) or not 1 <= value <= _CATCH_UP_LIMIT:
        raise ValueError(f"catch_up must be False (the latest missed time only), True "
                         f"(up to {_CATCH_UP_ALL}) or a number of times from 1 to "
                         f"{_CATCH_UP_LIMIT}, got {value!r}")
    return value


# ---- dialects: database URLs ------------------------------------------------------------

_SCHEMES = {
    "sqlite": "sqlite",
    "sqlite+aiosqlite": "sqlite",
    "postgresql": "postgresql",
    "postgresql+asyncpg": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mysql+aiomysql": "mysql",
    "mysql+asyncmy": "mysql",
}
_URL_FORMS = (
    "sqlite+aiosqlite:///relative/path.db, sqlite:////absolute/path.db, "
    "sqlite+aiosqlite:///:memory: or :memory:, "
    "postgresql+asyncpg://user:pass@host:5432/db (also postgresql://, postgres://), "
    "mysql+aiomysql://user:pass@host:3306/db (also mysql+asyncmy://, mysql://)"
)
_SQLITE_OPTIONS = {"synchronous": ("full", "normal", "off", "extra"), "timeout": None}
_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True,
             "false": False, "0": False, "no": False, "off": False}
# Options of the PostgreSQL and MySQL URLs that tinyworkflow reads itself: (parse, check,
# default, what a bad value must be). The pool follows the usage guide's numbers.
_SERVER_OPTIONS: dict[str, tuple] = {
    "pool_size": (int, lambda v: v >= 1, 10, "a whole number >= 1"),
    "max_overflow": (int, lambda v: v >= 0, 20, "a whole number >= 0"),
    "pool_recycle": (float, lambda v: v > 0 or v == -1, 3600.0,
                     "seconds > 0, or -1 to never recycle"),
    "pool_pre_ping": (lambda s: _BOOLEANS[s.lower()], None, True, "true or false"),
    "pool_timeout": (float, lambda v: v > 0, 30.0, "seconds > 0"),
    "connect_timeout": (float, lambda v: v > 0, 10.0, "seconds > 0"),
}
# MySQL connection options passed on to aiomysql. Text is stored as utf8mb4 (all of
# Unicode); a connection in another character set would mangle it.
_MYSQL_OPTIONS = {"charset": ("utf8mb4",), "unix_socket": None}
# PostgreSQL connection options (libpq's names) that asyncpg reads from the URL.
_POSTGRES_OPTIONS = (
    "host", "port", "dbname", "database", "user", "password", "passfile", "service",
    "sslmode", "sslcert", "sslkey", "sslrootcert", "sslnegotiation", "sslcrl", "sslpassword",
    "ssl_min_protocol_version", "ssl_max_protocol_version", "target_session_attrs",
    "krbsrvname", "gsslib", "application_name",
)


def _redact(url: str) -> str:
    """The URL without its password (in the user part or the query), for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    head = ""
    if "@" in rest:  # user[:password]@...: the password may hold any character
        userinfo, _, rest = rest.rpartition("@")
        user = userinfo.partition(":")[0]
        head = f"{user}:***@" if ":" in userinfo else f"{user}@"
    where, _, query = rest.partition("?")
    if query:
        query = "?" + "&".join(f"{k}=***" if k.lower() in ("password", "sslpassword")
                               else f"{k}={v}" for k, v in parse_qsl(query, True))
    return f"{scheme}://{head}{where}{query}"


def _parse_server_url(backend: str, url: str) -> tuple[str, dict, dict]:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = {key: default for key, (_, _, default, _) in _SERVER_OPTIONS.items()}
    passed = []  # query options for the driver
    for key, value in query:
        if key in _SERVER_OPTIONS:
            parse, check, _, what = _SERVER_OPTIONS[key]
            try:
                parsed = parse(value)
                if isinstance(parsed, float) and not math.isfinite(parsed):
                    raise ValueError
                if check is not None and not check(parsed):
                    raise ValueError
            except (ValueError, KeyError):
                raise ValueError(f"database URL option {key}={value!r} must be {what}") from None
            options[key] = parsed
        elif backend == "mysql":
            if key not in _MYSQL_OPTIONS:
                raise ValueError(
                    f"unknown MySQL URL option {key!r} in {_redact(url)!r}; known options: "
                    f"{', '.join([*_MYSQL_OPTIONS, *_SERVER_OPTIONS])}")
            allowed = _MYSQL_OPTIONS[key]
            if allowed and value.lower() not in allowed:
                raise ValueError(f"MySQL option {key}={value!r} must be one of "
                                 f"{', '.join(allowed)}: tinyworkflow stores text as utf8mb4")
            options[key] = value.lower() if allowed else value
        elif key in _POSTGRES_OPTIONS:
            passed.append((key, value))  # asyncpg checks the value
        else:
            raise ValueError(
                f"unknown PostgreSQL URL option {key!r} in {_redact(url)!r}; known options: "
                f"{', '.join([*_POSTGRES_OPTIONS, *_SERVER_OPTIONS])}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"database URL {_redact(url)!r} has a bad port") from None
    if backend == "mysql":
        if "," in parts.netloc:
            raise ValueError("a MySQL URL names one host")
        target = {"host": parts.hostname or "localhost", "port": port or 3306,
                  "user": unquote(parts.username or "") or "root",
                  "password": unquote(parts.password or ""), "db": unquote(parts.path[1:])}
        if not target["db"]:
            raise ValueError(f"MySQL URL {_redact(url)!r} must name a database: "
                             "mysql+aiomysql://user:pass@host:3306/db")
    else:  # asyncpg reads a libpq-style DSN itself (several hosts, sockets, sslmode ...)
        target = {"dsn": urlunsplit(("postgresql", parts.netloc, parts.path,
                                     urlencode(passed), ""))}
    return backend, target, options


def _parse_url(url: str) -> tuple[str, Any, dict]:
    """Split a database URL into (backend, target, options); ValueError if malformed.
    The target is a file path for SQLite and a dict of connection settings otherwise."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"database URL must be a non-empty string; accepted forms: {_URL_FORMS}")
    if url.strip() == ":memory:":
        return "sqlite", ":memory:", {}
    scheme, sep, rest = url.strip().partition("://")
    backend = _SCHEMES.get(scheme.lower()) if sep else None
    if backend is None:
        raise ValueError(f"unsupported database URL {_redact(url)!r}; accepted forms: {_URL_FORMS}")
    if backend != "sqlite":
        return _parse_server_url(backend, url.strip())
    path, _, query = rest.partition("?")
    if path and not path.startswith("/"):
        raise ValueError(
            f"SQLite URL {url!r} needs three slashes before a relative path "
            f"(sqlite:///data/app.db) and four before an absolute one (sqlite:////var/app.db)"
        )
    path = unquote(path[1:])
    options = dict(parse_qsl(query, keep_blank_values=True))
    for key, value in options.items():
        if key not in _SQLITE_OPTIONS:
            raise ValueError(
                f"unknown SQLite URL option {key!r} in {url!r}; known options: "
                f"synchronous=full|normal|off|extra, timeout=<seconds>"
            )
        allowed = _SQLITE_OPTIONS[key]
        if allowed and value.lower() not in allowed:
            raise ValueError(f"SQLite option {key}={value!r} must be one of {', '.join(allowed)}")
        if key == "timeout":
            try:
                if not (math.isfinite(float(value)) and float(value) >= 0):
                    raise ValueError
            except ValueError:
                raise ValueError(f"SQLite option timeout={value!r} must be a finite number "
                                 "of seconds >= 0") from None
    return "sqlite", path or ":memory:", options


# ---- dialects: SQL, migrations ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Dialect:
    """What differs between SQL databases, as data. Shared SQL is written once with
    ``?`` placeholders, ``{p}`` for the table prefix and ``{type}`` names in DDL."""

    name: str
    placeholder: str  # "?", "$" (numbered $1, $2, ...) or "%s"
    types: dict
    for_update: str  # appended to the claim's SELECT: row locks that skip locked rows
    lock_shared: str  # appended to a SELECT whose row must not change before commit
    lock_update: str  # appended to a SELECT of a row this transaction will update
    upsert_style: str  # "on conflict" (SQLite, PostgreSQL) or "on duplicate key" (MySQL)
    typed_select: bool = False  # values selected from a bind need a CAST (PostgreSQL)

    def translate(self, sql: str) -> str:
        if self.placeholder == "?":
            return sql
        if self.placeholder == "$":
            counter = itertools.count(1)
            return re.sub(r"\?", lambda _: f"${next(counter)}", sql)
        return sql.replace("%", "%%").replace("?", self.placeholder)

    def insert_new(self, table: str, columns: Any, key: str) -> str:
        """Insert unless a row with the same ``key`` exists (then nothing changes)."""
        head = (f"INSERT INTO {table} ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})")
        if self.upsert_style == "on duplicate key":
            return head + f" ON DUPLICATE KEY UPDATE {key} = {key}"
        return head + f" ON CONFLICT ({key}) DO NOTHING"

    def upsert(self, table: str, columns: dict, keys: tuple, source: str = "") -> str:
        """Insert or update on key conflict; ``columns`` maps each column to its type
        name. With ``source`` (``FROM ... WHERE ...``) the row is inserted only if the
        source yields one: a conditional insert."""
        if source:
            values = ", ".join(f"CAST(? AS {{{kind}}})" if self.typed_select else "?"
                               for kind in columns.values())
            head = f"INSERT INTO {table} ({', '.join(columns)}) SELECT {values} {source}"
        else:
            head = (f"INSERT INTO {table} ({', '.join(columns)}) "
                    f"VALUES ({', '.join('?' * len(columns))})")
        rest = [c for c in columns if c not in keys]
        if self.upsert_style == "on duplicate key":
            return (head + " ON DUPLICATE KEY UPDATE "
                    + ", ".join(f"{table}.{c} = VALUES({c})" for c in rest))
        return (head + f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in rest))


_SQLITE = _Dialect(
    name="sqlite",
    placeholder="?",
    # No AUTOINCREMENT (it writes sqlite_sequence on every insert) and steps WITHOUT
    # ROWID (one B-tree instead of two): fewer pages in the commit of every step.
    types={"key": "TEXT", "text": "TEXT", "float": "REAL", "int": "INTEGER",
           "autoid": "INTEGER PRIMARY KEY", "clustered": " WITHOUT ROWID", "table": ""},
    for_update="",  # BEGIN IMMEDIATE already makes the claim the only writer
    lock_shared="",  # likewise for every write transaction
    lock_update="",
    upsert_style="on conflict",
)

_POSTGRES = _Dialect(
    name="postgresql",
    placeholder="$",
    types={"key": "TEXT", "text": "TEXT", "float": "DOUBLE PRECISION", "int": "BIGINT",
           "autoid": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "clustered": "",
           "table": ""},
    for_update="FOR UPDATE SKIP LOCKED",
    lock_shared="FOR SHARE",
    lock_update="FOR NO KEY UPDATE",
    upsert_style="on conflict",
    typed_select=True,
)

_MYSQL = _Dialect(
    name="mysql",
    placeholder="%s",
    # Keys are VARCHAR (an index needs a bounded length; names are checked against it);
    # LONGTEXT holds JSON of any size. Binary collation: names compare exactly, as
    # they do in SQLite and PostgreSQL, whatever the database's default.
    types={"key": f"VARCHAR({_KEY_LENGTH})", "text": "LONGTEXT", "float": "DOUBLE",
           "int": "BIGINT", "autoid": "BIGINT AUTO_INCREMENT PRIMARY KEY", "clustered": "",
           "table": " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"},
    for_update="FOR UPDATE SKIP LOCKED",  # MySQL 8, MariaDB 10.6
    lock_shared="LOCK IN SHARE MODE",
    lock_update="FOR UPDATE",
    upsert_style="on duplicate key",
)

# Forward-only migrations: entry i moves the schema from version i to i + 1.
_MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE {p}runs (
            run_id {key} PRIMARY KEY,
            workflow_id {key} NOT NULL,
            workflow_name {key} NOT NULL,
            status {key} NOT NULL,
            input_data {text},
            output_data {text},
            error {text},
            retry_count {int} NOT NULL DEFAULT 0,
            max_retries {int} NOT NULL DEFAULT 0,
            timeout {float},
            created_at {float} NOT NULL,
            started_at {float},
            completed_at {float},
            updated_at {float} NOT NULL,
            wake_at {float},
            deadline_at {float},
            owner {key},
            lease_expires_at {float},
            parent_run_id {key},
            approval_required {key}){table}""",
        "CREATE INDEX {p}runs_runnable ON {p}runs (status, wake_at)",
        "CREATE INDEX {p}runs_created ON {p}runs (created_at)",
        "CREATE INDEX {p}runs_name ON {p}runs (workflow_name, status)",
        """CREATE TABLE {p}steps (
            run_id {key} NOT NULL,
            step {int} NOT NULL,
            name {key} NOT NULL,
            kind {key} NOT NULL,
            status {key} NOT NULL,
            input {text},
            output {text},
            error {text},
            attempts {int} NOT NULL,
            run_attempt {int} NOT NULL,
            started_at {float},
            completed_at {float},
            PRIMARY KEY (run_id, step)){clustered}{table}""",
        """CREATE TABLE {p}events (
            id {autoid},
            run_id {key} NOT NULL,
            event_type {key} NOT NULL,
            event_data {text},
            timestamp {float} NOT NULL){table}""",
        "CREATE INDEX {p}events_run ON {p}events (run_id, id)",
    ],
    [
        # Live workers and what they serve: a process without the code can start runs.
        """CREATE TABLE {p}workers (
            worker_id {key} PRIMARY KEY,
            host {key} NOT NULL,
            pid {int} NOT NULL,
            workflows {text} NOT NULL,
            started_at {float} NOT NULL,
            heartbeat_at {float} NOT NULL,
            expires_at {float} NOT NULL){table}""",
    ],
    [
        # Signals sent to runs, kept until a wait_for_signal step consumes them.
        """CREATE TABLE {p}signals (
            id {autoid},
            run_id {key} NOT NULL,
            name {key} NOT NULL,
            payload {text},
            created_at {float} NOT NULL,
            consumed_step {int}){table}""",
        "CREATE INDEX {p}signals_run ON {p}signals (run_id, name, id)",
    ],
    [
        # Child runs by parent: a cancel reaches every descendant.
        "CREATE INDEX {p}runs_parent ON {p}runs (parent_run_id)",
    ],
    [
        # Schedules: a cron expression in a timezone, or an interval from an anchor.
        # ``revision`` (random when the schedule is created, so not that of a deleted
        # one of the same id) goes up with every change: a worker starts the runs of a
        # due time only if the schedule is still the revision it read (exactly once).
        """CREATE TABLE {p}schedules (
            schedule_id {key} PRIMARY KEY,
            workflow_name {key} NOT NULL,
            workflow_id {key} NOT NULL,
            input_data {text},
            cron_expression {text},
            timezone {key} NOT NULL,
            interval_seconds {float},
            anchor_at {float},
            catch_up {int} NOT NULL,
            paused {int} NOT NULL,
            next_due_at {float},
            last_due_at {float},
            last_run_id {key},
            revision {int} NOT NULL,
            created_at {float} NOT NULL,
            updated_at {float} NOT NULL){table}""",
        "CREATE INDEX {p}schedules_due ON {p}schedules (paused, next_due_at)",
        # A run started by a schedule, for one of its due times; a delayed run's start.
        "ALTER TABLE {p}runs ADD COLUMN schedule_id {key}",
        "ALTER TABLE {p}runs ADD COLUMN scheduled_for {float}",
        # One run per schedule and due time, whatever happens: the database says so too.
        "CREATE UNIQUE INDEX {p}runs_schedule ON {p}runs (schedule_id, scheduled_for)",
    ],
    [
        # Idempotent starts: one run per key, for as long as the run is kept.
        "ALTER TABLE {p}runs ADD COLUMN idempotency_key {key}",
        "CREATE UNIQUE INDEX {p}runs_idempotency ON {p}runs (idempotency_key)",
    ],
    [
        # Queues: limits that hold across every worker. A claim of a queue's new runs
        # locks its row, so claimers of one queue count its places one at a time.
        """CREATE TABLE {p}queues (
            name {key} PRIMARY KEY,
            concurrency {int},
            worker_concurrency {int},
            key_concurrency {int},
            rate_limit {int},
            rate_period {float},
            updated_at {float} NOT NULL){table}""",
        "ALTER TABLE {p}runs ADD COLUMN queue_name {key}",
        "ALTER TABLE {p}runs ADD COLUMN queue_key {key}",
        "ALTER TABLE {p}runs ADD COLUMN priority {int} NOT NULL DEFAULT 0",
        "ALTER TABLE {p}runs ADD COLUMN dequeued_at {float}",
        "CREATE INDEX {p}runs_queue ON {p}runs (queue_name, status, priority, created_at)",
        "CREATE INDEX {p}runs_dequeued ON {p}runs (queue_name, dequeued_at)",
        # Debounce: the one run of a key not started yet (the claim clears the key).
        "ALTER TABLE {p}runs ADD COLUMN debounce_key {key}",
        "CREATE UNIQUE INDEX {p}runs_debounce ON {p}runs (debounce_key)",
    ],
    [
        # The order in which a run's steps' outcomes reached its workflow (a replay
        # delivers them in that order), and the deadline of a wait (a decision that
        # comes after it is refused).
        "ALTER TABLE {p}steps ADD COLUMN seq {int}",
        "ALTER TABLE {p}steps ADD COLUMN deadline {float}",
        # Counts what came for a run (signals, decisions, children's ends): a run parks
        # only if nothing came since it last looked.
        "ALTER TABLE {p}runs ADD COLUMN inbox {int} NOT NULL DEFAULT 0",
        # When the run's current attempt began: a retried or resumed attempt's new
        # timers and waits count from there, not from its replayed history's time.
        "ALTER TABLE {p}runs ADD COLUMN attempt_started_at {float}",
    ],
]

_RUN_COLUMNS = (
    "run_id", "workflow_id", "workflow_name", "status", "input_data", "output_data", "error",
    "retry_count", "max_retries", "timeout", "created_at", "started_at", "completed_at",
    "updated_at", "wake_at", "deadline_at", "owner", "lease_expires_at", "parent_run_id",
    "approval_required", "schedule_id", "scheduled_for", "idempotency_key", "queue_name",
    "queue_key", "priority", "dequeued_at", "debounce_key", "inbox", "attempt_started_at",
)
_STEP_TYPES = {"run_id": "key", "step": "int", "name": "key", "kind": "key", "status": "key",
               "input": "text", "output": "text", "error": "text", "attempts": "int",
               "run_attempt": "int", "started_at": "float", "completed_at": "float",
               "seq": "int", "deadline": "float"}
_STEP_COLUMNS = tuple(_STEP_TYPES)
_step_values = operator.itemgetter(*_STEP_COLUMNS)  # a step row's values, in that order
_WAITING = ("(status IN ('pending', 'retrying') "
            "OR (status IN ('running', 'paused') AND owner IS NULL))")
_FINISHED = f"status IN ({', '.join(repr(s) for s in _TERMINAL)})"
_NOT_TERMINAL = _FINISHED.replace(" IN ", " NOT IN ")
# An execution holds the run (its owner token) while it is in one of these statuses.
_EXECUTING = "status IN ('running', 'compensating')"
# Due: new or retrying runs, parked runs (running or paused, no owner) whose timer,
# signal or approval is due, runs to compensate that nobody holds, and runs whose
# executor's lease expired.
_RUNNABLE = ("((status IN ('pending', 'retrying') AND (wake_at IS NULL OR wake_at <= ?))"
             " OR (status IN ('running', 'paused') AND owner IS NULL AND wake_at <= ?)"
             " OR (status = 'compensating' AND owner IS NULL AND lease_expires_at IS NULL)"
             f" OR ({_EXECUTING} AND lease_expires_at < ?))")
# A run in a queue holds one of its places from its start until it ends.
# (A cancelled run holds it until its execution has stopped: owner cleared, or its
# lease expired. The condition takes the machine's time.)
_HOLDING = ("(status IN ('running', 'paused', 'retrying', 'compensating') OR "
            "(status = 'cancelled' AND owner IS NOT NULL AND lease_expires_at > ?))")
# A run and every run below it (children, their children, ...), nearest first.
_TREE = ("WITH RECURSIVE tree (run_id, depth) AS (SELECT run_id, 0 FROM {p}runs WHERE "
         "run_id = ? UNION ALL SELECT r.run_id, t.depth + 1 FROM {p}runs r JOIN tree t "
         "ON r.parent_run_id = t.run_id)")
_SCHEDULE_COLUMNS = (
    "schedule_id", "workflow_name", "workflow_id", "input_data", "cron_expression", "timezone",
    "interval_seconds", "anchor_at", "catch_up", "paused", "next_due_at", "last_due_at",
    "last_run_id", "revision", "created_at", "updated_at",
)
_EVENT_COLUMNS = "run_id, event_type, event_data, timestamp"
_EVENT_INSERT = f"INSERT INTO {{p}}events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?)"


# A parent waiting for a child: due now (as a signal makes it). It reads nothing the
# statements before it in a batch write, so PostgreSQL may run it beside them.
_WAKE_PARENT = ("UPDATE {p}runs SET wake_at = ?, inbox = inbox + 1, updated_at = ? "
                "WHERE run_id = ? AND status IN ('running', 'paused')")
_SIGNAL_INSERT = ("INSERT INTO {p}signals (run_id, name, payload, created_at) "
                  "VALUES (?, ?, ?, ?)")
# The column types of the tables PostgreSQL may insert into after a batch's first
# statement, only if that one wrote a row (INSERT ... SELECT ... FROM it: a bind there
# needs a type): a child's run, a signal.
_COLUMN_TYPES = {
    "runs": {**dict.fromkeys(("run_id", "workflow_id", "workflow_name", "status", "owner",
                              "parent_run_id", "approval_required", "schedule_id",
                              "idempotency_key", "queue_name", "queue_key", "debounce_key"),
                             "key"),
             **dict.fromkeys(("input_data", "output_data", "error"), "text"),
             **dict.fromkeys(("retry_count", "max_retries", "priority", "inbox"), "int"),
             **dict.fromkeys(("timeout", "created_at", "started_at", "completed_at",
                              "updated_at", "wake_at", "deadline_at", "lease_expires_at",
                              "scheduled_for", "dequeued_at", "attempt_started_at"), "float")},
    "signals": {"run_id": "key", "name": "key", "payload": "text", "created_at": "float"},
}
# The next approval a run waits for (after one was decided or given up).
_NEXT_APPROVAL = ("UPDATE {p}runs SET approval_required = (SELECT name FROM {p}steps WHERE "
                  "run_id = ? AND kind = 'approval' AND status = 'waiting' ORDER BY step "
                  "LIMIT 1) WHERE run_id = ?")


# ---- drivers: their errors, transactions ------------------------------------------------
# The only code that touches aiosqlite, asyncpg or aiomysql. A driver opens and closes
# connections, runs a statement on one, and says what one of its exceptions means: to
# the store, whether a write may be done again (``lost``, ``unsent``, ``conflict``,
# ``transient``, ``duplicate``); to callers of the public API, which of tinyworkflow's
# errors it is (``_database_error``, applied by ``_translating``).

_JSON_ARGUMENTS = ("input_data", "payload")  # stored as JSON: NUL is escaped
_DRIVERS = ("sqlite3", "aiosqlite", "asyncpg", "pymysql", "aiomysql")
_BUSY_SQLSTATES = ("40001", "40P01", "55P03")  # serialisation failure, deadlock, lock
_MYSQL_KINDS = {1205: DatabaseBusyError, 1213: DatabaseBusyError, 1062: DatabaseIntegrityError,
                1451: DatabaseIntegrityError, 1452: DatabaseIntegrityError,
                1153: DataTooLargeError, 1406: DataTooLargeError, 2002: DatabaseUnavailableError,
                2003: DatabaseUnavailableError, 2006: DatabaseUnavailableError,
                2013: DatabaseUnavailableError}


def _database_error(exc: BaseException) -> Optional[DatabaseError]:
    """tinyworkflow's error for a database driver's exception (by its module, class
    name, SQLSTATE or error code, as peewee does), or None if it is not one."""
    if isinstance(exc, TinyWorkflowError):
        return None  # ours already
    kind = type(exc)
    driver = kind.__module__.partition(".")[0] in _DRIVERS
    if not driver and not isinstance(exc, (ConnectionError, socket.gaierror)):
        return None
    text, name = str(exc), kind.__name__
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    if isinstance(exc, (ConnectionError, socket.gaierror)) or sqlstate.startswith("08") \
            or sqlstate in ("57P01", "57P02", "57P03") or "Connection" in name \
            or name == "InterfaceError" or "unable to open" in text:
        cls: type = DatabaseUnavailableError
    elif code in _MYSQL_KINDS:
        cls = _MYSQL_KINDS[code]
    elif sqlstate in _BUSY_SQLSTATES or "locked" in text or "busy" in text or "Deadlock" in name:
        cls = DatabaseBusyError
    elif sqlstate.startswith("23") or name == "IntegrityError":
        cls = DatabaseIntegrityError
    elif sqlstate.startswith("54") or sqlstate == "22001" or "too big" in text \
            or "too large" in text:
        cls = DataTooLargeError
    else:
        cls = DatabaseError
    what = {DatabaseBusyError: "the database is busy", DatabaseIntegrityError:
            "the database refused the write", DataTooLargeError: "too large for the database",
            DatabaseUnavailableError: "the database is unreachable"}.get(cls, "the database failed")
    return cls(f"{what}: {kind.__module__}.{name}: {text}")


def _translating(method: Callable) -> Callable:
    """A public coroutine method whose driver exceptions come out as tinyworkflow's, and
    which refuses NUL in a text argument (a name, an id, a key: stored as they are, and
    PostgreSQL refuses NUL; JSON values such as ``input_data`` escape it)."""
    names = list(inspect.signature(method).parameters)[1:]  # after self

    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        for name, value in (*zip(names, args[1:]), *kwargs.items()):
            if type(value) is str and "\x00" in value and name not in _JSON_ARGUMENTS:
                raise ValueError(f"{name} {value!r} contains NUL, which not every database "
                                 "stores")
        try:
            return await method(*args, **kwargs)
        except Exception as exc:
            error = _database_error(exc)
            if error is None:
                raise
            raise error from exc
    return call




def _import_driver(module: str, extra: str, backend: str) -> types.ModuleType:
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"tinyworkflow needs {module} for {backend}: "
                          f'pip install "tinyworkflow[{extra}]"') from None


class _Transaction:
    """A general transaction (``async with store.transaction() as tx``): reads and
    writes on the one connection that holds it, through its driver."""

    def __init__(self, driver: Any, conn: Any = None):
        self._driver, self._conn = driver, conn

    async def fetch(self, sql: str, params: tuple = ()) -> list:
        return await self._driver.fetch(self._conn, sql, params)

    async def execute(self, sql: str, params: tuple = ()) -> int:
        return await self._driver.execute(self._conn, sql, params)

    async def executemany(self, sql: str, rows: list) -> None:
        await self._driver.executemany(self._conn, sql, rows)


# ---- drivers: SQLite (aiosqlite) --------------------------------------------------------


def _is_busy(exc: BaseException) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)  # SQLITE_BUSY, SQLITE_LOCKED


class _Abandoned(Exception):
    """A queued thread call whose caller was cancelled before it started."""


class _SQLiteDriver:
    """One sqlite3 connection, whose calls run on aiosqlite's thread (``call``); the
    store's group commit also uses it (``db``) on the event loop. SQLite's own busy
    handler is off: only on the thread do we wait for another connection's lock
    (``retry_busy``), up to ``timeout`` seconds."""

    def __init__(self, path: str, timeout: float):
        self.path, self.timeout = path, timeout
        self.connection: Any = None  # aiosqlite's Connection, while open
        self._abandoned = False  # the caller of the thread call under way was cancelled

    async def open(self) -> None:
        try:
            import aiosqlite
        except ImportError:
            raise ImportError("tinyworkflow needs aiosqlite for SQLite: pip install aiosqlite") \
                from None
        # Calls run on aiosqlite's thread through Connection._execute, which is not public
        # API: the versions that have it as used here are the ones pyproject.toml allows.
        if not inspect.iscoroutinefunction(getattr(aiosqlite.Connection, "_execute", None)):
            raise ImportError(f"tinyworkflow needs aiosqlite 0.17 to 0.22, found "
                              f"{getattr(aiosqlite, '__version__', 'another version')}: "
                              "pip install 'aiosqlite>=0.17,<0.23'")
        if self.path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves. timeout=0:
        # no busy handler, so nothing waits for a lock inside SQLite (see retry_busy).
        self.connection = await aiosqlite.connect(self.path, timeout=0, isolation_level=None,
                                                  check_same_thread=False)

    async def close(self) -> None:
        if self.connection is not None:
            conn, self.connection = self.connection, None
            await conn.close()

    @property
    def db(self) -> sqlite3.Connection:
        return self.connection._conn

    async def call(self, fn, *args):
        """Run ``fn(*args)`` on aiosqlite's connection thread (a whole transaction can
        be one call: one hop). A queued call runs even if its caller is cancelled, so a
        cancelled caller keeps the connection until the call has ended -- soon: a call
        not yet started is skipped, one waiting for a lock gives up, and a running
        statement is interrupted (which rolls its transaction back)."""
        future = asyncio.ensure_future(self.connection._execute(self._unless_abandoned, fn,
                                                                *args))
        _IN_FLIGHT.count += 1
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.done():
                raise
        finally:
            _IN_FLIGHT.count -= 1
        self._abandoned = True
        try:
            while not future.done():
                self.db.interrupt()  # thread-safe; a no-op between statements, so repeat
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({future}, timeout=0.01)
        finally:
            self._abandoned = False
        if not future.cancelled():
            future.exception()  # retrieved: the caller is gone either way
        raise asyncio.CancelledError

    def _unless_abandoned(self, fn, *args):
        if self._abandoned:
            raise _Abandoned
        return fn(*args)

    def retry_busy(self, fn, *args):
        """Call ``fn`` until it gets past another connection's lock, up to the timeout.
        Only ever on the thread; gives up at once when the caller is gone."""
        deadline, pause = time.monotonic() + self.timeout, 0.001
        while True:
            try:
                return fn(*args)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or self._abandoned or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    # Statements on the thread (``conn`` is None: there is one connection).
    async def fetch(self, conn: None, sql: str, params: tuple) -> list:
        return await self.call(self.fetch_sync, sql, params)

    async def execute(self, conn: None, sql: str, params: tuple) -> int:
        return await self.call(self._execute_sync, sql, params)

    async def executemany(self, conn: None, sql: str, rows: list) -> None:
        await self.call(self.db.executemany, sql, rows)

    def _execute_sync(self, sql: str, params: tuple) -> int:
        return self.db.execute(sql, params).rowcount

    def fetch_sync(self, sql: str, params: tuple) -> list:
        return self.retry_busy(lambda: self.db.execute(sql, params).fetchall())

    # What an exception means.
    def transient(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and _is_busy(exc)

    def conflict(self, exc: BaseException) -> bool:
        return False  # one writer at a time: no deadlocks

    def duplicate(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc)


# ---- drivers: database servers (asyncpg, aiomysql) --------------------------------------


class _PostgresDriver:
    """asyncpg: connections to PostgreSQL, and what its exceptions mean."""

    def __init__(self, target: dict, options: dict, url: str):
        self.target, self.options, self.url = target, options, url  # url: for messages
        self._asyncpg: Any = None

    def load(self) -> None:
        self._asyncpg = _import_driver("asyncpg", "postgres", "PostgreSQL")

    async def open(self):
        asyncpg = self._asyncpg
        try:
            return await asyncpg.connect(
                self.target["dsn"], timeout=self.options["connect_timeout"],
                statement_cache_size=1000,
                server_settings={"application_name": "tinyworkflow"}
                if "application_name=" not in self.target["dsn"] else None)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError,
                asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailableError(f"cannot connect to {self.url}: {exc}") from exc

    async def close(self, conn) -> None:
        await conn.close()

    def terminate(self, conn) -> None:
        conn.terminate()

    def is_closed(self, conn) -> bool:
        return conn.is_closed()

    def reusable(self, conn) -> bool:
        """Open, idle and outside a transaction."""
        return not conn.is_closed() and not conn.is_in_transaction()

    async def ping(self, conn) -> None:
        await asyncio.wait_for(conn.execute("SELECT 1"), self.options["connect_timeout"])

    async def execute(self, conn, sql: str, params: tuple) -> int:
        status = await conn.execute(sql, *params)
        count = status.rpartition(" ")[2]  # "UPDATE 3", "INSERT 0 1", "SELECT 1", "BEGIN"
        return int(count) if count.isdigit() else 0

    async def fetch(self, conn, sql: str, params: tuple) -> list:
        return [tuple(row) for row in await conn.fetch(sql, *params)]

    async def fetchval(self, conn, sql: str, params: tuple) -> Any:
        return await conn.fetchval(sql, *params)

    async def executemany(self, conn, sql: str, rows: list) -> None:
        await conn.executemany(sql, rows)

    async def listen(self, conn, channel: str, heard: Callable[[str], None],
                     lost: asyncio.Event) -> None:
        """Call ``heard(payload)`` for each NOTIFY on ``channel``; set ``lost`` when the
        connection ends."""
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(channel, lambda _conn, _pid, _channel, payload: heard(payload))

    # What an exception means.
    def lost(self, exc: BaseException) -> bool:
        """The connection is gone (killed, server restarted, network)."""
        asyncpg = self._asyncpg
        return isinstance(exc, (OSError, asyncpg.ConnectionDoesNotExistError,
                                asyncpg.PostgresConnectionError,
                                asyncpg.exceptions.AdminShutdownError,
                                asyncpg.exceptions.CrashShutdownError,
                                asyncpg.exceptions.CannotConnectNowError)) or (
            isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)) or self.unsent(exc)

    def unsent(self, exc: BaseException) -> bool:
        """A lost connection that failed before the statement was sent: safe to redo."""
        # Raised before anything was sent: the connection was known closed, or is still
        # taking in the error the server sent as it ended the session.
        asyncpg = self._asyncpg
        return (isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc)) \
            or (isinstance(exc, asyncpg.exceptions.InternalClientError)
                and "cannot switch to state" in str(exc))

    def full(self, exc: Optional[BaseException]) -> bool:
        """The server refused a new connection: it has as many as it allows."""
        return isinstance(exc, self._asyncpg.exceptions.TooManyConnectionsError)

    def conflict(self, exc: BaseException) -> bool:
        """A deadlock or serialisation failure: the transaction was rolled back."""
        return isinstance(exc, (self._asyncpg.exceptions.DeadlockDetectedError,
                                self._asyncpg.exceptions.SerializationError))

    def transient(self, exc: BaseException) -> bool:
        return self.lost(exc) or self.conflict(exc) or \
            isinstance(exc, (OSError, asyncio.TimeoutError))

    def duplicate(self, exc: BaseException) -> bool:
        return isinstance(exc, self._asyncpg.exceptions.UniqueViolationError)


class _MySQLDriver:
    """aiomysql: connections to MySQL 8 / MariaDB 10.6+, and what its exceptions mean.
    Sessions run in UTC, in strict mode (a value that does not fit is an error, not
    truncated) and at READ COMMITTED (the claim's SKIP LOCKED locks only the rows it
    takes)."""

    # The server's error numbers: deadlock, lock wait timeout; gone away, lost, killed.
    _CONFLICTS = {1213, 1205}
    _LOST = {2003, 2006, 2013, 2055, 1927, 4031, 1053}
    # Table, column or index exists: a migration half done by a crash.
    _EXISTS = {1050, 1060, 1061}

    def __init__(self, target: dict, options: dict, url: str):
        self.target, self.options, self.url = target, options, url
        self._aiomysql: Any = None
        self._pymysql: Any = None  # aiomysql's own dependency: its errors and flags

    def load(self) -> None:
        self._aiomysql = _import_driver("aiomysql", "mysql", "MySQL")
        import pymysql
        self._pymysql = pymysql

    async def open(self):
        pymysql, target, options = self._pymysql, self.target, self.options
        extra = ({"unix_socket": options["unix_socket"]} if "unix_socket" in options else {})
        try:
            conn = await self._aiomysql.connect(
                host=target["host"], port=target["port"], user=target["user"],
                password=target["password"], db=target["db"],
                charset=options.get("charset", "utf8mb4"), autocommit=True,
                connect_timeout=options["connect_timeout"],
                # UPDATE counts the rows it matched, not those it changed: a fence.
                client_flag=pymysql.constants.CLIENT.FOUND_ROWS, **extra)
        except (OSError, asyncio.TimeoutError, pymysql.MySQLError) as exc:
            raise DatabaseUnavailableError(f"cannot connect to {self.url}: {exc}") from exc
        try:
            async with conn.cursor() as cur:
                await cur.execute("SET SESSION time_zone = '+00:00', SESSION sql_mode = "
                                  "CONCAT_WS(',', @@sql_mode, 'STRICT_ALL_TABLES')")
                await cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self, conn) -> None:
        await conn.ensure_closed()

    def terminate(self, conn) -> None:
        conn.close()

    def is_closed(self, conn) -> bool:
        return conn.closed or conn._reader.at_eof()

    def reusable(self, conn) -> bool:
        """Open, idle and outside a transaction."""
        return not self.is_closed(conn) and not conn.get_transaction_status()

    async def ping(self, conn) -> None:
        await asyncio.wait_for(conn.ping(reconnect=False), self.options["connect_timeout"])

    async def execute(self, conn, sql: str, params: tuple) -> int:
        async with conn.cursor() as cur:
            return await cur.execute(sql, params)

    async def fetch(self, conn, sql: str, params: tuple) -> list:
        async with conn.cursor() as cur:
            await cur.execute(sql, params)
            return list(await cur.fetchall())

    async def executemany(self, conn, sql: str, rows: list) -> None:
        async with conn.cursor() as cur:
            await cur.executemany(sql, rows)

    # What an exception means.
    @staticmethod
    def _code(exc: BaseException) -> Optional[int]:
        args = getattr(exc, "args", ())
        return args[0] if args and isinstance(args[0], int) else None

    def lost(self, exc: BaseException) -> bool:
        pymysql = self._pymysql
        if isinstance(exc, OSError):
            return True
        if isinstance(exc, pymysql.err.InterfaceError):  # (0, '') once the socket is gone
            return True
        return isinstance(exc, pymysql.MySQLError) and self._code(exc) in self._LOST

    def full(self, exc: Optional[BaseException]) -> bool:
        return self._code(exc) in (1040, 1226)  # too many connections (all, this user's)

    def unsent(self, exc: BaseException) -> bool:
        return isinstance(exc, self._pymysql.err.InterfaceError)  # the socket was already gone

    def conflict(self, exc: BaseException) -> bool:
        return isinstance(exc, self._pymysql.MySQLError) and self._code(exc) in self._CONFLICTS

    def transient(self, exc: BaseException) -> bool:
        return self.lost(exc) or self.conflict(exc) or \
            isinstance(exc, (OSError, asyncio.TimeoutError))

    def duplicate(self, exc: BaseException) -> bool:
        return isinstance(exc, self._pymysql.err.IntegrityError) and self._code(exc) == 1062

    def exists(self, exc: BaseException) -> bool:
        """DDL refused because what it creates is there (a half-done migration)."""
        return isinstance(exc, self._pymysql.MySQLError) and self._code(exc) in self._EXISTS


# ---- drivers: the connection pool -------------------------------------------------------


class _Pool:
    """Connections to a database server, as the usage guide promises: ``size`` kept
    open, up to ``overflow`` more opened under load (closed again once the load has
    passed: after ``_OVERFLOW_IDLE`` seconds unused, rather than at once, which under
    steady load would open a connection per query), and replaced once older than
    ``recycle`` seconds. Before use, each is checked: one whose socket the server has
    closed is replaced, and with ``pre_ping`` one that sat unused for more than
    ``_PING_IDLE`` seconds is pinged first (a round trip; a dead one is replaced). A
    busy connection is not pinged: that would double the round trips of a step. A
    caller waits up to ``timeout`` seconds for a free connection."""

    _OVERFLOW_IDLE = 10.0
    _OVERFLOW_PATIENCE = 0.02
    _PING_IDLE = 1.0

    def __init__(self, driver: Any, options: dict):
        self._driver = driver
        self.size, self.overflow = options["pool_size"], options["max_overflow"]
        self.recycle, self.pre_ping = options["pool_recycle"], options["pool_pre_ping"]
        self.timeout = options["pool_timeout"]
        self._idle: list = []  # (connection, opened at, idle since), the warmest last
        self._free = asyncio.Semaphore(self.size + self.overflow)  # one per connection out
        self._closing: set = set()  # graceful closes under way
        self._out = 0  # connections in use
        self._opening = 0  # connections being opened
        self._waiters: list = []  # futures of callers waiting for a connection of ours
        self._full_until = 0.0  # the server refused a connection: open none until then
        self._trimmer: Optional[asyncio.TimerHandle] = None  # the next look for surplus
        self._closed = False

    @contextlib.asynccontextmanager
    async def connection(self):
        """A checked connection for the block. One that failed in the block is closed
        rather than given back: its state (a transaction, the socket) is unknown."""
        deadline = time.monotonic() + self.timeout
        if not self._free.locked():
            await self._free.acquire()  # free now: no timer (and no lost cancellation)
        else:
            try:
                await asyncio.wait_for(self._free.acquire(), self.timeout)
            except asyncio.TimeoutError:
                raise self._timed_out() from None
        _IN_FLIGHT.count += 1
        try:
            conn, opened = await self._checkout(deadline)
            self._out += 1
            try:
                yield conn
            except BaseException as exc:
                self._out -= 1
                # An error the server answered (a deadlock, a refused value) leaves the
                # connection usable once out of its transaction; anything else may not.
                lost = isinstance(exc, Exception) and self._driver.lost(exc)
                if isinstance(exc, Exception) and not lost and self._driver.reusable(conn):
                    self._give_back(conn, opened)
                else:
                    self._discard(conn)
                if lost:  # the server restarted or ended sessions: likely not this one only
                    self._invalidate()
                raise
            self._out -= 1
            self._give_back(conn, opened)
        finally:
            _IN_FLIGHT.count -= 1
            self._free.release()

    def _timed_out(self) -> TinyWorkflowError:
        return DatabaseBusyError(
            f"no database connection became free within pool_timeout={self.timeout} s "
            f"(pool_size={self.size}, max_overflow={self.overflow}); raise them in the "
            "URL, or the server's connection limit, or lower worker_concurrency")

    async def _checkout(self, deadline: float) -> tuple:
        driver, patient = self._driver, True
        while True:
            while self._idle:
                conn, opened, idle_since = self._idle.pop()
                now = time.monotonic()
                if driver.is_closed(conn) or (self.recycle > 0 and now - opened > self.recycle):
                    self._discard(conn)
                    continue
                if self.pre_ping and now - idle_since > self._PING_IDLE:
                    try:
                        await driver.ping(conn)
                    except BaseException as exc:
                        self._discard(conn)
                        if not (isinstance(exc, Exception) and driver.lost(exc)):
                            raise
                        _log.info("a pooled database connection was dead (%s); replacing it",
                                  exc)
                        continue
                return conn, opened
            if self._closed:
                raise TinyWorkflowError("the database connection is closed")
            if patient and self._out + self._opening >= self.size:
                # Every kept connection is busy. A statement takes a millisecond and a
                # new connection several: wait a moment for one before opening overflow.
                patient = False
                got = await self._wait_for_give_back(
                    min(deadline, time.monotonic() + self._OVERFLOW_PATIENCE), quiet=True)
                if got is not None:
                    return got
                continue
            if time.monotonic() >= self._full_until or not self._out:
                try:
                    self._opening += 1
                    try:
                        return await driver.open(), time.monotonic()
                    finally:
                        self._opening -= 1
                except TinyWorkflowError as exc:
                    if not driver.full(exc.__cause__) or time.monotonic() >= deadline:
                        raise
                    # The server takes no more connections (other processes hold them):
                    # share ours, and stop asking for more for a while.
                    if time.monotonic() >= self._full_until:
                        _log.info("the database server has no connection to spare (%s); "
                                  "sharing the %d open ones", exc.__cause__, self._out)
                    self._full_until = time.monotonic() + 1.0
                    if not self._out:  # none of ours will come back: ask again soon
                        await asyncio.sleep(min(0.1, max(deadline - time.monotonic(), 0)))
                        continue
            got = await self._wait_for_give_back(deadline)
            if got is not None:
                return got

    async def _wait_for_give_back(self, deadline: float, quiet: bool = False) -> Optional[tuple]:
        """A connection one of ours gives back, or None when one was closed (so the
        server has room again) or, if ``quiet``, when the deadline has passed."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter),
                                          max(deadline - time.monotonic(), 0))
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                self._give_back(*waiter.result())  # handed to us as we gave up
            if isinstance(exc, asyncio.TimeoutError):
                if quiet:
                    return None
                raise self._timed_out() from None
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            waiter.cancel()  # a no-op once it has a result

    def _hand_over(self, got: Optional[tuple]) -> bool:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(got)
                return True
        return False

    def _give_back(self, conn, opened: float) -> None:
        if self._trimmer is not None:
            self._trimmer.cancel()
            self._trimmer = None
        if self._driver.is_closed(conn):
            self._discard(conn)
        elif self._closed:
            self._close_soon(conn)
        elif not self._hand_over((conn, opened)):
            self._idle.append((conn, opened, time.monotonic()))
            self._trim()

    def _trim(self) -> None:
        """Close the surplus connections (overflow) nobody needed for a while, the
        longest unused first (the front of the list); look again when the next would
        be due, so that a client gone quiet does not keep them."""
        self._trimmer = None
        now = time.monotonic()
        while len(self._idle) > self.size and now - self._idle[0][2] > self._OVERFLOW_IDLE:
            self._close_soon(self._idle.pop(0)[0])
        if len(self._idle) > self.size and not self._closed:
            self._trimmer = asyncio.get_running_loop().call_later(
                self._idle[0][2] + self._OVERFLOW_IDLE - now + 0.01, self._trim)

    def _close_soon(self, conn) -> None:
        closing = asyncio.ensure_future(self._close_one(conn))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    def _invalidate(self) -> None:
        """Drop the idle connections: the next callers open fresh ones."""
        idle, self._idle = self._idle, []
        for conn, _, _ in idle:
            self._discard(conn)

    def _discard(self, conn) -> None:
        """Drop a connection in an unknown state (the server rolls back its work)."""
        self._driver.terminate(conn)
        self._hand_over(None)  # room for a new one

    async def _close_one(self, conn) -> None:
        try:
            await asyncio.wait_for(self._driver.close(conn), 5)
        except Exception:
            pass
        finally:
            self._driver.terminate(conn)

    async def close(self) -> None:
        self._closed = True
        if self._trimmer is not None:
            self._trimmer.cancel()
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._close_one(conn) for conn, _, _ in idle), *self._closing)


# ---- the store --------------------------------------------------------------------------


class _Store:
    """Runs, steps and events in dialect-neutral SQL, over three primitives a backend
    provides: ``fetch`` (a read), ``batch`` (straight-line statements in one
    transaction, optionally fenced by the first one's row count) and ``transaction``
    (a general transaction with ``fetch``/``execute``). Values are always bound."""

    def __init__(self, dialect: _Dialect, prefix: str):
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,30}", prefix):
            raise ValueError(
                f"table prefix {prefix!r} must start with a letter and hold only letters, "
                "digits and underscores (at most 31)"
            )
        self.dialect, self.prefix = dialect, prefix
        self.driver: Any = None  # the subclass's: connections, statements, what errors mean
        self._cache: dict[str, str] = {}
        self._step_upsert: Optional[str] = None
        # The largest value one statement can carry, in bytes (None: no limit that
        # matters; MySQL's max_allowed_packet, read when connecting, less some room).
        self.max_value: Optional[int] = None
        # Server writes by the path they took: "transaction" (BEGIN, the statements,
        # COMMIT: a round trip each), "statement" (one statement), "grouped steps" /
        # "grouped finishes" (one statement for the writes of many runs). A test pins
        # the path of each hot write (tests/test_write_paths.py).
        self.paths: collections.Counter = collections.Counter()

    def fits(self, what: str, text: Optional[str]) -> Optional[str]:
        """``text`` if the database takes a value that long, else SerializationError."""
        limit = self.max_value
        if limit is None or text is None or len(text) <= limit // 4:  # 4 bytes a char
            return text
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise SerializationError(
                f"{what} is {size} bytes as JSON; this database takes at most {limit} in one "
                "value (its max_allowed_packet, less room for the statement): raise it on "
                "the server, or keep large data elsewhere and pass a reference")
        return text

    def twin(self) -> Optional["_Store"]:
        """A new, unconnected store of the same database (None for an in-memory one,
        which no other connection can see)."""
        raise NotImplementedError

    # -- backend primitives
    async def connect(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def fetch(self, sql: str, params: tuple = ()) -> list:
        raise NotImplementedError

    async def batch(self, ops: list, fence: bool = False) -> bool:
        raise NotImplementedError

    def transaction(self):
        raise NotImplementedError

    # -- SQL text
    def sql(self, template: str) -> str:
        text = self._cache.get(template)
        if text is None:
            text = self.dialect.translate(template.format(p=self.prefix, **self.dialect.types))
            self._cache[template] = text
        return text

    def transient(self, exc: BaseException) -> bool:
        """Whether a failed write may succeed if done again: the database was busy or
        unreachable, rather than refusing the values written."""
        # Ours (closed, pool timeout, outcome unknown), or the driver's word.
        return isinstance(exc, TinyWorkflowError) or self.driver.transient(exc)

    def duplicate(self, exc: BaseException) -> bool:
        """The write broke a unique key (the transaction was rolled back)."""
        return self.driver.duplicate(exc)

    # -- waking workers of other processes (PostgreSQL's NOTIFY; elsewhere they poll)
    def _wake_ops(self, run_id: str) -> list:
        """Statements to add to a write that makes a run due."""
        return []

    async def listen(self, heard: Callable[[str], None]) -> None:
        """While a worker of this store runs: call ``heard(run_id)`` when another process
        makes a run due ("" when it may have missed some), where the database can tell."""

    async def unlisten(self) -> None:
        pass

    def _event(self, run_id: str, event_type: str, data: Any, now: float) -> tuple:
        return self.sql(_EVENT_INSERT), (run_id, event_type, _dumps_for_display(data), now)

    # -- schema
    async def migrate(self) -> None:
        """Create the tables or bring them up to date. Safe when several processes
        initialise at once: they take turns (a schema lock) and the later ones find the
        work done. Each finished migration records the version it reached."""
        async with self.transaction() as tx:
            await self._lock_schema(tx)
            try:
                await self._ddl(tx, self.sql("CREATE TABLE IF NOT EXISTS {p}meta (name {key} "
                                             "PRIMARY KEY, value {text} NOT NULL){table}"))
                rows = await tx.fetch(self.sql("SELECT value FROM {p}meta WHERE name = ?"),
                                      ("schema_version",))
                version = int(rows[0][0]) if rows else 0
                if version > len(_MIGRATIONS):
                    raise TinyWorkflowError(
                        f"the database schema is version {version}, newer than this "
                        f"tinyworkflow {__version__} knows ({len(_MIGRATIONS)}); upgrade "
                        "tinyworkflow")
                record = self.sql(self.dialect.upsert(
                    "{p}meta", dict.fromkeys(("name", "value")), ("name",)))
                for reached, statements in enumerate(_MIGRATIONS[version:], version + 1):
                    for statement in statements:
                        await self._ddl(tx, self.sql(statement))
                    await tx.execute(record, ("schema_version", str(reached)))
            finally:
                await self._unlock_schema(tx)

    async def _lock_schema(self, tx) -> None:
        """Make this transaction the only one migrating (SQLite: BEGIN IMMEDIATE has)."""

    async def _unlock_schema(self, tx) -> None:
        pass

    async def _ddl(self, tx, statement: str) -> None:
        await tx.execute(statement)

    # -- runs
    def _insert(self, run: dict) -> tuple:
        return (self.sql(f"INSERT INTO {{p}}runs ({', '.join(run)}) "
                         f"VALUES ({', '.join('?' * len(run))})"), tuple(run.values()))

    async def insert_run(self, run: dict, events: list) -> None:
        ops = [self._insert(run)]
        ops += [self._event(run["run_id"], kind, data, run["created_at"]) for kind, data in events]
        await self.batch(ops + self._wake_ops(run["run_id"]))

    def child_ops(self, parent: str, step: int, child: dict) -> list:
        """Statements inserting a child run, to add to the write of its parent's step: a
        child exists exactly when its step does."""
        return [self._insert(child),
                self._event(child["run_id"], "workflow_created", {
                    "workflow_name": child["workflow_name"], "parent_run_id": parent,
                    "parent_step": step}, child["created_at"]),
                *self._wake_ops(child["run_id"])]

    async def continue_run(self, run_id: str, owner: str, now: float, successor: dict) -> bool:
        """End the run as ``continued`` and insert its successor, in one transaction;
        signals it had not consumed yet pass to the successor."""
        new_id = successor["run_id"]
        return await self.batch([
            (self.sql("UPDATE {p}runs SET status = 'continued', output_data = ?, "
                      "completed_at = ?, updated_at = ?, owner = NULL, lease_expires_at = NULL, "
                      "wake_at = NULL WHERE run_id = ? AND owner = ? AND status = 'running'"),
             (_encode({"continued_as": new_id}), now, now, run_id, owner)),
            self._event(run_id, "workflow_continued_as_new", {"run_id": new_id}, now),
            self._insert(successor),
            self._event(new_id, "workflow_created", {
                "workflow_name": successor["workflow_name"], "continued_from": run_id}, now),
            (self.sql("UPDATE {p}signals SET run_id = ? WHERE run_id = ? "
                      "AND consumed_step IS NULL"), (new_id, run_id)),
            *self._wake_ops(new_id),
        ], fence=True)

    async def begin_compensation(self, run_id: str, owner: str, now: float, error: str,
                                 event: tuple) -> bool:
        """The run failed for good and has compensations to run: it is ``compensating``
        (still held by ``owner``) until they have."""
        return await self.batch([
            (self.sql("UPDATE {p}runs SET status = 'compensating', error = ?, updated_at = ? "
                      "WHERE run_id = ? AND owner = ? AND status = 'running'"),
             (error, now, run_id, owner)),
            self._event(run_id, *event, now),
        ], fence=True)

    async def tree(self, run_id: str, now: float, real: float) -> list:
        """The run, then its unfinished descendants: (run_id, status, output_data, due
        now, when due if waiting) each."""
        rows = await self.fetch(self.sql(
            f"{_TREE} SELECT r.run_id, r.status, r.output_data, CASE WHEN {_RUNNABLE} THEN 1 "
            f"ELSE 0 END, CASE WHEN {_WAITING} THEN r.wake_at END FROM tree t "
            f"JOIN {{p}}runs r ON r.run_id = t.run_id "
            f"WHERE t.depth = 0 OR r.{_NOT_TERMINAL} ORDER BY t.depth"),
            (run_id, now, now, real))
        return rows

    async def claim(self, owner: str, clock: Callable[[], float], lease: float, *,
                    names: list, run_ids: Optional[list] = None, limit: int = 1,
                    local: Optional[dict] = None) -> list:
        """Take up to ``limit`` runnable runs of the given workflows under the owner
        token ``owner`` (a fencing token every later write of those runs must match),
        for ``lease`` seconds. ``clock`` is the workflows' clock, read once the claim
        has its locks; leases go by the machine's time (the same unless a test skips
        time). Runs in queues are taken within their queue's limits; ``local`` counts
        this worker's executions per queue (for ``worker_concurrency``)."""
        if not names or limit < 1:
            return []
        # deadline_at and dequeued_at are assigned before status: MySQL evaluates SET
        # left to right and later expressions would see the new status.
        async with self.transaction() as tx:
            now, real = clock(), time.time()
            base = f"{_RUNNABLE} AND workflow_name IN ({', '.join('?' * len(names))})"
            where, params = base, [now, now, real, *names]
            if run_ids is not None:
                where += f" AND run_id IN ({', '.join('?' * len(run_ids))})"
            candidates = await tx.fetch(self._claimable(f"{where} AND queue_name IS NULL",
                                                        "created_at"),
                                        (*params, *(run_ids or ()), limit))
            if len(candidates) < limit:
                candidates += await self._claim_queued(
                    tx, base, params, None if run_ids is None else set(run_ids), clock,
                    real, limit - len(candidates), local or {})
                now = clock()  # after the queues' locks: a start is recorded when it was
            if not candidates:
                return []
            # The candidates are ours to take: BEGIN IMMEDIATE (SQLite) or the row locks
            # of the SELECT (FOR UPDATE SKIP LOCKED) keep other claimers away until commit.
            ids = [row[0] for row in candidates]
            marks = ", ".join("?" * len(ids))
            await tx.execute(self.sql(
                "UPDATE {p}runs SET deadline_at = CASE WHEN status IN ('running', 'paused', "
                "'compensating') THEN deadline_at ELSE ? + timeout END, attempt_started_at = "
                "CASE WHEN status IN ('pending', 'retrying') THEN ? ELSE attempt_started_at "
                "END, dequeued_at = CASE "
                "WHEN status = 'pending' AND queue_name IS NOT NULL THEN ? ELSE dequeued_at "
                "END, status = CASE WHEN status = 'compensating' THEN status ELSE 'running' "
                "END, owner = ?, lease_expires_at = ?, started_at = COALESCE(started_at, ?), "
                "updated_at = ?, wake_at = NULL, debounce_key = NULL "
                f"WHERE run_id IN ({marks})"),
                (now, now, now, owner, real + lease, now, now, *ids))
            events = [self._event(run_id, *(
                ("workflow_resumed", {"previous_owner": old_owner, "owner": owner})
                if status in ("running", "paused", "compensating") else
                ("workflow_started", {"attempt": retry_count + 1, "owner": owner})), now)[1]
                for run_id, status, old_owner, retry_count in candidates]
            await tx.executemany(self._event("", "", None, now)[0], events)
            rows = await tx.fetch(self.sql(f"SELECT {', '.join(_RUN_COLUMNS)} FROM {{p}}runs "
                                           f"WHERE run_id IN ({marks})"), tuple(ids))
            # Their recorded steps come along: the executions replay without a query each.
            steps = await tx.fetch(self.sql(f"SELECT {', '.join(_STEP_COLUMNS)} FROM {{p}}steps "
                                            f"WHERE run_id IN ({marks})"), tuple(ids))
        runs = [{**dict(zip(_RUN_COLUMNS, row)), "history": {}} for row in rows]
        by_id = {run["run_id"]: run["history"] for run in runs}
        for row in steps:
            by_id[row[0]][row[1]] = dict(zip(_STEP_COLUMNS, row))
        return runs

    def _claimable(self, where: str, order: str) -> str:
        return self.sql(f"SELECT run_id, status, owner, retry_count FROM {{p}}runs WHERE "
                        f"{where} ORDER BY {order} LIMIT ? {self.dialect.for_update}")

    async def _claim_queued(self, tx, where: str, params: list, mine: Optional[set],
                            clock: Callable[[], float], real: float, limit: int,
                            local: dict) -> list:
        """The runnable runs in queues that ``claim`` may take (of ``mine`` only, if
        given), queue by queue (in name order: the locks are always taken in the same
        order). A run the queue let go already (parked on a timer, retrying, taken over
        from a lost worker) only needs room on this worker; a new one also a free place
        in the queue (``concurrency``, and ``key_concurrency`` for its key), room in the
        rate limit, and its turn: the first waiting runs by priority, then age, start,
        whoever asks. Each queue's row is locked first: claimers of one queue count its
        places one at a time."""
        limited = "" if mine is None else f" AND run_id IN ({', '.join('?' * len(mine))})"
        # Each queue with runs to take, and how many of those it let go already.
        found = dict(await tx.fetch(self.sql(
            "SELECT queue_name, SUM(CASE WHEN status = 'pending' THEN 0 ELSE 1 END) FROM "
            f"{{p}}runs WHERE {where}{limited} AND queue_name IS NOT NULL GROUP BY "
            "queue_name"), (*params, *(mine or ()))))
        if not found:
            return []
        queues = sorted(found)
        limits = {row[0]: row[1:] for row in await tx.fetch(self.sql(
            "SELECT name, concurrency, worker_concurrency, key_concurrency, rate_limit, "
            f"rate_period FROM {{p}}queues WHERE name IN ({', '.join('?' * len(queues))}) "
            f"ORDER BY name {self.dialect.lock_update}"), tuple(queues))}
        now, taken = clock(), []  # the time the starts will be recorded at, or before
        for queue in queues:
            concurrency, per_worker, per_key, rate, period = limits.get(queue, (None,) * 5)
            room = limit - len(taken)
            if per_worker is not None:
                room = min(room, per_worker - local.get(queue, 0))
            if room <= 0:
                continue
            in_queue, queue_params = f"{where} AND queue_name = ?", (*params, queue)
            if found[queue]:
                again = await tx.fetch(self._claimable(
                    f"{in_queue}{limited} AND status <> 'pending'", "created_at"),
                    (*queue_params, *(mine or ()), room))
                taken += again
                room -= len(again)
            if room > 0 and (concurrency is not None or rate is not None):
                held, started = (await tx.fetch(self.sql(
                    f"SELECT (SELECT COUNT(*) FROM {{p}}runs WHERE queue_name = ? AND "
                    f"{_HOLDING}), (SELECT COUNT(*) FROM {{p}}runs WHERE queue_name = ? AND "
                    "dequeued_at > ?)"), (queue, real, queue, now - (period or 0))))[0]
                if concurrency is not None:
                    room = min(room, concurrency - held)
                if rate is not None:
                    room = min(room, rate - started)
            if room <= 0:
                continue
            in_queue += " AND status = 'pending'"
            if per_key is None:
                turn = await tx.fetch(self._claimable(in_queue, "priority, created_at, run_id"),
                                      (*queue_params, room))
                taken += [row for row in turn if mine is None or row[0] in mine]
                continue
            # Per key: the first ones of each key, as many as its key has places free.
            chosen = [run_id for run_id, in await tx.fetch(self.sql(
                "SELECT c.run_id FROM (SELECT run_id, queue_key, priority, created_at, "
                "ROW_NUMBER() OVER (PARTITION BY queue_key ORDER BY priority, created_at, "
                f"run_id) AS place FROM {{p}}runs WHERE {in_queue}) c LEFT JOIN (SELECT "
                "queue_key, COUNT(*) AS held FROM {p}runs WHERE queue_name = ? AND "
                f"{_HOLDING} GROUP BY queue_key) h ON h.queue_key = c.queue_key WHERE "
                "c.queue_key IS NULL OR c.place + COALESCE(h.held, 0) <= ? "
                "ORDER BY c.priority, c.created_at, c.run_id LIMIT ?"),
                (*queue_params, queue, real, per_key, room))
                if mine is None or run_id in mine]
            if chosen:  # locked, and checked again (a debounce may have moved one on)
                taken += await tx.fetch(self._claimable(
                    f"{in_queue} AND run_id IN ({', '.join('?' * len(chosen))})", "run_id"),
                    (*queue_params, *chosen, len(chosen)))
        return taken

    async def resume_run(self, run_id: str, now: float, retries: int,
                         real: Optional[float] = None) -> bool:
        """A failed or cancelled run becomes due again as a new attempt, with ``retries``
        more automatic retries; its recorded steps stay and replay. A run whose
        compensations had begun (it failed, its compensation failed; or it was cancelled
        while compensating) compensates again instead: the compensations that did not
        complete run anew, the forward path never does."""
        real = now if real is None else real  # leases go by the machine's time
        async with self.transaction() as tx:
            began = await tx.fetch(self.sql(
                "SELECT event_data FROM {p}events WHERE run_id = ? AND event_type = "
                "'workflow_compensating' ORDER BY id DESC LIMIT 1"), (run_id,))
            if began:
                # Compensating again, with the error it compensates for (not how the
                # compensation failed); a cancelled execution still winding down keeps
                # its owner and lease, and the run is taken once it has stopped.
                cause = _loads(began[0][0]) or {}
                resumed = await tx.execute(self.sql(
                    "UPDATE {p}runs SET status = 'compensating', error = ?, retry_count = "
                    "retry_count + 1, completed_at = NULL, wake_at = NULL, updated_at = ? "
                    "WHERE run_id = ? AND status IN ('failed', 'cancelled')"),
                    (cause.get("error") or cause.get("reason") or "resumed", now, run_id))
                if resumed:
                    await tx.execute(self.sql(
                        "UPDATE {p}steps SET status = 'registered', error = NULL, attempts = 0, "
                        "completed_at = NULL WHERE run_id = ? AND kind = 'compensation' AND "
                        "status <> 'completed'"), (run_id,))
            else:
                # A cancelled run whose executor may still be winding down (owner set,
                # lease not expired) becomes due when that lease would have expired.
                resumed = await tx.execute(self.sql(
                    "UPDATE {p}runs SET max_retries = retry_count + 1 + ?, "
                    "retry_count = retry_count + 1, wake_at = CASE WHEN owner IS NOT NULL "
                    "AND lease_expires_at > ? THEN ? + (lease_expires_at - ?) ELSE NULL END, "
                    "status = 'pending', owner = NULL, lease_expires_at = NULL, "
                    "completed_at = NULL, deadline_at = NULL, updated_at = ? "
                    "WHERE run_id = ? AND status IN ('failed', 'cancelled')"),
                    (retries, real, now, real, now, run_id))
            if not resumed:
                return False
            await tx.execute(*self._event(run_id, "workflow_resume_requested",
                                          {"compensating": bool(began)}, now))
            for op in self._wake_ops(run_id):
                await tx.execute(*op)
            return True

    async def cancelled_children(self, run_id: str) -> list:
        """The cancelled child runs the run still awaits (their steps are waiting) --
        none if its compensations had begun: a resume then only compensates."""
        if await self.fetch(self.sql("SELECT 1 FROM {p}events WHERE run_id = ? AND "
                                     "event_type = 'workflow_compensating'"), (run_id,)):
            return []
        rows = await self.fetch(self.sql(
            "SELECT output FROM {p}steps WHERE run_id = ? AND kind = 'child' AND "
            "status = 'waiting'"), (run_id,))
        children = [(_loads(output) or {}).get("run_id") for output, in rows]
        cancelled = []
        for child_id in filter(None, children):
            child = await self.get_run(child_id)
            if child is not None and child["status"] == "cancelled":
                cancelled.append(child_id)
        return cancelled

    async def fork_run(self, source: dict, run: dict, before_step: int) -> None:
        """Insert ``run`` with the completed steps of ``source`` numbered below
        ``before_step``: they replay, and the new run executes from there."""
        copied = ", ".join(c for c in _STEP_COLUMNS if c not in ("run_id", "run_attempt"))
        await self.batch([
            self._insert(run),
            (self.sql(f"INSERT INTO {{p}}steps (run_id, run_attempt, {copied}) "
                      f"SELECT ?, 0, {copied} FROM {{p}}steps "
                      "WHERE run_id = ? AND step < ? AND status = 'completed'"),
             (run["run_id"], source["run_id"], before_step)),
            self._event(run["run_id"], "workflow_created", {
                "workflow_name": run["workflow_name"], "forked_from": source["run_id"],
                "from_step": before_step}, run["created_at"]),
            *self._wake_ops(run["run_id"]),
        ])

    async def advertise(self, worker: dict) -> None:
        await self.batch([(self.sql(self.dialect.upsert(
            "{p}workers", dict.fromkeys(worker), ("worker_id",))), tuple(worker.values()))])

    async def retire(self, worker_id: str) -> None:
        await self.batch([(self.sql("DELETE FROM {p}workers WHERE worker_id = ?"),
                           (worker_id,))])

    async def live_workers(self, now: float) -> list:
        return await self.fetch(self.sql(
            "SELECT worker_id, host, pid, workflows, started_at, heartbeat_at FROM {p}workers "
            "WHERE expires_at > ? ORDER BY started_at"), (now,))

    async def settle_run(self, run_id: str, owner: str, now: float) -> None:
        """The cancelled execution under ``owner`` has really stopped: drop its lease
        (a run to compensate may then be taken at once)."""
        await self.batch([
            (self.sql("UPDATE {p}runs SET owner = NULL, lease_expires_at = NULL, updated_at = ? "
                      "WHERE run_id = ? AND owner = ? AND status = 'cancelled'"),
             (now, run_id, owner)),
            (self.sql("UPDATE {p}runs SET owner = NULL, lease_expires_at = NULL, updated_at = ? "
                      "WHERE run_id = ? AND owner = ? AND status = 'compensating'"),
             (now, run_id, owner)),
            *self._wake_ops(run_id),
        ])

    async def release_run(self, run_id: str, owner: str, now: float) -> bool:
        """Give a run back (a worker stopping): any worker may claim it at once."""
        return await self.batch([
            (self.sql("UPDATE {p}runs SET owner = NULL, lease_expires_at = 0, updated_at = ? "
                      f"WHERE run_id = ? AND owner = ? AND {_EXECUTING}"),
             (now, run_id, owner)),
            self._event(run_id, "workflow_released", {"owner": owner}, now),
            *self._wake_ops(run_id),
        ], fence=True)

    async def next_wake(self, names: list, looked: float, now: float) -> tuple:
        """(when the earliest waiting run of these workflows becomes due, or a rate
        limit lets a queue's waiting run start; when the earliest of their active
        schedules is due after ``looked``), each None if there is none. (A schedule due
        at ``looked`` still failed to start then: it is tried again at the next regular
        look, not in a busy loop; so is a run in a queue that is due but had to wait
        for a place: a run ending or the next look brings it.)"""
        if not names:
            return None, None
        marks = ", ".join("?" * len(names))
        rows = await self.fetch(self.sql(
            f"SELECT (SELECT MIN(wake_at) FROM {{p}}runs WHERE {_WAITING} "
            f"AND workflow_name IN ({marks}) AND (queue_name IS NULL OR wake_at > ?)), "
            "(SELECT MIN(next_due_at) FROM {p}schedules WHERE paused = 0 AND next_due_at > ? "
            f"AND workflow_name IN ({marks})), (SELECT MIN(r.dequeued_at + q.rate_period) "
            "FROM {p}queues q JOIN {p}runs r ON r.queue_name = q.name WHERE q.rate_period "
            "IS NOT NULL AND r.dequeued_at > ? - q.rate_period AND EXISTS (SELECT 1 FROM "
            "{p}runs w WHERE w.queue_name = q.name AND w.status = 'pending'))"),
            (*names, now, looked, *names, now))
        if not rows:
            return None, None
        run_due, schedule_due, rate_due = rows[0]
        return (min((t for t in (run_due, rate_due) if t is not None), default=None),
                schedule_due)

    # Every write of an executing run is fenced: it takes effect only while the writer's
    # owner token is the run's and the run is running, so an executor that was cancelled
    # or lost its lease cannot write.
    async def suspend_run(self, run_id: str, owner: str, now: float,
                          wake_at: Optional[float], approval: Optional[str] = None,
                          inbox: Optional[int] = None) -> bool:
        """The run waits (timers, signals, approvals, children): it stays running but
        nobody holds it (nothing in memory) until ``wake_at`` or something it waits for
        comes; then any worker claims it and replays it. Waiting for an approval (the
        first, ``approval``), it is ``paused``. With ``inbox`` (the count its executor
        last looked at), only if nothing came for it since."""
        return await self.batch([
            (self.sql("UPDATE {p}runs SET owner = NULL, lease_expires_at = NULL, wake_at = ?, "
                      "status = ?, approval_required = ?, updated_at = ? WHERE run_id = ? AND "
                      "owner = ? AND status = 'running'"
                      + ("" if inbox is None else " AND inbox = ?")),
             (wake_at, "running" if approval is None else "paused", approval, now, run_id,
              owner) + (() if inbox is None else (inbox,))),
            self._event(run_id, "workflow_waiting" if approval is None else "workflow_paused",
                        {"wake_at": wake_at} if approval is None else
                        {"approval_required": approval, "wake_at": wake_at}, now),
            *self._wake_ops(run_id),  # other workers learn when it is due
        ], fence=True)

    async def inbox(self, run_id: str) -> Optional[int]:
        """How many things (signals, decisions, children's ends) came for the run."""
        rows = await self.fetch(self.sql("SELECT inbox FROM {p}runs WHERE run_id = ?"),
                                (run_id,))
        return int(rows[0][0]) if rows else None

    async def decide_approval(self, run_id: str, key: str, approved: bool, now: float) -> bool:
        """Record the decision on the approval ``key`` the run waits for, as the result
        of its approval step, and make the run due; False (nothing written) if the run
        does not wait for ``key`` (not any more), or the wait's deadline has passed."""
        async with self.transaction() as tx:
            # The run's row first: the order every writer of a run's steps locks in.
            if not await tx.fetch(self.sql(f"SELECT 1 FROM {{p}}runs WHERE run_id = ? AND "
                                           f"status IN ('running', 'paused') "
                                           f"{self.dialect.lock_update}"), (run_id,)):
                return False
            if not await tx.execute(self.sql(
                    "UPDATE {p}steps SET status = 'completed', output = ?, completed_at = ? "
                    "WHERE run_id = ? AND kind = 'approval' AND name = ? AND status = "
                    "'waiting' AND (deadline IS NULL OR deadline > ?)"),
                    (_encode(approved), now, run_id, key, now)):
                return False
            await tx.execute(self.sql("UPDATE {p}runs SET status = 'running', inbox = inbox + "
                                      "1, wake_at = ?, updated_at = ? WHERE run_id = ?"),
                             (now, now, run_id))
            await tx.execute(self.sql(_NEXT_APPROVAL), (run_id, run_id))
            await tx.execute(*self._event(run_id, "approval_granted" if approved else
                                          "approval_rejected", {"key": key}, now))
            for op in self._wake_ops(run_id):
                await tx.execute(*op)
        return True

    async def approval_steps(self, run_id: str, key: str) -> list:
        """The statuses of the run's approval steps for ``key``, in step order."""
        return [status for status, in await self.fetch(self.sql(
            "SELECT status FROM {p}steps WHERE run_id = ? AND kind = 'approval' AND name = ? "
            "ORDER BY step"), (run_id, key))]

    def approval_wait_ops(self, run_id: str, key: str) -> tuple:
        """Statements to add to the write of an approval wait's row: the run shows the
        first approval it waits for."""
        return ((self.sql("UPDATE {p}runs SET approval_required = COALESCE("
                          "approval_required, ?) WHERE run_id = ?"), (key, run_id)),)

    def approval_given_up_ops(self, run_id: str, owner: str, step: int, now: float,
                              event: tuple) -> tuple:
        """Statements cancelling an approval wait the workflow gave up, unless an
        approver decided it meanwhile (that decision stays recorded), while the run is
        ``owner``'s."""
        return ((self.sql("UPDATE {p}steps SET status = 'cancelled', completed_at = ? "
                          "WHERE run_id = ? AND step = ? AND status = 'waiting' AND EXISTS "
                          "(SELECT 1 FROM {p}runs r WHERE r.run_id = ? AND r.owner = ?)"),
                 (now, run_id, step, run_id, owner)),
                (self.sql(_NEXT_APPROVAL), (run_id, run_id)),
                self._event(run_id, *event, now))

    def signal_returned_ops(self, run_id: str, step: int) -> tuple:
        """Statements giving back the signal a given-up wait had taken (the next wait
        for its name takes it)."""
        return ((self.sql("UPDATE {p}signals SET consumed_step = NULL WHERE run_id = ? AND "
                          "consumed_step = ?"), (run_id, step)),)

    async def time_out_approval(self, run_id: str, owner: str, now: float, row: dict,
                                event: tuple) -> Optional[bool]:
        """Record the approval step ``row`` as timed out unless a decision came first
        (False); None if the run is no longer ``owner``'s."""
        async with self.transaction() as tx:
            if not await tx.fetch(self.sql(f"SELECT 1 FROM {{p}}runs WHERE run_id = ? AND "
                                           f"owner = ? AND status = 'running' "
                                           f"{self.dialect.lock_update}"), (run_id, owner)):
                return None
            if not await tx.execute(self.sql(
                    "UPDATE {p}steps SET status = 'failed', error = ?, completed_at = ?, "
                    "seq = ?, run_attempt = ? WHERE run_id = ? AND step = ? AND status = "
                    "'waiting'"), (row["error"], now, row["seq"], row["run_attempt"], run_id,
                                   row["step"])):
                return False
            await tx.execute(self.sql(_NEXT_APPROVAL), (run_id, run_id))
            await tx.execute(*self._event(run_id, *event, now))
        return True

    async def send_signal(self, run_id: str, name: str, payload: str, now: float) -> bool:
        """Store a signal for a run that is not finished (False if there is no such
        run) and make a waiting run due at once."""
        return await self.batch([
            # First, locking the run row: a run continuing as new meanwhile either passes
            # this signal on or has ended before (then the client sends to its successor).
            # Marks a waiting run due: parked, it wakes; still executing, it will not park
            # (its inbox count changed).
            (self.sql("UPDATE {p}runs SET wake_at = CASE WHEN status IN ('running', 'paused') "
                      "THEN ? ELSE wake_at END, inbox = inbox + 1, updated_at = ? "
                      f"WHERE run_id = ? AND {_NOT_TERMINAL}"), (now, now, run_id)),
            (self.sql(_SIGNAL_INSERT), (run_id, name, payload, now)),
            self._event(run_id, "signal_received", {"name": name}, now),
            *self._wake_ops(run_id),
        ], fence=True)

    async def consume_signal(self, run_id: str, owner: str, now: float, name: str,
                             step: dict, until: Optional[float] = None) -> Optional[tuple]:
        """Take the oldest unconsumed signal ``name`` of the run and record ``step`` as
        completed with its payload, in one transaction: a signal is consumed once.
        ``(True, payload)``, ``(False, None)`` if none is there, None if the run is no
        longer ``owner``'s. With ``until``: only a signal sent by then."""
        async with self.transaction() as tx:
            if not await tx.fetch(self.sql("SELECT 1 FROM {p}runs WHERE run_id = ? AND owner = ? "
                                           "AND status = 'running' " + self.dialect.lock_update),
                                  (run_id, owner)):
                return None
            rows = await tx.fetch(self.sql(
                "SELECT id, payload FROM {p}signals WHERE run_id = ? AND name = ? "
                "AND consumed_step IS NULL" + ("" if until is None else " AND created_at <= ?")
                + " ORDER BY id LIMIT 1"), (run_id, name) + (() if until is None else (until,)))
            if not rows:
                return False, None
            signal_id, payload = rows[0]
            row = {**step, "output": payload}
            await tx.execute(self.sql("UPDATE {p}signals SET consumed_step = ? WHERE id = ?"),
                             (step["step"], signal_id))
            await tx.execute(self._step_upsert_sql(),
                             (*_step_values(row), run_id, owner, "running"))
            await tx.execute(*self._event(run_id, "step_completed", {
                "step": step["step"], "name": name, "kind": "signal"}, now))
            return True, payload

    async def renew_lease(self, run_id: str, owner: str, now: float, lease_until: float,
                          status: Optional[str]) -> bool:
        """Extend the lease while the run is ``owner``'s and (if given) in ``status``;
        without it, while a cancelled execution winds down (the run keeps its owner)."""
        return await self.batch([(self.sql(
            "UPDATE {p}runs SET lease_expires_at = ?, updated_at = ? WHERE run_id = ? AND "
            "owner = ?" + (" AND status = ?" if status else "")),
            (lease_until, now, run_id, owner, *((status,) if status else ())))], fence=True)

    # (These two are the step path: plain functions that hand back the write to await,
    # a coroutine frame less each.)
    def record_steps(self, run_id: str, owner: str, now: float, items: list,
                     status: str = "running", extra: Optional[list] = None) -> Awaitable[bool]:
        """Record steps, each ``(row, event)``, and ``extra`` statements, in one
        transaction, while the run is ``owner``'s and in ``status`` (running, or
        compensating for a compensation)."""
        if len(items) == 1 and not extra:  # the hot path (grouped with other runs' steps)
            return self.record_step(run_id, owner, now, *items[0], status)
        ops = []
        for row, event in items:
            ops.append((self._step_upsert_sql(),
                        (*_step_values(row), run_id, owner, status)))
            ops.append(self._event(run_id, *event, now))
        return self.batch(ops + (extra or []), fence=True)

    def record_step(self, run_id: str, owner: str, now: float, step: dict,
                    event: tuple, status: str = "running") -> Awaitable[bool]:
        """Record one step (see ``record_steps``)."""
        # The step row is selected *from* the run row that proves ownership, so the hot
        # path writes no run row (the heartbeat renews the lease).
        return self.batch([
            (self._step_upsert_sql(),
             (*_step_values(step), run_id, owner, status)),
            self._event(run_id, *event, now),
        ], fence=True)

    def _step_upsert_sql(self) -> str:
        if self._step_upsert is None:
            self._step_upsert = self.sql(self.dialect.upsert(
                "{p}steps", _STEP_TYPES, ("run_id", "step"),
                "FROM {p}runs WHERE run_id = ? AND owner = ? AND status = ? "
                + self.dialect.lock_shared))
        return self._step_upsert

    async def finish_run(self, run_id: str, owner: str, now: float, status: str,
                         output: Optional[str], error: Optional[str], event: tuple,
                         parent: Optional[str] = None, in_status: str = "running") -> bool:
        """Record the run's outcome while it is ``owner``'s and ``in_status`` (running,
        or compensating); a child run's ``parent`` becomes due with it."""
        return await self.batch([
            (self.sql("UPDATE {p}runs SET status = ?, output_data = ?, error = ?, "
                      "completed_at = ?, updated_at = ?, owner = NULL, lease_expires_at = NULL, "
                      "wake_at = NULL, approval_required = NULL "
                      "WHERE run_id = ? AND owner = ? AND status = ?"),
             (status, output, error, now, now, run_id, owner, in_status)),
            self._event(run_id, *event, now),
            *(self._wake_parent(parent, now) if parent else ()),
        ], fence=True)

    def _wake_parent(self, parent: str, now: float) -> list:
        """Statements that make a parent waiting for its child due (as a signal does)."""
        return [(self.sql(_WAKE_PARENT), (now, now, parent)),
                *self._wake_ops(parent)]

    async def retry_run(self, run_id: str, owner: str, now: float, wake_at: float,
                        error: str, event: tuple) -> bool:
        return await self.batch([
            (self.sql("UPDATE {p}runs SET retry_count = retry_count + 1, status = 'retrying', "
                      "error = ?, wake_at = ?, updated_at = ?, owner = NULL, "
                      "lease_expires_at = NULL, deadline_at = NULL "
                      "WHERE run_id = ? AND owner = ? AND status = 'running'"),
             (error, wake_at, now, run_id, owner)),
            self._event(run_id, *event, now),
            *self._wake_ops(run_id),  # other workers learn when it is due
        ], fence=True)

    async def cancel_run(self, run_id: str, now: float) -> tuple:
        """Cancel the run and every unfinished run below it (children, their children),
        in one transaction. A run with registered compensations goes to
        ``compensating`` instead (a second cancel stops that too). Returns the ids
        cancelled or compensating, the run's first, and the parent to wake (or None);
        ``([], None)`` if the run had already finished or does not exist."""
        # owner and lease of a cancelled run stay until its executor has really stopped
        # (settle_run; meanwhile it keeps renewing the lease but can write nothing else):
        # a resume, or a compensation, must not overlap the step that may still run.
        to_compensate = self.sql(
            "UPDATE {p}runs SET error = ?, updated_at = ?, wake_at = NULL, "
            "approval_required = NULL, status = 'compensating' WHERE run_id = ? AND "
            f"{_NOT_TERMINAL} AND status <> 'compensating' AND EXISTS (SELECT 1 FROM "
            "{p}steps s WHERE s.run_id = ? AND s.kind = 'compensation' "
            "AND s.status = 'registered')")
        to_cancel = self.sql(
            "UPDATE {p}runs SET status = 'cancelled', completed_at = ?, updated_at = ?, "
            "wake_at = NULL, approval_required = NULL, debounce_key = NULL "
            f"WHERE run_id = ? AND {_NOT_TERMINAL}")  # (the key starts a new run again)
        for attempt in range(1, 4):  # a deadlock with a child finishing: again
            try:
                return await self._cancel_tree(run_id, now, to_compensate, to_cancel)
            except Exception as exc:
                if attempt == 3 or not self.driver.conflict(exc):
                    raise
                await asyncio.sleep(random.uniform(0, 0.01 * attempt))

    async def _cancel_tree(self, run_id: str, now: float, to_compensate: str,
                           to_cancel: str) -> tuple:
        async with self.transaction() as tx:
            # The run first, then level by level: each run is updated (locked) before
            # its children are read, so a child started meanwhile is either seen or
            # refused (its parent no longer running).
            stopped, level = [], [(run_id, None)]
            while level:
                for rid, status in level:
                    if status in _TERMINAL or (rid != run_id and status == "compensating"):
                        continue  # finished, or undoing its work already: let it
                    cause = {} if rid == run_id else {"with_ancestor": run_id}
                    if await tx.execute(to_compensate, ("cancelled", now, rid, rid)):
                        event = ("workflow_compensating", {"reason": "cancelled", **cause})
                    elif await tx.execute(to_cancel, (now, now, rid)):
                        event = ("workflow_cancelled", cause)
                    else:  # finished meanwhile
                        continue
                    stopped.append(rid)
                    await tx.execute(*self._event(rid, *event, now))
                    for op in self._wake_ops(rid):
                        await tx.execute(*op)
                if not stopped:
                    return [], None
                ids = [rid for rid, _ in level]
                level = await tx.fetch(self.sql(
                    "SELECT run_id, status FROM {p}runs WHERE parent_run_id IN "
                    f"({', '.join('?' * len(ids))}) ORDER BY created_at"), tuple(ids))
            rows = await tx.fetch(self.sql("SELECT parent_run_id FROM {p}runs WHERE run_id = ?"),
                                  (run_id,))
            parent = rows[0][0] if rows else None
            if parent is not None:
                for op in self._wake_parent(parent, now):
                    await tx.execute(*op)
            return stopped, parent

    # -- reads
    async def get_run(self, run_id: str) -> Optional[dict]:
        rows = await self.fetch(self.sql(f"SELECT {', '.join(_RUN_COLUMNS)} FROM {{p}}runs "
                                         "WHERE run_id = ?"), (run_id,))
        return dict(zip(_RUN_COLUMNS, rows[0])) if rows else None

    async def current_run(self, run_id: str) -> Optional[dict]:
        """The run; for one that continued as new, the last run of its chain."""
        row, seen = await self.get_run(run_id), {run_id}
        while row is not None:
            successor = _successor(row["status"], row["output_data"])
            if successor is None or successor in seen:
                return row
            seen.add(successor)
            row = await self.get_run(successor)
        return row

    @staticmethod
    def _run_filter(filters: dict) -> tuple:
        """The WHERE clause and parameters of list_runs/count_runs: equal columns, and
        ``prefix`` for the start of the run id (LIKE with its wildcards escaped, which
        SQLite compares ignoring case, and substr, which compares exactly)."""
        where, params = [], []
        for column, value in filters.items():
            if value is None:
                continue
            if column == "prefix":  # LIKE can use an index; substr is exact in SQLite too
                where.append("run_id LIKE ? ESCAPE '!' AND substr(run_id, 1, ?) = ?")
                params += [re.sub(r"([!%_])", r"!\1", value) + "%", len(value)]
            else:
                where.append(f"{column} = ?")
            params.append(value)
        return (f"WHERE {' AND '.join(where)} " if where else ""), params

    async def list_runs(self, filters: dict, limit: int, offset: int) -> list:
        clause, params = self._run_filter(filters)
        rows = await self.fetch(self.sql(f"SELECT {', '.join(_RUN_COLUMNS)} FROM {{p}}runs "
                                         f"{clause}ORDER BY created_at DESC, run_id "
                                         "LIMIT ? OFFSET ?"), (*params, limit, offset))
        return [dict(zip(_RUN_COLUMNS, row)) for row in rows]

    async def count_runs(self, filters: dict) -> int:
        clause, params = self._run_filter(filters)
        rows = await self.fetch(self.sql(f"SELECT COUNT(*) FROM {{p}}runs {clause}"), params)
        return int(rows[0][0])

    async def status_counts(self) -> dict:
        rows = await self.fetch(self.sql("SELECT status, COUNT(*) FROM {p}runs GROUP BY status"),
                                ())
        return {status: int(count) for status, count in rows}

    async def created_per_minute(self, start: float, minutes: int) -> list:
        """Runs created in each minute from ``start``, oldest first (the created_at index
        finds them; the database counts them)."""
        rows = await self.fetch(self.sql(
            "SELECT ROUND((created_at - ?) / 60 - 0.5), COUNT(*) FROM {p}runs "
            "WHERE created_at >= ? GROUP BY 1"), (start, start))
        counts = [0] * minutes
        for minute, count in rows:
            counts[min(max(int(minute), 0), minutes - 1)] += int(count)
        return counts

    async def get_run_by_key(self, key: str) -> Optional[dict]:
        rows = await self.fetch(self.sql(f"SELECT {', '.join(_RUN_COLUMNS)} FROM {{p}}runs "
                                         "WHERE idempotency_key = ?"), (key,))
        return dict(zip(_RUN_COLUMNS, rows[0])) if rows else None

    async def get_run_by_debounce(self, key: str) -> Optional[dict]:
        rows = await self.fetch(self.sql(f"SELECT {', '.join(_RUN_COLUMNS)} FROM {{p}}runs "
                                         "WHERE debounce_key = ?"), (key,))
        return dict(zip(_RUN_COLUMNS, rows[0])) if rows else None

    async def debounce_run(self, run_id: str, key: str, input_text: str, wake_at: float,
                           now: float) -> bool:
        """Give the debounced run not started yet the latest input and a later start."""
        return await self.batch([
            (self.sql("UPDATE {p}runs SET input_data = ?, wake_at = ?, updated_at = ? "
                      "WHERE run_id = ? AND debounce_key = ? AND status = 'pending'"),
             (input_text, wake_at, now, run_id, key)),
            self._event(run_id, "workflow_debounced", {"starts_at": wake_at}, now),
            *self._wake_ops(run_id),
        ], fence=True)

    async def pending_approvals(self) -> list:
        rows = await self.fetch(self.sql(f"SELECT {', '.join(_RUN_COLUMNS)} FROM {{p}}runs "
                                         "WHERE status IN ('running', 'paused') AND "
                                         "approval_required IS NOT NULL "
                                         "ORDER BY updated_at, run_id"))
        return [dict(zip(_RUN_COLUMNS, row)) for row in rows]

    async def latest_event(self, run_id: str, key: str) -> Optional[tuple]:
        """(value,) of the last ``set_event(key)`` step of the run, None if none."""
        rows = await self.fetch(self.sql(
            "SELECT output FROM {p}steps WHERE run_id = ? AND kind = 'event' AND name = ? "
            "AND status = 'completed' ORDER BY step DESC LIMIT 1"), (run_id, key))
        return (rows[0][0],) if rows else None

    async def load_steps(self, run_id: str, step: Optional[int] = None) -> dict:
        """The run's steps (or only ``step``) by number."""
        where, params = ("", (run_id,)) if step is None else (" AND step = ?", (run_id, step))
        rows = await self.fetch(self.sql(f"SELECT {', '.join(_STEP_COLUMNS)} FROM {{p}}steps "
                                         f"WHERE run_id = ?{where} ORDER BY step"), params)
        return {row[1]: dict(zip(_STEP_COLUMNS, row)) for row in rows}

    async def failure(self, run_id: str) -> dict:
        """The details its failure was recorded with (the data of its last
        workflow_failed or workflow_compensating event; {} if none)."""
        rows = await self.fetch(self.sql(
            "SELECT event_data FROM {p}events WHERE run_id = ? AND event_type IN "
            "('workflow_failed', 'workflow_compensating') ORDER BY id DESC LIMIT 1"), (run_id,))
        return (_loads(rows[0][0]) or {}) if rows else {}

    async def events(self, run_id: str, limit: int) -> list:
        return await self.fetch(self.sql("SELECT id, run_id, event_type, event_data, timestamp "
                                         "FROM {p}events WHERE run_id = ? ORDER BY id LIMIT ?"),
                                (run_id, limit))

    async def delete_finished_before(self, cutoff: float, names: Optional[list] = None,
                                     other_than: Optional[list] = None,
                                     batch: int = 200) -> int:
        """Delete the runs (with their steps, events and signals) whose whole family
        finished before ``cutoff``: the run, every ancestor (a parent awaiting its child
        would start it again), and, for a run that continued as new, each run of its
        chain up to the current one (the chain is found by its first id while it lives).
        Only runs of workflows in ``names``, or not in ``other_than``, are looked at.
        Works in batches of ``batch`` runs, each in a transaction of its own (no long
        lock); returns how many runs were deleted."""
        where, params = f"{_FINISHED} AND completed_at < ?", [cutoff]
        for column_names, negate in ((names, ""), (other_than, "NOT ")):
            if column_names:
                where += f" AND workflow_name {negate}IN ({', '.join('?' * len(column_names))})"
                params += column_names
        deleted, after, cursor = 0, "", ()
        while True:
            rows = await self.fetch(self.sql(
                f"SELECT run_id, completed_at FROM {{p}}runs WHERE {where}{after} ORDER BY "
                f"completed_at, run_id LIMIT {int(batch)}"), (*params, *cursor))
            if not rows:
                return deleted
            # The next batch: after this one's last run, in that order.
            after = " AND (completed_at > ? OR (completed_at = ? AND run_id > ?))"
            cursor = (rows[-1][1], rows[-1][1], rows[-1][0])
            known: dict = {}
            doomed = [run_id for run_id, _ in rows
                      if await self._family_finished(run_id, cutoff, known)]
            if doomed:
                deleted += await self._delete_runs(doomed)

    async def _family_finished(self, run_id: str, cutoff: float, known: dict) -> bool:
        """Whether the run, its ancestors and the rest of its chain finished before
        ``cutoff`` (a relative no longer stored is no obstacle)."""
        async def run(rid: str) -> Optional[tuple]:
            if rid not in known:
                rows = await self.fetch(self.sql(
                    "SELECT parent_run_id, status, completed_at, output_data FROM {p}runs "
                    "WHERE run_id = ?"), (rid,))
                known[rid] = rows[0] if rows else None
            return known[rid]

        def over(row: tuple) -> bool:
            return row[1] in _TERMINAL and row[2] is not None and row[2] < cutoff

        row = await run(run_id)
        if row is None or not over(row):
            return False
        ancestor, seen = row, {run_id}
        while ancestor[0] is not None and ancestor[0] not in seen:  # up: the parents
            seen.add(ancestor[0])
            ancestor = await run(ancestor[0])
            if ancestor is None:
                break
            if not over(ancestor):
                return False
        link = row
        while True:  # on: the chain, to its current run
            successor = _successor(link[1], link[3])
            if successor is None or successor in seen:
                break
            seen.add(successor)
            link = await run(successor)
            if link is None:
                break
            if not over(link):
                return False
        return True

    async def take_turn(self, task: str, every: float, now: float) -> bool:
        """Whether this process does the periodic ``task`` now: nobody did it in the last
        ``every`` seconds (of all the processes on the database, one wins)."""
        async with self.transaction() as tx:
            await tx.execute(self.sql(self.dialect.insert_new("{p}meta", ("name", "value"),
                                                              "name")), (task, "0" * 12))
            return await tx.execute(self.sql("UPDATE {p}meta SET value = ? WHERE name = ? AND "
                                             "value <= ?"),
                                    (f"{int(now):012d}", task, f"{int(now - every):012d}")) > 0

    async def _delete_runs(self, run_ids: list) -> int:
        marks = ", ".join("?" * len(run_ids))
        async with self.transaction() as tx:
            for table in ("events", "steps", "signals"):
                await tx.execute(self.sql(f"DELETE FROM {{p}}{table} WHERE run_id IN "
                                          f"({marks}) AND run_id IN (SELECT run_id FROM "
                                          f"{{p}}runs WHERE {_FINISHED})"), tuple(run_ids))
            return await tx.execute(self.sql(f"DELETE FROM {{p}}runs WHERE run_id IN ({marks}) "
                                             f"AND {_FINISHED}"), tuple(run_ids))

    # -- queues
    async def declare_queue(self, row: dict, replace: bool) -> None:
        """Store the queue's limits (``replace``: over those stored; else only if the
        queue is not stored yet)."""
        sql = (self.dialect.upsert("{p}queues", dict.fromkeys(row), ("name",)) if replace
               else self.dialect.insert_new("{p}queues", row, "name"))
        await self.batch([(self.sql(sql), tuple(row.values()))])

    async def list_queues(self, now: float, name: Optional[str] = None) -> list:
        """(name, concurrency, worker_concurrency, key_concurrency, rate_limit,
        rate_period, updated_at, waiting, running, started within the rate period)."""
        where, params = ("WHERE q.name = ? ", (name,)) if name is not None else ("", ())
        return await self.fetch(self.sql(
            "SELECT q.name, q.concurrency, q.worker_concurrency, q.key_concurrency, "
            "q.rate_limit, q.rate_period, q.updated_at, (SELECT COUNT(*) FROM {p}runs "
            "WHERE queue_name = q.name AND status = 'pending'), (SELECT COUNT(*) FROM "
            f"{{p}}runs WHERE queue_name = q.name AND {_HOLDING}), CASE WHEN "
            "q.rate_period IS NULL THEN 0 ELSE (SELECT COUNT(*) FROM {p}runs WHERE "
            "queue_name = q.name AND dequeued_at > ? - q.rate_period) END "
            f"FROM {{p}}queues q {where}ORDER BY q.name"), (time.time(), now, *params))

    # -- schedules (every write bumps ``revision``: writes based on a read are fenced by it)
    async def add_schedule(self, schedule: dict) -> dict:
        """Store the schedule unless one has its id; return the one stored under it."""
        await self.batch([
            (self.sql(self.dialect.insert_new("{p}schedules", schedule, "schedule_id")),
             tuple(schedule.values())),
            *self._wake_ops(schedule["schedule_id"]),
        ])
        return await self.get_schedule(schedule["schedule_id"])

    async def get_schedule(self, schedule_id: str) -> Optional[dict]:
        rows = await self.list_schedules(schedule_id)
        return rows[0] if rows else None

    async def list_schedules(self, schedule_id: Optional[str] = None) -> list:
        where, params = (("WHERE schedule_id = ? ", (schedule_id,)) if schedule_id is not None
                         else ("", ()))
        rows = await self.fetch(self.sql(
            f"SELECT {', '.join(_SCHEDULE_COLUMNS)} FROM {{p}}schedules {where}"
            "ORDER BY created_at, schedule_id"), params)
        return [dict(zip(_SCHEDULE_COLUMNS, row)) for row in rows]

    async def change_schedule(self, schedule: dict, changes: dict, now: float) -> bool:
        """Apply ``changes`` if the schedule is still the revision read."""
        sets = "".join(f"{column} = ?, " for column in changes)
        return await self.batch([
            (self.sql(f"UPDATE {{p}}schedules SET {sets}revision = revision + 1, "
                      "updated_at = ? WHERE schedule_id = ? AND revision = ?"),
             (*changes.values(), now, schedule["schedule_id"], schedule["revision"])),
            *self._wake_ops(schedule["schedule_id"]),
        ], fence=True)

    async def delete_schedule(self, schedule_id: str) -> bool:
        return await self.batch([(self.sql("DELETE FROM {p}schedules WHERE schedule_id = ?"),
                                  (schedule_id,))], fence=True)

    async def due_schedules(self, now: float, names: list, limit: int,
                            after: Optional[dict] = None) -> list:
        """The active schedules of these workflows that are due, earliest first; with
        ``after`` (the last of the batch before), those that come after it."""
        if not names:
            return []
        where, params = "", ()
        if after is not None:
            where = "AND (next_due_at > ? OR (next_due_at = ? AND schedule_id > ?)) "
            params = (after["next_due_at"], after["next_due_at"], after["schedule_id"])
        rows = await self.fetch(self.sql(
            f"SELECT {', '.join(_SCHEDULE_COLUMNS)} FROM {{p}}schedules WHERE paused = 0 "
            f"AND next_due_at <= ? AND workflow_name IN ({', '.join('?' * len(names))}) "
            f"{where}ORDER BY next_due_at, schedule_id LIMIT ?"), (now, *names, *params, limit))
        return [dict(zip(_SCHEDULE_COLUMNS, row)) for row in rows]

    async def fire_schedule(self, schedule: dict, now: float, next_due: float,
                            runs: list) -> bool:
        """Move the schedule on to ``next_due`` and insert the runs of the due times it
        passed, in one transaction fenced by the revision read: of several workers
        that read the same due schedule, one starts its runs and the others nothing."""
        ops = [(self.sql("UPDATE {p}schedules SET next_due_at = ?, last_due_at = ?, "
                         "last_run_id = ?, revision = revision + 1, updated_at = ? "
                         "WHERE schedule_id = ? AND revision = ? AND paused = 0"),
                (next_due, runs[-1][0]["scheduled_for"], runs[-1][0]["run_id"], now,
                 schedule["schedule_id"], schedule["revision"]))]
        for run, event in runs:
            ops += [self._insert(run), self._event(run["run_id"], "workflow_created", event, now),
                    *self._wake_ops(run["run_id"])]
        return await self.batch(ops, fence=True)


def _resolve(group: list, results: list) -> None:
    """Hand each queued write (an entry whose last item is its caller's future) its
    result or error."""
    for entry, result in zip(group, results):
        future = entry[-1]
        if future.done():  # its caller was cancelled; the write stands or not alike
            continue
        if isinstance(result, BaseException):
            future.set_exception(result if isinstance(result, Exception) else
                                 TinyWorkflowError(f"write interrupted: {result!r}"))
        else:
            future.set_result(result)


class _GroupCommit:
    """Writes queued during one turn of the event loop, committed together once it is
    over (group commit: one transaction, one fsync or round trip, for many runs). A
    store's ``commit()`` takes the group (``take``) and hands each write its result
    (``_resolve``); each is still fenced by its own run's owner token."""

    def __init__(self, commit: Callable[[], None]):
        self.queued: list = []  # entries (..., future), in the order they came
        self._commit = commit

    def add(self, *entry: Any) -> asyncio.Future:
        """Queue a write (``entry``): a future of its result."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.queued.append((*entry, future))
        if len(self.queued) == 1:  # first of a group: commit once this turn is over
            loop.call_soon(self._commit)
        return future

    def take(self) -> list:
        group, self.queued = self.queued, []
        return group

    def fail(self, message: str) -> None:
        """Fail every queued write (the store is closing)."""
        group = self.take()
        _resolve(group, [TinyWorkflowError(message)] * len(group))


# ---- the store: SQLite ------------------------------------------------------------------


_INLINE_COMMIT_LIMIT = 0.002  # seconds a write batch may hold the event loop, on average


class _SQLiteStore(_Store):
    """SQLite through aiosqlite: WAL, a busy timeout, durable (FULL) commits unless the
    URL relaxes them. One connection per client, used by one task at a time (a lock).

    Reads and general transactions run on aiosqlite's thread. Write batches -- one
    step, one state change each -- are short and ours. They are committed in groups:
    every batch queued during one turn of the event loop shares one transaction and
    one fsync (group commit), which is what lets many concurrent runs go fast. A group
    commits on the event loop itself, since a thread round trip costs about as much
    as the commit. The loop never waits for another writer, though: SQLite's own busy
    handler is off, a group that finds the database locked moves to the thread, and
    only there do we wait for locks (``retry_busy``). Nor for a slow disk: while
    commits take longer than ``_INLINE_COMMIT_LIMIT`` on average, groups commit on the
    thread too."""

    def __init__(self, path: str, options: dict, prefix: str):
        super().__init__(_SQLITE, prefix)
        self.path, self.options = path, options
        self._absolute = os.path.abspath(path)  # the same file after a chdir (twin)
        self.synchronous = options.get("synchronous", "full").upper()
        self.driver = _SQLiteDriver(path, float(options.get("timeout", 15)))
        self.lock: Optional[asyncio.Lock] = None
        self._commit_seconds = 0.0  # moving average of a write batch's duration
        self._wal = False  # inline writes need WAL: without it COMMIT waits for readers
        self._pending = _GroupCommit(self._flush_soon)  # (ops, fence) of write batches
        self.flusher: Optional[asyncio.Task] = None
        # The same file under any name is one database; each in-memory one is its own.
        self.key = (f"sqlite:{os.path.realpath(path)}" if path != ":memory:"
                    else f"sqlite:memory:{id(self)}")

    async def connect(self) -> None:
        await self.driver.open()
        self.lock = asyncio.Lock()
        try:
            self._wal = await self.driver.call(self._configure_sync)
        except BaseException:
            await self.close()
            raise

    def twin(self) -> Optional["_SQLiteStore"]:
        return None if self.path == ":memory:" else _SQLiteStore(self._absolute, self.options,
                                                                  self.prefix)

    def _configure_sync(self) -> bool:
        db, wal = self.driver.db, False
        if self.path != ":memory:":
            mode = self.driver.retry_busy(db.execute, "PRAGMA journal_mode=WAL").fetchone()[0]
            wal = mode.lower() == "wal"
            if not wal:
                _log.warning("%s is not in WAL mode (%s); writes will not run on the event "
                             "loop", self.path, mode)
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        return wal

    async def close(self) -> None:
        if self.flusher is not None:
            await asyncio.wait({self.flusher})
        self._pending.fail("the database was closed before this write was committed")
        await self.driver.close()

    def _begin_sync(self) -> None:
        self.driver.retry_busy(self.driver.db.execute, "BEGIN IMMEDIATE")

    def _rollback_sync(self) -> None:
        if self.driver.db.in_transaction:
            self.driver.db.execute("ROLLBACK")

    def _group_sync(self, group: list, inline: bool = False) -> Optional[list]:
        """Commit queued batches in one transaction; a result (True, False when the
        fence found the run no longer ours, or the exception) per batch. None when
        ``inline`` and another connection holds the lock."""
        db, started = self.driver.db, time.perf_counter()
        if not inline:
            self._begin_sync()  # a failure here applied nothing: the whole group gets it
        else:
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if _is_busy(exc):
                    return None
                raise
        try:
            results = [self._apply(db, ops, fence) for ops, fence, _ in group]
            db.execute("COMMIT")
        except Exception:
            self._rollback_sync()
            if inline:
                return None  # nothing applied: redo on the thread, which may wait
            if len(group) == 1:
                raise
            # One batch failed: find it by committing each on its own.
            return [self._one_sync(item) for item in group]
        except BaseException:
            self._rollback_sync()
            raise
        finally:
            self._commit_seconds += (time.perf_counter() - started - self._commit_seconds) / 8
        return results

    def _apply(self, db: sqlite3.Connection, ops: list, fence: bool) -> bool:
        # A fence that matches no row has written nothing: skip the rest of the batch.
        for i, (sql, params) in enumerate(ops):
            if db.execute(sql, params).rowcount == 0 and fence and i == 0:
                return False
        return True

    def _one_sync(self, item: tuple):
        try:
            return self._group_sync([item])[0]
        except Exception as exc:
            return exc

    def _check_open(self) -> None:
        if self.driver.connection is None:
            raise TinyWorkflowError("the database connection is closed")

    async def fetch(self, sql: str, params: tuple = ()) -> list:
        self._check_open()
        async with self.lock:
            return await self.driver.fetch(None, sql, params)

    async def batch(self, ops: list, fence: bool = False) -> bool:
        self._check_open()
        loop = asyncio.get_running_loop()
        if (not self._pending.queued and not getattr(loop, "_ready", True)
                and self._inline_ok()):
            # Nothing else is ready to run this turn, so nobody could join a group:
            # commit now. (``_ready`` is asyncio's run queue; a loop without it groups.)
            result = self._group_sync([(ops, fence, None)], inline=True)
            if result is not None:
                return result[0]
        return await self._pending.add(ops, fence)

    def _inline_ok(self) -> bool:
        return (self._wal and not self.lock.locked()
                and self._commit_seconds < _INLINE_COMMIT_LIMIT)

    def _flush_soon(self) -> None:
        if not self._pending.queued:
            return
        if self.driver.connection is None:
            self._pending.fail("the database connection is closed")
            return
        if not self._inline_ok():
            if self.flusher is None or self.flusher.done():
                self.flusher = asyncio.ensure_future(self._flush())
            return
        group = self._pending.take()
        try:
            results = self._group_sync(group, inline=True)
        except BaseException as exc:
            results = [exc] * len(group)
        if results is None:  # locked by another connection: wait for it on the thread
            self._pending.queued[:0] = group
            self.flusher = asyncio.ensure_future(self._flush())
            return
        _resolve(group, results)

    async def _flush(self) -> None:
        async with self.lock:
            while self._pending.queued:
                group = self._pending.take()
                try:
                    results = await self.driver.call(self._group_sync, group)
                except Exception as exc:  # the whole group failed (say, locked too long)
                    results = [exc] * len(group)
                except BaseException:
                    group += self._pending.take()
                    _resolve(group, [TinyWorkflowError("write interrupted")] * len(group))
                    raise
                _resolve(group, results)

    @contextlib.asynccontextmanager
    async def transaction(self):
        self._check_open()
        async with self.lock:
            try:
                await self.driver.call(self._begin_sync)
                yield _Transaction(self.driver)
                await self.driver.call(self.driver.db.execute, "COMMIT")
            except BaseException:
                await self.driver.call(self._rollback_sync)
                raise


# ---- the store: database servers --------------------------------------------------------


class _ServerStore(_Store):
    """A database server through a driver and a connection pool (PostgreSQL, MySQL).

    Write batches run in a transaction each; the server's own group commit serves
    concurrent runs. A batch that fails before its COMMIT was sent -- a connection
    killed by the server, a deadlock -- has applied nothing and runs again on another
    connection; a connection lost during the COMMIT itself leaves the outcome unknown
    and raises (``_write``, the one place that decides)."""

    _WRITE_ATTEMPTS = 4

    def __init__(self, dialect: _Dialect, driver: Any, options: dict, prefix: str, url: str):
        super().__init__(dialect, prefix)
        self.driver, self.options, self.url = driver, options, _redact(url)
        self.key = f"{self.url.partition('?')[0]}#{prefix}"
        self._pool: Optional[_Pool] = None

    def twin(self) -> "_ServerStore":
        return type(self)(self.driver.target, self.options, self.prefix, self.url)

    # -- primitives
    async def connect(self) -> None:
        self._pool = _Pool(self.driver, self.options)
        async with self._pool.connection():  # fail now if the server cannot be reached
            pass

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def _connection(self):
        if self._pool is None:
            raise TinyWorkflowError("the database connection is closed")
        return self._pool.connection()

    async def fetch(self, sql: str, params: tuple = ()) -> list:
        for attempt in range(1, self._WRITE_ATTEMPTS + 1):  # reads are safe to repeat
            try:
                async with self._connection() as conn:
                    return await self.driver.fetch(conn, sql, params)
            except Exception as exc:
                if attempt == self._WRITE_ATTEMPTS or not self.driver.lost(exc):
                    raise
                _log.info("database connection lost during a read (%s); reading again", exc)

    async def batch(self, ops: list, fence: bool = False) -> bool:
        self.paths["transaction"] += 1

        async def write(conn, sent: list) -> bool:
            await self.driver.execute(conn, "BEGIN", ())
            try:
                for i, (sql, params) in enumerate(ops):
                    if await self.driver.execute(conn, sql, params) == 0 and fence and i == 0:
                        await self.driver.execute(conn, "ROLLBACK", ())
                        return False
                sent.append("COMMIT")
                await self.driver.execute(conn, "COMMIT", ())
                return True
            except BaseException:
                if not sent and not self.driver.is_closed(conn):
                    with contextlib.suppress(Exception):
                        await self.driver.execute(conn, "ROLLBACK", ())
                raise
        return await self._write(write)

    async def _write(self, write: Callable[[Any, list], Awaitable]) -> Any:
        """``await write(conn, sent)`` on a pooled connection, again after a failure if
        it certainly applied nothing (a connection lost before the commit was sent, a
        deadlock), at most ``_WRITE_ATTEMPTS`` times; ``write`` appends to ``sent`` once
        what it sends may take effect. A connection lost after that leaves the outcome
        unknown: an error that says so."""
        for attempt in range(1, self._WRITE_ATTEMPTS + 1):
            sent: list = []
            try:
                async with self._connection() as conn:
                    return await write(conn, sent)
            except Exception as exc:
                lost = self.driver.lost(exc)
                if sent and lost and not self.driver.unsent(exc):
                    raise TinyWorkflowError(f"the database connection was lost during a "
                                            f"write; it may or may not have been applied: "
                                            f"{exc}") from exc
                if attempt == self._WRITE_ATTEMPTS or not (lost or self.driver.conflict(exc)):
                    raise
                _log.info("write not applied (%s); writing again", exc)
            await asyncio.sleep(random.uniform(0, 0.01 * attempt))

    @contextlib.asynccontextmanager
    async def transaction(self):
        self.paths["transaction"] += 1
        async with self._connection() as conn:
            await self.driver.execute(conn, "BEGIN", ())
            try:
                yield _Transaction(self.driver, conn)
            except BaseException:
                if not self.driver.is_closed(conn):
                    with contextlib.suppress(Exception):
                        await self.driver.execute(conn, "ROLLBACK", ())
                raise
            await self.driver.execute(conn, "COMMIT", ())


# ---- the store: PostgreSQL --------------------------------------------------------------


_NOTIFY = "SELECT pg_notify($1, $2)"


def _schema_lock_key(name: str) -> int:
    """A 63-bit number naming the schema lock of a database and table prefix."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1


class _PostgresStore(_ServerStore):
    """PostgreSQL through asyncpg. Idle workers of other processes and machines are
    woken by NOTIFY, sent in the transaction that makes a run due (delivered on
    commit); each worker keeps one extra connection that LISTENs.

    Which path a write takes (``paths`` counts them; tests/test_write_paths.py pins
    the hot ones), decided here and nowhere else:

    - grouped: a step of a running run (``record_step``) and the end of a run that
      has no parent (``finish_run``) join the others of this turn of the event loop
      in one statement (``_grouped``);
    - statement: any other ``batch`` whose statements ``_compile`` knows becomes one
      statement (data-modifying CTEs, fenced by the first);
    - transaction: the rest, and ``transaction()`` (BEGIN, each statement, COMMIT:
      a round trip each)."""

    def __init__(self, target: dict, options: dict, prefix: str, url: str):
        # (The driver names the database in its messages: without the password.)
        super().__init__(_POSTGRES, _PostgresDriver(target, options, _redact(url)), options,
                         prefix, url)
        self.channel = f"{prefix.lower()}wake"
        self._compiled: dict = {}  # batch statements -> one statement
        # Steps, and finishes, of concurrent runs: one statement each per turn of the loop.
        self._queued = {kind: _GroupCommit(functools.partial(self._write_group_soon, kind))
                        for kind in ("steps", "finishes")}
        self._writing: set = set()  # group writes under way
        self._listening = 0  # workers of this store
        self._listener: Optional[asyncio.Task] = None
        self._heard: Callable[[str], None] = lambda run_id: None

    async def connect(self) -> None:
        self.driver.load()
        await super().connect()

    async def _lock_schema(self, tx) -> None:
        # Before anything else, even CREATE TABLE IF NOT EXISTS (which races itself).
        await tx.execute("SELECT pg_advisory_xact_lock($1)",
                         (_schema_lock_key(f"tinyworkflow schema {self.prefix}"),))

    # -- waking workers elsewhere
    def _wake_ops(self, run_id: str) -> list:
        return [(_NOTIFY, (self.channel, run_id))]

    # -- group commit: the steps, and the finishes, of concurrent runs
    def record_step(self, run_id: str, owner: str, now: float, step: dict,
                    event: tuple, status: str = "running") -> Awaitable[bool]:
        if status != "running":  # a compensation: rare, a batch of its own
            return super().record_step(run_id, owner, now, step, event, status)
        return self._grouped("steps", (run_id, owner, now, step, event))

    async def finish_run(self, run_id: str, owner: str, now: float, status: str,
                         output: Optional[str], error: Optional[str], event: tuple,
                         parent: Optional[str] = None, in_status: str = "running") -> bool:
        if parent is not None or in_status != "running":  # a child's, a saga's: on its own
            return await super().finish_run(run_id, owner, now, status, output, error, event,
                                            parent, in_status)
        return await self._grouped("finishes", (run_id, owner, now, status, output, error,
                                                event))

    def _grouped(self, kind: str, item: tuple) -> Awaitable[bool]:
        """Writes of one kind queued during one turn of the event loop are done by one
        statement (one commit for many runs), as SQLite's group commit does; each is
        still fenced by its own run's owner token."""
        return self._queued[kind].add(item)

    def _write_group_soon(self, kind: str) -> None:
        writing = asyncio.ensure_future(self._write_group(kind, self._queued[kind].take()))
        self._writing.add(writing)
        writing.add_done_callback(self._writing.discard)

    async def _write_group(self, kind: str, group: list) -> None:
        if kind == "steps":  # (run_id, owner, now, step, (event_type, data))
            single = super().record_step
            keys = [(item[0], item[3]["step"]) for item, _ in group]
            rows = [(*_step_values(step), owner, event_type, _dumps_for_display(data))
                    for (run_id, owner, now, step, (event_type, data)), _ in group]
        else:  # (run_id, owner, now, status, output, error, (event_type, data))
            single = super().finish_run
            keys = [(item[0],) for item, _ in group]
            rows = [(run_id, owner, status, output, error, now, event_type, _dumps_for_display(data))
                    for (run_id, owner, now, status, output, error, (event_type, data)), _
                    in group]
        one_by_one = len(group) == 1 or len(set(keys)) < len(keys)  # a key twice: apart
        if not one_by_one:
            self.paths[f"grouped {kind}"] += 1
            try:
                written = set(await self._write_one(
                    self._group_sql(kind), [list(column) for column in zip(*rows)], fetch=True))
                results = [key in written for key in keys]
            except TinyWorkflowError as exc:  # the outcome is unknown: say so to every one
                results = [exc] * len(group)
            except Exception:  # a value the server refused: find it, one by one
                one_by_one = True
        if one_by_one:
            results = await asyncio.gather(*(single(*item) for item, _ in group),
                                           return_exceptions=True)
        _resolve(group, results)

    def _group_sql(self, kind: str) -> str:
        """One statement for many writes, taking one array per column; it returns the
        keys of those whose run was still the writer's."""
        statement = self._compiled.get(kind)
        if statement is not None:
            return statement
        if kind == "steps":
            columns = {**_STEP_TYPES, "owner": "key", "event_type": "key", "event_data": "text"}
            rest = [c for c in _STEP_COLUMNS if c not in ("run_id", "step")]
            write = (
                f"s AS (INSERT INTO {{p}}steps ({', '.join(_STEP_COLUMNS)}) "
                f"SELECT {', '.join('v.' + c for c in _STEP_COLUMNS)} FROM v JOIN {{p}}runs r "
                "ON r.run_id = v.run_id AND r.owner = v.owner AND r.status = 'running' "
                "FOR SHARE OF r ON CONFLICT (run_id, step) DO UPDATE SET "
                f"{', '.join(f'{c} = excluded.{c}' for c in rest)} RETURNING run_id, step)")
            joined, now, result = "s.run_id = v.run_id AND s.step = v.step", "completed_at", \
                "run_id, step"
        else:
            columns = {"run_id": "key", "owner": "key", "status": "key", "output_data": "text",
                       "error": "text", "now": "float", "event_type": "key",
                       "event_data": "text"}
            write = ("s AS (UPDATE {p}runs r SET status = v.status, output_data = "
                     "v.output_data, error = v.error, completed_at = v.now, updated_at = v.now, "
                     "owner = NULL, lease_expires_at = NULL, wake_at = NULL, "
                     "approval_required = NULL FROM v WHERE r.run_id = v.run_id "
                     "AND r.owner = v.owner AND r.status = 'running' RETURNING r.run_id)")
            joined, now, result = "s.run_id = v.run_id", "now", "run_id"
        arrays = ", ".join(f"CAST(${i} AS {{{type_}}}[])"
                           for i, type_ in enumerate(columns.values(), 1))
        statement = self.sql(
            f"WITH v AS (SELECT * FROM unnest({arrays}) WITH ORDINALITY "
            f"AS v({', '.join(columns)}, ord)), {write}, "
            f"e AS (INSERT INTO {{p}}events ({_EVENT_COLUMNS}) SELECT v.run_id, v.event_type, "
            f"v.event_data, v.{now} FROM v JOIN s ON {joined} ORDER BY v.ord) "
            f"SELECT {result} FROM s")
        self._compiled[kind] = statement
        return statement

    # -- a write batch in one round trip
    async def batch(self, ops: list, fence: bool = False) -> bool:
        """The statements of a batch as one: data-modifying CTEs, run by the server as
        one implicit transaction, where BEGIN, each statement and COMMIT would be a
        round trip each. Fenced, the later statements act only if the first touched a
        row. A connection lost before the statement was sent is retried; one lost after
        leaves the outcome unknown and raises."""
        statement = self._compiled.get((tuple(sql for sql, _ in ops), fence))
        if statement is None:
            statement = self._compile([sql for sql, _ in ops], fence)
        if not statement:
            return await super().batch(ops, fence)
        self.paths["statement"] += 1
        count = await self._write_one(statement, [p for _, op_params in ops for p in op_params])
        return count > 0 or not fence

    async def _write_one(self, statement: str, params: list, fetch: bool = False) -> Any:
        """Run one writing statement (its own transaction); the first value it returns,
        or with ``fetch`` every row."""
        async def write(conn, sent: list) -> Any:
            sent.append(statement)
            if fetch:
                return await self.driver.fetch(conn, statement, params)
            return await self.driver.fetchval(conn, statement, params)
        return await self._write(write)

    def _compile(self, sqls: list, fence: bool) -> str:
        """One statement doing what the batch's statements do, or "" if some statement
        is not of a kind this knows (then the batch runs as a transaction)."""
        ctes, offset, event = [], 0, self.sql(_EVENT_INSERT)
        events: list = []  # the rows of consecutive events: one INSERT keeps their order
        for i, sql in enumerate(sqls):
            count = len(re.findall(r"\$\d+", sql))
            shifted = re.sub(r"\$(\d+)", lambda m: f"${int(m.group(1)) + offset}", sql)
            marks = [f"${offset + n}" for n in range(1, count + 1)]
            if sql == event and i > 0:
                events.append(marks)
                if i + 1 < len(sqls) and sqls[i + 1] == event:
                    offset += count
                    continue
                if fence:  # typed: a bind in a SELECT list has no type
                    rows = " UNION ALL ".join(
                        "SELECT " + ", ".join(f"CAST({mark} AS {self.dialect.types[kind]})"
                                              for mark, kind in zip(row, ("key", "key", "text",
                                                                          "float")))
                        + " FROM b0" for row in events)
                else:
                    rows = "VALUES " + ", ".join(f"({', '.join(row)})" for row in events)
                ctes.append(self.sql(f"b{i} AS (INSERT INTO {{p}}events ({_EVENT_COLUMNS}) "
                                     f"{rows})"))
                events = []
            elif i == 0 and sql.startswith(("INSERT", "UPDATE", "DELETE")):
                ctes.append(f"b0 AS ({shifted} RETURNING 1)")
            elif sql == _NOTIFY:
                ctes.append(f"b{i} AS (SELECT pg_notify({', '.join(marks)})"
                            f"{' FROM b0' if fence else ''})")
            elif i > 0 and not fence and sql.startswith("INSERT"):  # fork_run's steps
                ctes.append(f"b{i} AS ({shifted})")
            elif i > 0 and fence and self._column_types(sql):  # a row if the first wrote one
                casts = ", ".join(f"CAST({mark} AS {self.dialect.types[kind]})"
                                  for mark, kind in zip(marks, self._column_types(sql)))
                ctes.append(f"b{i} AS ({shifted[:shifted.index(' VALUES ')]} "
                            f"SELECT {casts} FROM b0)")
            elif i > 0 and sql == self.sql(_WAKE_PARENT):  # a child's end: its parent due
                ctes.append(f"b{i} AS ({shifted}"
                            f"{' AND EXISTS (SELECT 1 FROM b0)' if fence else ''})")
            else:
                self._compiled[(tuple(sqls), fence)] = ""
                return ""
            offset += count
        # A SELECT in a WITH runs only if referenced (data-modifying ones always run).
        notified = [f"(SELECT count(*) FROM b{i})" for i, s in enumerate(sqls) if s == _NOTIFY]
        statement = (f"WITH {', '.join(ctes)} SELECT (SELECT count(*) FROM b0)"
                     + "".join(f" + 0 * {n}" for n in notified))
        self._compiled[(tuple(sqls), fence)] = statement
        return statement

    def _column_types(self, sql: str) -> Optional[list]:
        """The types of an ``INSERT ... VALUES`` statement's columns, if _COLUMN_TYPES
        knows its table and every column."""
        found = re.fullmatch(rf"INSERT INTO {re.escape(self.prefix)}(\w+) \(([\w, ]+)\) "
                             r"VALUES \([$\d, ]+\)", sql)
        table = _COLUMN_TYPES.get(found.group(1)) if found else None
        columns = found.group(2).split(", ") if table else ()
        return [table[c] for c in columns] if table and all(c in table for c in columns) \
            else None

    async def listen(self, heard: Callable[[str], None]) -> None:
        self._heard = heard
        self._listening += 1
        if self._listener is None:
            self._listener = asyncio.ensure_future(self._listen())

    async def close(self) -> None:
        await asyncio.sleep(0)  # steps queued this turn start their write
        while self._writing:
            await asyncio.wait(set(self._writing))
        await super().close()

    async def unlisten(self) -> None:
        self._listening -= 1
        if not self._listening and self._listener is not None:
            listener, self._listener = self._listener, None
            listener.cancel()
            await asyncio.wait({listener})

    async def _until_lost(self, lost: asyncio.Event, conn) -> bool:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(lost.wait(), self._LISTEN_PING)
            return True
        try:
            await self.driver.ping(conn)
        except (Exception, asyncio.TimeoutError):
            return True
        return False

    _LISTEN_PING = 30.0

    async def _listen(self) -> None:
        """Keep one connection LISTENing; when it dies, open another (meanwhile the
        workers poll) and wake them, since notifications may have been missed."""
        pause = 0.1
        while True:
            conn, lost = None, asyncio.Event()
            try:
                conn = await self.driver.open()
                await self.driver.listen(conn, self.channel, lambda run_id: self._heard(run_id),
                                         lost)
                pause = 0.1
                self._heard("")
                # A connection dropped without a word (a failover, a NAT timeout) is
                # found by a ping now and then.
                while not await self._until_lost(lost, conn):
                    pass
                _log.info("the LISTEN connection to %s was lost; reconnecting", self.url)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.warning("cannot LISTEN on %s (%s); workers poll until it works again",
                             self.url, exc)
            finally:
                if conn is not None:
                    self.driver.terminate(conn)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)


# ---- the store: MySQL -------------------------------------------------------------------


class _MySQLStore(_ServerStore):
    """MySQL 8 / MariaDB 10.6+ through aiomysql. No LISTEN/NOTIFY: workers of other
    processes find new runs when they poll."""

    def __init__(self, target: dict, options: dict, prefix: str, url: str):
        super().__init__(_MYSQL, _MySQLDriver(target, options, _redact(url)), options, prefix,
                         url)
        lock = f"tinyworkflow:{target['db']}:{prefix}"
        self._lock_name = lock if len(lock) <= 64 else lock[:48] + hashlib.sha256(
            lock.encode()).hexdigest()[:16]

    async def connect(self) -> None:
        self.driver.load()
        await super().connect()
        rows = await self.fetch("SELECT @@max_allowed_packet")
        self.max_value = int(rows[0][0]) - 65536  # room for the rest of the statement

    async def _lock_schema(self, tx) -> None:
        # DDL commits by itself in MySQL, so the lock is a named one, held by the session.
        rows = await tx.fetch("SELECT GET_LOCK(%s, %s)", (self._lock_name, 300))
        if not rows or rows[0][0] != 1:
            raise TinyWorkflowError("timed out waiting for another process to finish "
                                    "creating or migrating the tables")

    async def _unlock_schema(self, tx) -> None:
        with contextlib.suppress(Exception):
            await tx.fetch("SELECT RELEASE_LOCK(%s)", (self._lock_name,))

    async def _ddl(self, tx, statement: str) -> None:
        if statement.startswith("CREATE TABLE IF NOT EXISTS "):  # spare the warning
            if await tx.fetch("SELECT 1 FROM information_schema.tables WHERE table_schema = "
                              "DATABASE() AND table_name = %s", (statement.split()[5],)):
                return
        try:
            await tx.execute(statement)
        except Exception as exc:
            if not self.driver.exists(exc):
                raise
            _log.info("finishing a migration that was interrupted: %s", exc)


def _open_store(url: str, prefix: str) -> _Store:
    backend, target, options = _parse_url(url)
    if backend == "sqlite":
        return _SQLiteStore(target, options, prefix)
    if backend == "postgresql":
        return _PostgresStore(target, options, prefix, url)
    return _MySQLStore(target, options, prefix, url)


# ---- registry and decorators ------------------------------------------------------------


def _json_form(codec: "Codec", value: Any, kind: Any, what: str, key: str,
               refused: SerializationError) -> Any:
    """A value given in its JSON form (as the command line and the web page give it:
    "1.25" for a Decimal, "2026-01-01" for a datetime) where the value itself is
    declared: taken if it reads as that type with nothing left out (a key it does not
    have, an item too many), and stored as that type stores it; else the refusal
    stands."""
    try:
        read = _TYPED.decode(_plain_json(value), kind)
        data = _TYPED.encode(read, kind, key)
        shapes = _shapes(kind)
        if shapes is not None and _norm(kind) is _decimal():
            shapes = (str, int, float)  # a number, as typed
        if (_TYPED.decode(data, kind) == read
                and (shapes is None or type(value) in shapes)
                and (not isinstance(value, dict) or value.keys() <= data.keys())
                and (not isinstance(value, list) or len(value) == len(data))):
            return _to_data(codec, read, kind, what, key)  # stored in its own form
    except Exception:
        pass
    raise refused from None


@dataclasses.dataclass(frozen=True)
class _WorkflowDef:
    name: str
    fn: Callable
    retry_policy: RetryPolicy
    timeout: Optional[float]
    retention_days: Optional[float] = None

    @functools.cached_property
    def returns(self) -> Any:
        """The declared type of the workflow's result (Any: none). Resolved on first
        use, when the types it names are defined."""
        return _returns(self.fn)

    @functools.cached_property
    def parameters(self) -> Optional[dict]:
        """The workflow's parameters after its context: name -> (declared type,
        default or ``inspect.Parameter.empty`` if required), and ``"**"`` -> (the type
        of any other keyword, None) when it takes them; None when it takes the context
        only (its input is then ``ctx.input_data``)."""
        listed = list(inspect.signature(self.fn).parameters.values())[1:]
        if not listed:
            return None
        hints = _hints(self.fn)
        return {"**" if p.kind is p.VAR_KEYWORD else p.name:
                (hints.get(p.name, Any), None if p.kind is p.VAR_KEYWORD else p.default)
                for p in listed}

    def declared(self, key: str) -> Any:
        """The declared type of the input's ``key``."""
        return self.parameters.get(key, self.parameters.get("**", (Any,)))[0]

    def bind(self, input_data: Any) -> dict:
        """``input_data`` as this workflow's keyword arguments: a dict naming every
        required parameter and no unknown one (else ValueError)."""
        parameters = self.parameters or {}
        if input_data is None:
            input_data = {}
        if not isinstance(input_data, dict):
            raise ValueError(f"workflow {self.name!r} takes parameters "
                             f"({', '.join(n for n in parameters if n != '**')}): its input "
                             f"is a dict of them, got {type(input_data).__name__} "
                             f"{_shown(input_data)}")
        missing = [n for n, (_, default) in parameters.items()
                   if default is inspect.Parameter.empty and n not in input_data]
        unknown = [] if "**" in parameters else [k for k in input_data if k not in parameters]
        if missing or unknown:
            raise ValueError(f"workflow {self.name!r} "
                             + "; ".join(what for what in (
                                 missing and "needs " + ", ".join(map(repr, missing)),
                                 unknown and "takes no parameter "
                                 + ", ".join(map(repr, unknown))) if what)
                             + f" (its parameters: {_signature(self.fn)})")
        return input_data

    def input(self, codec: "Codec", input_data: Any, what: str) -> Any:
        """The JSON data to store as a run's input: each parameter's value encoded by
        its declared type (a ValueError if it does not bind), else as it is. A value
        given in its JSON form -- as the command line and the web page give it: "1.25"
        for a Decimal -- is read as the declared type first."""
        if self.parameters is None:
            return _to_data(codec, input_data, Any, what)
        data = {}
        for key, value in self.bind(input_data).items():
            kind = self.declared(key)
            try:
                data[key] = _to_data(codec, value, kind, what, key)
            except SerializationError as exc:
                data[key] = _json_form(codec, value, kind, what, key, exc)
        # The defaults not given are stored too: a replay gets them as the first run did.
        for key, (kind, default) in self.parameters.items():
            if key not in data and default is not inspect.Parameter.empty and key != "**":
                try:  # (one that cannot be stored is the function's own, each time)
                    stored = _to_data(codec, default, kind, what, key)
                    _encode(stored, _ENCODE_STRICT)
                except (SerializationError, TypeError, ValueError, RecursionError):
                    continue
                data[key] = stored
        return data

    def arguments(self, codec: "Codec", data: Any, what: str) -> dict:
        """The keyword arguments a run's stored input stands for (see ``input``)."""
        return {key: _from_data(codec, value, self.declared(key), f"{what}: parameter {key!r}")
                for key, value in self.bind(data).items()}


def _outcome(fn: Callable, args: tuple, kwargs: dict) -> tuple:
    """(result, None) or (None, what it raised), in a thread: raised again in the
    caller's coroutine, since a BaseException such as GeneratorExit thrown into an
    awaiting task would close that task's coroutines rather than reach them."""
    try:
        return fn(*args, **kwargs), None
    except BaseException as exc:
        return None, exc


@dataclasses.dataclass(frozen=True)
class _ActivityDef:
    name: str
    fn: Callable
    retry_policy: RetryPolicy
    timeout: Optional[float]
    is_async: bool = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.fn))

    @functools.cached_property
    def returns(self) -> Any:
        """The declared type of the result (Any: none). Resolved on first use, when
        the types it names are defined."""
        return _returns(self.fn)

    @functools.cached_property
    def typed(self) -> bool:
        """Whether the default codec has anything to do with the result (its declared
        type is not plain JSON)."""
        return not _TYPED.plain(self.returns)

    @functools.cached_property
    def parameters(self) -> list:
        """(kind, name, declared type) of the function's parameters ([] if unknown)."""
        try:
            listed = inspect.signature(self.fn).parameters.values()
        except (TypeError, ValueError):  # a builtin without a signature
            return []
        hints = _hints(self.fn)
        return [(p.kind, p.name, hints.get(p.name, Any)) for p in listed]

    def declared(self, args: tuple, kwargs: dict) -> tuple:
        """The declared types of a call's arguments: ([one per arg], {name: type})."""
        positional = [t for kind, _, t in self.parameters
                      if kind in (inspect.Parameter.POSITIONAL_ONLY,
                                  inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        rest = next((t for kind, _, t in self.parameters
                     if kind is inspect.Parameter.VAR_POSITIONAL), Any)
        named = {n: t for kind, n, t in self.parameters if kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
        other = next((t for kind, _, t in self.parameters
                      if kind is inspect.Parameter.VAR_KEYWORD), Any)
        return ([positional[i] if i < len(positional) else rest for i in range(len(args))],
                {k: named.get(k, other) for k in kwargs})

    def arguments(self, codec: "Codec", args: tuple, kwargs: dict, what: str,
                  exact: bool = False) -> dict:
        """A call's arguments as the JSON data to store: each encoded by its declared
        type, or, where none is declared, by its own class (for people to read) -- or,
        ``exact``, as plain JSON (what is read back as it was given: a compensation's)."""
        def by(value: Any, kind: Any) -> Any:
            return kind if kind is not Any or exact else _own_type(value)
        kinds, named = self.declared(args, kwargs)
        return {"args": [_to_data(codec, v, by(v, k), what, f"[{i}]")
                         for i, (v, k) in enumerate(zip(args, kinds))],
                "kwargs": {n: _to_data(codec, v, by(v, named[n]), what, n)
                           for n, v in kwargs.items()}}

    def call_of(self, codec: "Codec", data: dict, what: str) -> tuple:
        """The (args, kwargs) stored ``data`` stands for (see ``arguments``)."""
        args, kwargs = data["args"], data["kwargs"]
        kinds, named = self.declared(args, kwargs)
        return (tuple(_from_data(codec, v, k, what) for v, k in zip(args, kinds)),
                {n: _from_data(codec, v, named[n], what) for n, v in kwargs.items()})

    async def call(self, args: tuple, kwargs: dict) -> Any:
        if self.is_async:
            return await self.fn(*args, **kwargs)
        thread = asyncio.ensure_future(asyncio.to_thread(_outcome, self.fn, args, kwargs))
        try:
            result, error = await asyncio.shield(thread)  # a thread: never block the loop
        except asyncio.CancelledError:
            # A thread cannot be interrupted: the step is over only when it returns, so
            # nobody (a retry, another worker, a compensation) may run before that.
            while not thread.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({thread})
            raise
        if error is not None:
            raise error
        if inspect.isawaitable(result):  # a callable object with an async __call__
            result = await result
        return result


_WORKFLOWS: dict[str, _WorkflowDef] = {}
_ACTIVITIES: dict[str, _ActivityDef] = {}
_QUEUES: dict[str, "Queue"] = {}


def _check_options(kind: str, name: Any, retry_policy: Any, timeout: Any) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError(f"{kind} name must be a non-empty string, got {name!r}")
    if len(name) > _KEY_LENGTH:
        raise ValueError(f"{kind} name {name[:40]!r}... is {len(name)} characters long; "
                         f"at most {_KEY_LENGTH} fit every database")
    if "\x00" in name:
        raise ValueError(f"{kind} name {name!r} contains NUL, which not every database stores")
    if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
        raise TypeError(f"retry_policy of {kind} {name!r} must be a RetryPolicy, "
                        f"got {type(retry_policy).__name__}")
    if timeout is not None and (not _real(timeout)
                                or not 0 < timeout <= _MAX_SECONDS):  # NaN too
        raise ValueError(f"timeout of {kind} {name!r} must be a number of seconds > 0 and at "
                         f"most {_MAX_SECONDS:g} ({_MAX_TEXT}), got {timeout!r}")


def _same_function(old: Callable, new: Callable) -> bool:
    """Whether ``new`` is ``old`` registered again: the same function, or its module
    imported again (a reload, a notebook cell run again: the same name, new code).
    Another function made by the same ``def`` -- a factory called twice, a workflow
    defined in a function's body and that function called again -- shares the code of
    the first and is another function: a duplicate."""
    if old is new:
        return True
    if (old.__module__, old.__qualname__) != (new.__module__, new.__qualname__):
        return False
    # (Through decorators made with functools.wraps: their wrapper's code is shared.)
    code = getattr(inspect.unwrap(old), "__code__", None)
    return code is not None and code is not getattr(inspect.unwrap(new), "__code__", None)


def _register(registry: dict, kind: str, definition) -> None:
    old = registry.get(definition.name)
    if old is not None and not _same_function(old.fn, definition.fn):
        again = "<locals>" in old.fn.__qualname__ and old.fn.__qualname__ == getattr(
            definition.fn, "__qualname__", None)
        raise ValueError(
            f"a {kind} named {definition.name!r} is already registered "
            f"({old.fn.__module__}.{old.fn.__qualname__}); give one of them another name"
            + ("; this one is the same def run again (a factory, or a function that "
               "defines it called twice): define it once, at module level, or give each "
               "function it makes a name of its own" if again else ""))
    registry[definition.name] = definition


@typing.overload
def workflow(name: _F) -> _F: ...


@typing.overload
def workflow(name: Optional[str] = None, retry_policy: Optional[RetryPolicy] = None,
             timeout: Optional[float] = None,
             retention_days: Optional[float] = None) -> Callable[[_F], _F]: ...


def workflow(name: Any = None, retry_policy: Optional[RetryPolicy] = None,
             timeout: Optional[float] = None, retention_days: Optional[float] = None) -> Any:
    """Register an ``async def`` function as a durable workflow.

    ``retry_policy`` (default ``RetryPolicy()``) retries a failed run from its failure
    point; ``timeout`` limits each attempt, in seconds; ``retention_days`` lets the
    workers delete its runs that many days after they finished (see the client's
    ``retention_days``). Works bare or with arguments:

        @workflow(name="etl", retry_policy=RetryPolicy(max_retries=2), timeout=300)
        async def etl(ctx: WorkflowContext, url: str, since: datetime) -> Report:
            data = await fetch(url, since)
            return await store(data)

    Its parameters after ``ctx`` are its input, bound by name and decoded by their
    annotations (``client.start_workflow(etl, url=..., since=...)``); a function that
    takes ``ctx`` only reads its input from ``ctx.input_data`` / ``ctx.get_input``.
    """
    if callable(name):
        return workflow()(name)

    def decorate(fn: Callable) -> Callable:
        wf_name = name or getattr(fn, "__name__", None)
        _check_options("workflow", wf_name, retry_policy, timeout)
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"workflow {wf_name!r} must be defined with 'async def' "
                            f"(it is {type(fn).__name__} {fn!r})")
        listed = list(inspect.signature(fn).parameters.values())
        if not listed or listed[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                                inspect.Parameter.POSITIONAL_OR_KEYWORD) \
                or any(p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL) for p in listed[1:]):
            raise TypeError(f"workflow {wf_name!r} takes its context first, then its "
                            f"parameters by name (async def {fn.__name__}(ctx, order_id: "
                            f"str, ...)); got {fn.__name__}{inspect.signature(fn)}")
        if retention_days is not None:
            _check_days(f"retention_days of workflow {wf_name!r}", retention_days)
        definition = _WorkflowDef(wf_name, fn, retry_policy or RetryPolicy(), timeout,
                                  retention_days)
        _register(_WORKFLOWS, "workflow", definition)
        fn.__tinyworkflow_workflow__ = definition
        return fn

    return decorate


def _callable(fn: Callable) -> Callable:
    """The activity ``fn`` as its users call it: in workflow code (the running loop is
    a run's workflow loop), the next step, as ``ctx.execute_activity`` starts it, with
    the options of the returned callable's ``__tinyworkflow_activity__``; anywhere
    else, the function itself."""

    def step(execution: Any, args: tuple, kwargs: dict) -> Any:
        definition = direct.__tinyworkflow_activity__
        future = execution.activity(definition, args, kwargs)
        future.direct = definition.name  # a plain def's: say "await it" if used unawaited
        return future

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def direct(*args: Any, **kwargs: Any) -> Any:
            execution = getattr(asyncio._get_running_loop(), "_execution", None)
            if execution is None:
                return await fn(*args, **kwargs)
            return await step(execution, args, kwargs)
    else:
        @functools.wraps(fn)
        def direct(*args: Any, **kwargs: Any) -> Any:
            execution = getattr(asyncio._get_running_loop(), "_execution", None)
            if execution is None:
                return fn(*args, **kwargs)
            return step(execution, args, kwargs)
    return direct


def activity(name: Optional[str] = None, retry_policy: Optional[RetryPolicy] = None,
             timeout: Optional[float] = None):
    """Register a function as an activity: a step whose result is recorded.

    ``async def`` activities run on the event loop, plain ``def`` ones in a thread.
    ``retry_policy`` (default ``RetryPolicy()``: 3 retries) retries the step inside the
    run; ``timeout`` limits each attempt.

    Called in a workflow, the function is a step, as ``ctx.execute_activity`` makes
    one: ``await charge(order_id, cents)`` records its result and a replay returns it
    without running it (a plain ``def`` activity called there returns an awaitable
    too). Called anywhere else -- the application, a test, another activity -- it is
    the plain function.

        @activity(name="charge", retry_policy=RetryPolicy(max_retries=5), timeout=30)
        async def charge(order_id: str, cents: int) -> dict:
            key = activity_info().idempotency_key    # stable across retries
            return await payments.charge(order_id, cents, idempotency_key=key)
    """
    if callable(name):
        return activity()(name)

    def decorate(fn: Callable) -> Callable:
        known = getattr(fn, "__tinyworkflow_activity__", None)
        if known is not None and known.fn is getattr(fn, "__wrapped__", None):
            fn = known.fn  # what an @activity returned, registered again: its function
        act_name = name or getattr(fn, "__name__", None)
        _check_options("activity", act_name, retry_policy, timeout)
        if not callable(fn):
            raise TypeError(f"activity {act_name!r} must be a function, got {fn!r}")
        definition = _ActivityDef(act_name, fn, retry_policy or RetryPolicy(), timeout)
        _register(_ACTIVITIES, "activity", definition)
        # The same callable when registered again under its name; another one per name
        # (an alias must not change what the first name's calls record).
        # A bound method shares its function's attributes with every other instance's:
        # only what is returned knows the activity then (as for a builtin, which has none).
        own = hasattr(fn, "__dict__") and not inspect.ismethod(fn)
        made = fn.__dict__.setdefault("__tinyworkflow_callables__", {}) if own else {}
        direct = made.get(act_name) or _callable(fn)
        direct.__tinyworkflow_activity__ = definition
        if own:
            fn.__tinyworkflow_activity__ = definition
        made[act_name] = direct
        return direct

    return decorate


def _count_limit(what: str, value: Any) -> None:
    if value is not None and (not _real(value, whole=True)
                              or not 1 <= value <= 2 ** 31):
        raise ValueError(f"{what} must be a whole number >= 1 (or None: no limit), "
                         f"got {value!r}")


@dataclasses.dataclass(frozen=True)
class Queue:
    """A named queue with limits that hold across every worker sharing the database.

        emails = Queue("emails", concurrency=5, worker_concurrency=2, rate_limit=(100, 60))
        await client.start_workflow("send_email", {"to": to}, queue="emails")

    At most ``concurrency`` runs of the queue are in progress anywhere (a run holds
    its place from its start until it ends, also while it waits on a timer, a signal
    or an approval, or between retries), at most ``worker_concurrency`` on one worker,
    at most ``key_concurrency`` per ``queue_key`` given at start (one tenant cannot
    take every place), and at most ``rate_limit[0]`` runs start in any
    ``rate_limit[1]`` seconds. None means no limit. Waiting runs start by
    ``priority`` (lower first), then in the order they were started.

    Declaring a queue stores its limits when a client opens the database (a worker
    deployed with new limits changes them for everyone); a queue used by name and
    declared nowhere is stored with no limits.
    """

    name: str
    concurrency: Optional[int] = None
    worker_concurrency: Optional[int] = None
    rate_limit: Optional[tuple] = None
    key_concurrency: Optional[int] = None

    def __post_init__(self) -> None:
        _check_name("queue name", self.name)
        for what in ("concurrency", "worker_concurrency", "key_concurrency"):
            _count_limit(what, getattr(self, what))
        if self.rate_limit is not None:
            count, period = (self.rate_limit if isinstance(self.rate_limit, tuple)
                             and len(self.rate_limit) == 2 else (None, None))
            if isinstance(period, timedelta):
                period = period.total_seconds()
            if (not _real(period)
                    or not _EVERY_RANGE[0] <= period <= _EVERY_RANGE[1]):
                raise ValueError(
                    "rate_limit must be (starts, seconds): at most that many runs start in "
                    f"any period of that many seconds ({_EVERY_RANGE[0]:g} to "
                    f"{_EVERY_RANGE[1]:g}), e.g. (100, 60); got {self.rate_limit!r}")
            _count_limit("the starts of rate_limit", count)
            object.__setattr__(self, "rate_limit", (count, float(period)))
        old = _QUEUES.get(self.name)
        if old is not None and old != self:
            raise ValueError(f"queue {self.name!r} is already declared with other limits "
                             f"({old!r}); declare it once")
        _QUEUES[self.name] = self

    def _row(self, now: float) -> dict:
        count, period = self.rate_limit or (None, None)
        return {"name": self.name, "concurrency": self.concurrency,
                "worker_concurrency": self.worker_concurrency,
                "key_concurrency": self.key_concurrency, "rate_limit": count,
                "rate_period": period, "updated_at": now}


async def _workflow_options(store: _Store, name: Any) -> tuple:
    """(max_retries, timeout) of the workflow ``name``: registered here, or served by a
    live worker (a process without the code may start its runs); else the error."""
    definition = _WORKFLOWS.get(name) if isinstance(name, str) else None
    if definition is not None:
        return definition.retry_policy.max_retries, definition.timeout
    served: dict = {}
    for worker in await store.live_workers(time.time()):
        for workflow_name, options in _loads(worker[3]).items():
            served.setdefault(workflow_name, options)
    if isinstance(name, str) and name in served:
        return served[name]["max_retries"], served[name]["timeout"]
    raise WorkflowNotFoundError(
        f"no workflow named {name!r} is registered; registered workflows: "
        f"{', '.join(sorted(_WORKFLOWS)) or '(none)'}; served by live workers: "
        f"{', '.join(sorted(served)) or '(none)'} -- import the module that defines it, "
        "or start a worker that serves it")


def _new_run(name: str, input_text: str, workflow_id: Optional[str], options: tuple,
             now: float, **columns: Any) -> dict:
    """A pending run of the workflow ``name``; ``options`` its (max_retries, timeout)."""
    return {"run_id": str(uuid.uuid4()), "workflow_id": workflow_id or name,
            "workflow_name": name, "status": "pending", "input_data": input_text,
            "retry_count": 0, "max_retries": options[0], "timeout": options[1],
            "created_at": now, "updated_at": now, **columns}


def _check_workflow_id(workflow_id: Any) -> None:
    if workflow_id is not None and (not isinstance(workflow_id, str) or not workflow_id):
        raise TypeError(f"workflow_id must be a non-empty string, got {workflow_id!r}")
    if workflow_id is not None and len(workflow_id) > _KEY_LENGTH:
        raise ValueError(f"workflow_id is {len(workflow_id)} characters long; at most "
                         f"{_KEY_LENGTH} fit every database")
    if workflow_id is not None and "\x00" in workflow_id:
        raise ValueError(f"workflow_id {workflow_id!r} contains NUL, which not every "
                         "database stores")


def _queue_columns(queue: Any, queue_key: Any, priority: Any) -> dict:
    """The run's queue columns for start_workflow's options (none without a queue)."""
    if queue is None:
        if queue_key is not None or priority is not None:
            raise ValueError("queue_key and priority order runs within a queue: give "
                             "queue= too")
        return {}
    name = queue.name if isinstance(queue, Queue) else queue
    _check_name("queue", name)
    if queue_key is not None:
        _check_name("queue_key", queue_key)
    if priority is None:
        priority = 0
    if not _real(priority, whole=True) or abs(priority) > 2 ** 31:
        raise ValueError(f"priority must be a whole number (lower starts first; at most "
                         f"2**31 either way), got {priority!r}")
    return {"queue_name": name, "queue_key": queue_key, "priority": priority}


def _debounce_option(value: Any) -> tuple:
    """(key, seconds) of start_workflow's ``debounce=``."""
    key, seconds = value if isinstance(value, tuple) and len(value) == 2 else (None, None)
    if isinstance(seconds, timedelta):
        seconds = seconds.total_seconds()
    if (not isinstance(key, str) or not key or len(key) > _KEY_LENGTH
            or not _real(seconds)
            or not 0 < seconds <= _EVERY_RANGE[1]):  # NaN too
        raise ValueError(f"debounce must be (key, seconds): a non-empty key of at most "
                         f"{_KEY_LENGTH} characters and a wait of more than 0 and at most "
                         f"{_EVERY_RANGE[1]:g} seconds (366 days); got {value!r}")
    return key, float(seconds)


def _activity_def(fn: Any, caller: str = "execute_activity") -> _ActivityDef:
    definition = getattr(fn, "__tinyworkflow_activity__", None)
    if definition is not None:
        return definition
    if isinstance(fn, str):
        if fn in _ACTIVITIES:
            return _ACTIVITIES[fn]
        raise ValueError(f"no activity named {fn!r} is registered; registered activities: "
                         f"{', '.join(sorted(_ACTIVITIES)) or '(none)'}")
    if callable(fn):  # undecorated functions work too, with the default policy
        return _ActivityDef(getattr(fn, "__name__", type(fn).__name__), fn, RetryPolicy(), None)
    raise TypeError(f"{caller} takes an activity function, got {_shown(fn)}")


_UNSET: Any = object()  # an option not given (None means "none")


_START_OPTIONS = ("input_data", "workflow_id", "wait", "idempotency_key", "run_id", "queue",
                  "queue_key", "priority", "debounce")


def _workflow_def(workflow: Any, caller: str) -> _WorkflowDef:
    definition = getattr(workflow, "__tinyworkflow_workflow__", None)
    if not isinstance(definition, _WorkflowDef):
        raise TypeError(f"{caller} takes a @workflow function or a workflow's name, "
                        f"got {_shown(workflow)}")
    return definition


def _workflow_name(workflow: Any, caller: str) -> Any:
    """The name of a workflow given by name (checked where it is looked up) or as its
    function."""
    return workflow if isinstance(workflow, str) else _workflow_def(workflow, caller).name


def _called(workflow: Any, args: tuple, kwargs: dict, options: tuple, caller: str) -> tuple:
    """A start given a workflow function with its arguments, as a start by name:
    (name, (), {"input_data": {parameter: value}, **the options given})."""
    definition = _workflow_def(workflow, caller)
    name = definition.name
    listed = list(inspect.signature(definition.fn).parameters.values())[1:]
    named = {p.name for p in listed}
    given = {k: kwargs.pop(k) for k in list(kwargs) if k in options and k not in named}
    positional = [p.name for p in listed if p.kind is p.POSITIONAL_OR_KEYWORD]
    if len(args) > len(positional):
        raise TypeError(f"workflow {name!r} takes {len(positional)} parameter(s) by position "
                        f"{_signature(definition.fn)}, got {len(args)}")
    for key, value in zip(positional, args):
        if key in kwargs:
            raise TypeError(f"workflow {name!r} got parameter {key!r} twice")
        kwargs[key] = value
    if kwargs:
        if given.get("input_data") is not None:
            raise TypeError(f"the input of workflow {name!r} is either input_data or its "
                            "parameters as arguments, not both")
        given["input_data"] = kwargs
    return name, (), given


def _input_text(codec: Codec, definition: Optional[_WorkflowDef], input_data: Any,
                what: str) -> str:
    """A run's input as stored: by its workflow's parameters when it is registered here
    (a ValueError if it does not fit them), else as it is."""
    if definition is None:
        return _dumps(_to_data(codec, input_data, Any, what), what)
    return _dumps(definition.input(codec, input_data, what), what)


def with_options(fn: Any, *, retry_policy: Optional[RetryPolicy] = None,
                 timeout: Optional[float] = _UNSET) -> Callable:
    """The activity ``fn`` with another retry policy or timeout, for the calls made
    through what this returns; the activity's own keyword arguments are untouched
    (even ones named ``timeout``)::

        quick = with_options(fetch_quote, timeout=5, retry_policy=RetryPolicy(max_retries=0))
        price = await ctx.execute_activity(quick, symbol)

    ``timeout=None`` lifts the activity's timeout. The step is recorded under the
    activity's name, as any call of it; outside a workflow the result is the plain
    function (called directly in a workflow, a step with these options). Compensations
    take the registered activity as it is: they may run in another process, which finds
    it by name."""
    base = _activity_def(fn, "with_options")
    _check_options("activity", base.name, retry_policy, None if timeout is _UNSET else timeout)
    call = _callable(base.fn)
    call.__tinyworkflow_activity__ = dataclasses.replace(  # type: ignore[attr-defined]
        base, retry_policy=retry_policy or base.retry_policy,
        timeout=base.timeout if timeout is _UNSET else timeout)
    return call


def _parallel_call(call: Any) -> tuple:
    if callable(call) or isinstance(call, str):
        return call, (), {}
    if isinstance(call, (tuple, list)) and 1 <= len(call) <= 3:
        fn, args, kwargs = (*call, (), {})[:3]
        if isinstance(args, (tuple, list)) and isinstance(kwargs, dict):
            return fn, tuple(args), kwargs
    raise TypeError(
        f"execute_parallel takes (activity, args_tuple, kwargs_dict) tuples, got {call!r}; "
        "write a single argument as (fetch_user, (user_id,), {})"
    )


# ---- the workflow loop ------------------------------------------------------------------
#
# Workflow code does not run on the application's event loop: each execution of a run
# gets a small event loop of its own (_WorkflowLoop), stepped by the engine from the real
# loop. Steps are futures on it. Whatever asyncio composes from them -- gather, wait,
# wait_for, timeout, TaskGroup, as_completed, Event -- sees their outcomes one at a time,
# in the order recorded with them (each outcome's ``seq``), with the loop run until idle
# in between (an *activation*). A replay delivers the recorded outcomes in that order,
# so every race takes the branch it took the first time. The loop's time is the
# recorded time of the activation; its timers are durable timers.


class ActivityInfo(NamedTuple):
    """Where the running activity is: see ``activity_info()``."""

    run_id: str
    workflow_id: str
    workflow_name: str
    step: int
    name: str
    attempt: int

    @property
    def idempotency_key(self) -> str:
        """``"<run_id>:<step>"``: the same for every attempt of this step, also after a
        crash; pass it to outside systems so a repeated attempt is not applied twice."""
        return f"{self.run_id}:{self.step}"


# (run row, step, activity name, attempt) of the activity being executed: the
# ActivityInfo is made only when asked for.
_CURRENT_ACTIVITY: contextvars.ContextVar[tuple] = contextvars.ContextVar(
    "tinyworkflow_activity")


def activity_info() -> ActivityInfo:
    """The ``ActivityInfo`` of the activity being executed (RuntimeError outside one)."""
    try:
        run, step, name, attempt = _CURRENT_ACTIVITY.get()
    except LookupError:
        raise RuntimeError("activity_info() is only available inside a running activity") \
            from None
    return ActivityInfo(run["run_id"], run["workflow_id"], run["workflow_name"], step, name,
                        attempt)


# What an event loop of one's own sets and asks (asyncio's functions for that), and what
# it makes.
_running_loop, _set_running_loop = asyncio._get_running_loop, asyncio._set_running_loop
_Future, _Handle = asyncio.Future, asyncio.Handle


class _WorkflowLoop(asyncio.AbstractEventLoop):
    """The event loop one execution's workflow code runs on. Only what a deterministic
    program needs: ready callbacks run in FIFO order (``run_until_idle``), the time is
    the activation's recorded time, and ``call_at``/``call_later`` are durable timers
    (steps of the run). Everything that would reach outside -- sockets, threads,
    subprocesses, signals -- is refused with an error that says to use an activity."""

    def __init__(self, execution: "_Execution", now: float):
        self._execution = execution
        self._ready: collections.deque = collections.deque()
        self._now = now
        self._closed = False
        self._exception_handler: Optional[Callable] = None
        self._tasks: Optional[weakref.WeakSet] = None  # the workflow's own tasks, if any
        self._hooks = (None, self._close_asyncgen)  # asyncgen hooks: firstiter, finalizer

    def run_until_idle(self) -> None:
        """Run ready callbacks, with this loop as the running loop, until none is left."""
        ready = self._ready
        if not ready:
            return
        real, hooks = _running_loop(), sys.get_asyncgen_hooks()
        _set_running_loop(self)
        # An async generator first iterated here is closed here when it is dropped (the
        # real loop's hooks would run its cleanup there, outside the workflow).
        sys.set_asyncgen_hooks(*self._hooks)
        try:
            while ready:
                handle, callback, args, context = ready.popleft()
                if handle.cancelled():
                    continue
                try:
                    context.run(callback, *args)
                except (SystemExit, Exception) as exc:  # a task stored it already
                    self.call_exception_handler({"message": "workflow callback failed",
                                                 "exception": exc, "handle": handle})
        finally:
            _set_running_loop(real)
            sys.set_asyncgen_hooks(*hooks)

    def _close_asyncgen(self, agen) -> None:
        if not self._closed:
            self.create_task(agen.aclose())

    # -- what asyncio calls
    def time(self) -> float:
        return self._now

    def call_soon(self, callback: Callable, *args: Any, context=None) -> asyncio.Handle:
        if context is None:
            context = contextvars.copy_context()
        handle = _Handle(callback, args, self, context)
        if not self._closed:
            self._ready.append((handle, callback, args, context))
        return handle

    def call_at(self, when: float, callback: Callable, *args: Any,
                context=None) -> asyncio.TimerHandle:
        return self._execution.timer(when, callback, args, context)

    def call_later(self, delay: float, callback: Callable, *args: Any,
                   context=None) -> asyncio.TimerHandle:
        return self.call_at(self._now + delay, callback, *args, context=context)

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        self._execution.timer_cancelled(handle)

    def create_future(self) -> asyncio.Future:
        return asyncio.Future(loop=self)

    def create_task(self, coro, *, name=None, context=None) -> asyncio.Task:
        options = {} if context is None else {"context": context}
        task = asyncio.Task(coro, loop=self, name=name, **options)
        if self._tasks is None:
            self._tasks = weakref.WeakSet()
        self._tasks.add(task)  # closed at teardown (asyncio.all_tasks scans every loop's)
        return task

    def is_running(self) -> bool:
        return asyncio._get_running_loop() is self

    def is_closed(self) -> bool:
        return self._closed

    # Never in debug mode. A builtin (bool() is False), as every future and handle made
    # on this loop asks, and a Python method would cost a call each time.
    get_debug = staticmethod(bool)

    def set_debug(self, enabled: bool) -> None:
        pass

    def set_exception_handler(self, handler: Optional[Callable]) -> None:
        self._exception_handler = handler

    def get_exception_handler(self) -> Optional[Callable]:
        return self._exception_handler

    def default_exception_handler(self, context: dict) -> None:
        exc = context.get("exception")
        _log.debug("run %s: %s", self._execution.run_id, context.get("message"),
                   exc_info=None if exc is None else (type(exc), exc, exc.__traceback__))

    def call_exception_handler(self, context: dict) -> None:
        if self._closed:  # a torn-down execution's tasks and futures: nothing to say
            return
        if self._exception_handler is not None:
            self._exception_handler(self, context)
        else:
            self.default_exception_handler(context)


def _refused(name: str) -> Callable:
    def refuse(self: _WorkflowLoop, *args: Any, **kwargs: Any) -> NoReturn:
        raise self._execution.refuse(name)
    refuse.__name__ = name
    return refuse


for _name in ("run_in_executor", "set_default_executor", "getaddrinfo", "getnameinfo",
              "create_connection", "create_server", "create_unix_connection",
              "create_unix_server", "create_datagram_endpoint", "connect_accepted_socket",
              "sendfile", "start_tls", "sock_recv", "sock_recv_into", "sock_recvfrom",
              "sock_recvfrom_into", "sock_sendall", "sock_sendto", "sock_connect",
              "sock_accept", "sock_sendfile", "add_reader", "remove_reader", "add_writer",
              "remove_writer", "connect_read_pipe", "connect_write_pipe", "subprocess_exec",
              "subprocess_shell", "add_signal_handler", "remove_signal_handler",
              "call_soon_threadsafe", "run_forever", "run_until_complete", "stop", "close",
              "shutdown_asyncgens", "shutdown_default_executor", "set_task_factory"):
    setattr(_WorkflowLoop, _name, _refused(_name))


class _Step(asyncio.Future):
    """The outcome of a step, on its run's workflow loop (and awaitable only there).
    ``on_cancel`` is called when the workflow cancels it (gives the step up).
    ``direct`` names the plain ``def`` activity whose direct call made it: used as
    its value instead of awaited, it says so."""

    on_cancel: Optional[Callable[[], Any]] = None
    direct: Optional[str] = None
    returns: Any = Any  # the type its recorded result is decoded to (Any: as stored)

    def _unawaited(self, what: str) -> str:
        return (f"{what}: {self.direct}(...) called in a workflow is a step, an awaitable: "
                f"await it (result = await {self.direct}(...))")

    def __bool__(self) -> bool:
        if self.direct is not None:
            raise TypeError(self._unawaited("a step has no truth value"))
        return True

    def __iter__(self):  # a Future's is its __await__ (for ``yield from``)
        if self.direct is not None:  # list(step), x in step, for x in step
            raise TypeError(self._unawaited("a step is not iterable"))
        return self.__await__()

    def __contains__(self, item: Any) -> bool:
        raise TypeError(self._unawaited("a step holds nothing") if self.direct
                        else f"argument of type {type(self).__name__!r} is not iterable")

    def __getitem__(self, key: Any) -> Any:
        raise TypeError(self._unawaited("a step is not subscriptable") if self.direct
                        else f"{type(self).__name__!r} object is not subscriptable")

    def __getattr__(self, name: str) -> Any:  # only for names a Future does not have
        if self.direct is not None and not name.startswith("_"):
            raise AttributeError(self._unawaited(f"a step has no attribute {name!r}"))
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        if self.on_cancel is not None:
            self.on_cancel()
        return True

    def __await__(self):
        if _running_loop() is not self.get_loop():
            raise RunStateError(
                f"a step of run {self.get_loop()._execution.run_id} was awaited outside "
                "that run's workflow (from another run, an activity or the application); "
                "await a step only in the workflow that called it")
        return _Future.__await__(self)  # (no generator, no super(): less per step)


class _ActivityStep(_Step):
    """An activity's step: cancelled by the workflow, it gives the activity up. (Its
    step number in a slot: no attribute dict for the most common step.)"""

    __slots__ = ("step",)

    def cancel(self, msg: Any = None) -> bool:
        if not asyncio.Future.cancel(self, msg):
            return False
        self.get_loop()._execution.abandon(self.step)
        return True


def _settle_future(future: asyncio.Future, value: Any) -> None:
    if future.done():
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


class _Notify:
    """An execution's wake-up, an ``asyncio.Event`` in what it offers (``set``,
    ``is_set``, ``clear``, ``wait``) and cheaper: ``set`` by a signal, a decision or a
    child's end that concerns the run (``came``), ``wake`` by its own steps' outcomes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop, self._waiter, self._set = loop, None, False
        self.came = True  # at the start: whatever came while it was parked

    def set(self) -> None:
        self.came = True
        self.wake()

    def wake(self) -> None:
        self._set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def is_set(self) -> bool:
        return self._set

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if not self._set:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return True


@dataclasses.dataclass
class _Wait:
    """A durable wait of the workflow: a timer, a signal, an approval or a child's end."""

    kind: str
    step: int
    name: str
    deadline: Optional[float]
    target: Any  # the future (signal, approval, child) or the timer's handle
    row: Optional[dict] = None  # its 'waiting' row, if one is recorded
    child_id: Optional[str] = None


class ChildWorkflowHandle:
    """A child run started by ``ctx.start_child_workflow``: ``run_id`` and
    ``workflow_name`` name it, ``await handle`` gives its result (or raises
    ``WorkflowFailedError``); awaiting it again gives the same outcome."""

    def __init__(self, run_id: str, workflow_name: str, outcome: asyncio.Future):
        self.run_id, self.workflow_name, self._outcome = run_id, workflow_name, outcome

    def __await__(self):
        if asyncio._get_running_loop() is not self._outcome.get_loop():
            raise RunStateError(f"child run {self.run_id} was awaited outside the workflow "
                                "that started it; await a handle only there")
        # Shielded: one awaiter given up on (a wait_for timing out) leaves it for others.
        return asyncio.shield(self._outcome).__await__()

    def __repr__(self) -> str:
        return f"<ChildWorkflowHandle {self.workflow_name!r} run_id={self.run_id!r}>"


# ---- workflow context -------------------------------------------------------------------


class WorkflowContext:
    """What a workflow function receives: its input and its durable operations.

    You await what waits -- activities, timers, signal and approval waits, child
    results -- and they are steps: numbered when *called* (an activity starts right
    then), recorded with their outcome, replayed from the record after a crash. What
    only records or reads is a plain call: ``now()``, ``uuid4()``, ``random()``,
    ``patched()``, ``set_event()``, ``add_compensation()``, ``continue_as_new()``.
    Any asyncio composition of steps (gather, wait, wait_for, timeout, TaskGroup,
    as_completed, Event, asyncio.sleep) is exact and durable: the workflow runs on a
    deterministic loop of its own whose timers are durable timers.
    """

    def __init__(self, execution: _Execution, run: dict):
        self.run_id: str = run["run_id"]
        self.workflow_id: str = run["workflow_id"]
        self.workflow_name: str = run["workflow_name"]
        self.input_data: Any = _loads(run["input_data"])
        self.retry_count: int = run["retry_count"]
        self._x = execution

    def get_input(self, key: str, default: Any = None) -> Any:
        """``input_data[key]``, or ``default`` when the key (or the whole input) is missing."""
        if self.input_data is None:
            return default
        if not isinstance(self.input_data, dict):
            raise TypeError(f"the input of run {self.run_id} is a "
                            f"{type(self.input_data).__name__}, not a dict; read ctx.input_data")
        return self.input_data.get(key, default)

    # -- activities
    def execute_activity(self, fn: Any, *args: Any, **kwargs: Any) -> "asyncio.Future[Any]":
        """Start an activity as the next step; await it for its (recorded) result.

        ``await ctx.execute_activity(fetch_user, user_id)``. It starts when called, so
        ``asyncio.gather(ctx.execute_activity(a), ctx.execute_activity(b))`` runs both at
        once. A step recorded as done returns its stored value without running. The
        result is the JSON round-trip of what the activity returned, on the first run
        and on every replay alike; a failure (after the activity's retries) is raised.
        """
        execution = self._x
        if _running_loop() is not execution.loop:
            execution.usable()  # raises
        return execution.activity(getattr(fn, "__tinyworkflow_activity__", None)
                                  or _activity_def(fn), args, kwargs)

    def execute_parallel(self, *calls: Any) -> "asyncio.Future[list]":
        """Run activities concurrently, one step each; await it for their results in order.

        ``a, b = await ctx.execute_parallel((fetch_a, (x,), {}), (fetch_b, (y,), {}))``.
        Every branch finishes (and is recorded) before the first error, in call order,
        is raised.
        """
        self._x.usable()
        branches = [self.execute_activity(fn, *args, **kwargs)
                    for fn, args, kwargs in map(_parallel_call, calls)]

        async def every_branch() -> list:
            results = await asyncio.gather(*branches, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            return results
        return self._x.loop.create_task(every_branch())

    # -- durable timers
    def sleep(self, seconds: float) -> "asyncio.Future[None]":
        """Wait ``seconds`` as a step: the timer is recorded, so a run resumed after a
        crash or a restart wakes at the original deadline, and a timer that fired does
        not wait again. A wait longer than a second holds nothing in memory: the run is
        parked in the database until then (a workflow may sleep for days).
        ``asyncio.sleep`` in a workflow is just as durable; this is the explicit
        spelling, recorded as a step as soon as it is set."""
        if (not _real(seconds)
                or not 0 <= seconds <= _MAX_SECONDS):  # NaN too
            raise ValueError(f"sleep needs seconds from 0 to {_MAX_SECONDS:g} ({_MAX_TEXT}), "
                             f"got {seconds!r}")
        self._x.usable()
        return self._sleep(self._x.loop.time() + seconds)

    def sleep_until(self, when: datetime) -> "asyncio.Future[None]":
        """Wait until ``when`` (a timezone-aware datetime) as a step; see ``sleep``."""
        if not isinstance(when, datetime) or when.tzinfo is None:
            raise ValueError(f"sleep_until needs a timezone-aware datetime, got {when!r}")
        self._x.usable()
        return self._sleep(when.timestamp(), absolute=True)

    def _sleep(self, deadline: float, absolute: bool = False) -> "asyncio.Future[None]":
        future = _Step(loop=self._x.loop)
        handle = self._x.timer(deadline, _settle_future, (future, None), None, "sleep", future,
                               absolute)
        future.on_cancel = handle.cancel
        return future

    # -- signals
    def wait_for_signal(self, name: str, timeout: Optional[float] = None, *,
                        type: Any = Any) -> "asyncio.Future[Any]":
        """The payload of the next signal ``name`` sent to this run
        (``client.send_signal``), as a step; decoded as ``type`` if given
        (``await ctx.wait_for_signal("address", type=Address)``), else plain JSON as
        stored. Signals are stored: one sent before the
        workflow waits is not lost, several are received in the order sent, each by one
        wait. While none is there the run is parked (nothing in memory) until one comes
        or ``timeout`` seconds (of workflow time) have passed since the wait began; then
        ``TimeoutError`` (recorded: a replay raises it again). A wait the workflow gives
        up (cancelled, a race lost) takes no signal."""
        _check_name("a signal name", name)
        _check_timeout("wait_for_signal", timeout)
        self._x.usable()
        future = self._x.wait("signal", name, timeout, "signal_waiting")
        if type is not Any:
            future.returns = type
        return future

    # -- approvals
    def wait_for_approval(self, key: str, timeout: Optional[float] = None
                          ) -> "asyncio.Future[bool]":
        """Wait for a person to approve or reject the run, as a step: True once
        ``client.approve_workflow(run_id)`` is called, False for ``reject_workflow``.
        Meanwhile ``approval_required`` is ``key`` (listed by
        ``client.get_pending_approvals()``) and, once nothing else is in flight, the
        run is ``paused`` and holds nothing in memory; the decision is stored, so it
        survives any restart. With no decision ``timeout`` seconds after the wait
        began: ``TimeoutError`` (recorded: a replay raises it again)."""
        _check_name("an approval key", key)
        _check_timeout("wait_for_approval", timeout)
        self._x.usable()
        return self._x.wait("approval", key, timeout, "approval_requested")

    # -- child workflows
    @typing.overload
    def start_child_workflow(self, workflow: Callable[typing.Concatenate[Any, _P],
                                                      Awaitable[Any]], /,
                             *args: _P.args, **kwargs: _P.kwargs
                             ) -> "asyncio.Future[ChildWorkflowHandle]": ...

    @typing.overload
    def start_child_workflow(self, workflow: str | Callable[..., Awaitable[Any]],
                             input_data: Any = None, workflow_id: Optional[str] = None
                             ) -> "asyncio.Future[ChildWorkflowHandle]": ...

    def start_child_workflow(self, workflow: Any, *args: Any, **kwargs: Any
                             ) -> "asyncio.Future[ChildWorkflowHandle]":
        """Start a run of ``workflow`` (a ``@workflow`` function, or a workflow's name)
        as this run's child (its ``parent_run_id`` is this run); await it for the
        child's handle, and ``await handle`` for its result. Starting is a step: the
        child's run id is recorded with it, in the same transaction as the child run,
        so a replay gets the same child and a crash never starts it twice. Fan out by
        starting several, then awaiting them::

            handles = [await ctx.start_child_workflow(resize, image=i) for i in images]
            sizes = await asyncio.gather(*handles)

        A workflow with parameters takes them as keyword arguments (or ``input_data``,
        a dict of them), encoded by their annotations; its result is decoded by its
        return annotation. A workflow named but not registered in this process takes
        ``input_data`` as it is. A worker executes the child (any worker serving it,
        or this process); cancelling this run cancels its unfinished children.
        ``workflow_id`` defaults to the child's workflow name. Called
        ``start_child_workflow(workflow_name, input_data=None, workflow_id=None)``, or
        ``start_child_workflow(fn, *args, **kwargs, workflow_id=None)``."""
        if not isinstance(workflow, str):
            workflow, args, kwargs = _called(workflow, args, kwargs, ("input_data",
                                                                      "workflow_id"),
                                             "start_child_workflow")
        return self._start_child(workflow, *args, **kwargs)

    def _start_child(self, name: str, input_data: Any = None,
                     workflow_id: Optional[str] = None) -> "asyncio.Future[ChildWorkflowHandle]":
        if not name:
            raise TypeError("start_child_workflow takes a @workflow function or a workflow's "
                            "name, got ''")
        definition = _WORKFLOWS.get(name)
        _check_workflow_id(workflow_id)
        x = self._x
        x.usable()
        step, record = x.begin("child", name)
        if record is not None:
            # A child that failed in an earlier attempt of this run is started anew (that
            # is what a workflow retry means); any other is this run's child still.
            if record["status"] == "failed" and record["run_attempt"] != self.retry_count:
                record = None
        input_text = None if record is not None else _input_text(
            x.codec, definition, input_data, f"the input of child workflow {name!r}")
        return x.start_child(name, input_text, workflow_id, record, step)

    @typing.overload
    def execute_child_workflow(self, workflow: Callable[typing.Concatenate[Any, _P],
                                                        Awaitable[_R]], /,
                               *args: _P.args, **kwargs: _P.kwargs) -> "asyncio.Future[_R]":
        ...

    @typing.overload
    def execute_child_workflow(self, workflow: str | Callable[..., Awaitable[Any]],
                               input_data: Any = None, workflow_id: Optional[str] = None
                               ) -> "asyncio.Future[Any]": ...

    def execute_child_workflow(self, workflow: Any, *args: Any,
                               **kwargs: Any) -> "asyncio.Future[Any]":
        """Run ``workflow`` as a child run; await it for its result. If the child
        fails (or is cancelled): ``WorkflowFailedError``. Called as
        ``start_child_workflow``."""
        started = self.start_child_workflow(workflow, *args, **kwargs)

        async def result() -> Any:
            return await (await started)
        return self._x.loop.create_task(result())

    # -- continue as new
    def continue_as_new(self, input_data: Any = None) -> NoReturn:
        """End this run and start a fresh one of the same workflow with ``input_data``
        (None if not given: pass ``ctx.input_data`` to keep it), the same
        ``workflow_id`` and an empty history: a workflow that loops forever (a poller,
        an entity) calls it now and then so that no history grows without bound.
        This run ends as ``continued``, its ``output_data`` naming the successor
        (``{"continued_as": run_id}``); ``wait_for_result`` follows the chain. Raises
        (it does not return): call it as the workflow's last statement."""
        self._x.usable()
        self._x.successor = _input_text(
            self._x.codec, _WORKFLOWS.get(self.workflow_name), input_data,
            f"the input of the run that continues {self.workflow_name!r}")
        raise _ContinuedAsNew(self._x.successor)

    # -- sagas
    def add_compensation(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        """Register the activity ``fn(*args, **kwargs)`` that undoes what the run has
        done so far (cancel a booking, refund a payment), as a step. If the run finally
        fails (its retries exhausted) or is cancelled, the compensations registered so
        far run in reverse order, each as a step with its activity's retry policy, and
        the run ends ``compensated`` (or ``failed`` if one of them failed: the others
        still run). Register right after the step it undoes succeeded::

            booking = await ctx.execute_activity(book_hotel, trip)
            ctx.add_compensation(cancel_hotel, booking)

        ``fn`` must be a registered ``@activity``: compensations may run after a crash,
        in another process, which finds it by name."""
        definition = _activity_def(fn, "add_compensation")
        if _ACTIVITIES.get(definition.name) is not definition:
            raise TypeError(
                "add_compensation takes a registered @activity as registered (it is found by "
                "name when compensating, perhaps in another process), got "
                + (f"{definition.name!r} with other options (with_options)"
                   if definition.name in _ACTIVITIES else repr(fn)))
        x = self._x
        x.usable()
        step, record = x.begin("compensation", definition.name)
        if record is not None:
            return
        what = f"the arguments of compensation {definition.name!r}"
        arguments = _dumps(definition.arguments(x.codec, args, kwargs, what, exact=True), what)
        x.note(x.row(step, definition.name, "compensation", "registered", input=arguments,
                     attempts=0),
               ("compensation_registered", {"step": step, "name": definition.name}))

    # -- deterministic values: the same on every replay, nothing recorded
    def now(self) -> datetime:
        """The workflow's current time (an aware UTC datetime): the recorded time of
        what the workflow last received, so a replay reads the same instant. Use it
        instead of ``datetime.now()``; ``asyncio.get_running_loop().time()`` is the same
        in seconds."""
        self._x.usable()
        return datetime.fromtimestamp(self._x.loop.time(), timezone.utc)

    def uuid4(self) -> uuid.UUID:
        """A random UUID from the run's generator (see ``random``): a replay gets the
        same one."""
        self._x.usable()
        return uuid.UUID(int=self._x.random.getrandbits(128), version=4)

    def random(self) -> random.Random:
        """The run's random generator (a ``random.Random`` seeded from the run id):
        ``ctx.random().randint(1, 6)``. A replay draws the same numbers, in the same
        order, as long as the workflow draws them in the same order."""
        self._x.usable()
        return self._x.random

    # -- versioning
    def patched(self, change_id: str) -> bool:
        """Whether this run takes the new path of a code change: True for a run that
        reaches this point for the first time with this code (the decision is recorded
        as a step), False for a run whose history was recorded before the change::

            if ctx.patched("send-sms"):
                await ctx.execute_activity(send_sms, order)  # new runs
            else:
                await ctx.execute_activity(send_email, order)  # runs already past here

        Deploy it, and runs in flight keep their old path. Once none of them is left,
        drop the old branch and replace the call with ``ctx.deprecate_patch(change_id)``;
        once no run recorded with the patch is left either, delete that call too."""
        _check_name("a change id", change_id)
        x = self._x
        x.usable()
        step = x.peek()
        record = x.history.get(step)
        if record is None and step > x.last_recorded:  # new ground: the new code decides
            x.new_step()
            if not x.torn_down:
                x.markers.append((x.row(step, change_id, "patch", "completed", output="true"),
                                  ("step_completed", {"step": step, "name": change_id,
                                                      "kind": "patch"})))
            return True
        if record is not None and (record["kind"], record["name"]) == ("patch", change_id):
            x.new_step()
            return True
        return False  # this run recorded other steps here: the old code's path

    def deprecate_patch(self, change_id: str) -> None:
        """Stand in for ``patched(change_id)`` once its old branch is deleted: runs that
        recorded the patch replay past its marker; new runs record nothing."""
        _check_name("a change id", change_id)
        x = self._x
        x.usable()
        record = x.history.get(x.peek())
        if record is not None and (record["kind"], record["name"]) == ("patch", change_id):
            x.new_step()

    # -- published state
    def set_event(self, key: str, value: Any) -> None:
        """Publish ``value`` under ``key`` as a step, for ``client.get_event(run_id,
        key)`` to read: progress, a stage, a partial result. A value of a type the codec
        knows (a dataclass, a datetime...) is encoded by its class, for ``get_event(...,
        type=...)`` to read back as one.
        It is recorded right after the workflow's current activation (before anything
        else reaches it). Setting a key again publishes the new value; a replay writes
        nothing."""
        _check_name("an event key", key)
        x = self._x
        x.usable()
        step, record = x.begin("event", key)
        if record is not None:
            return
        what = f"the value of event {key!r}"
        output = _dumps(_to_data(x.codec, value, _own_type(value), what), what)
        x.note(x.row(step, key, "event", "completed", output=output),
               ("event_set", {"step": step, "key": key}))


# ---- wake-ups in this process: the hub --------------------------------------------------


class _Hub:
    """Who in this process waits on one database, and how each is woken: workers wait
    for a run to become due; executions wait in memory for a signal to their run;
    callers (``wait=True``, ``wait_for_result``, ``get_event``) watch a run change.
    Whatever changes a run, in this process or (through PostgreSQL's NOTIFY) in
    another, says so here. One hub per database (``_hub``), shared by its clients."""

    def __init__(self) -> None:
        self.workers: set = set()  # an asyncio.Event per worker
        self.signal_waiters: dict[str, set] = {}  # run id -> what .set() wakes
        self.watchers: dict[str, set] = {}  # run id -> an asyncio.Event per watcher

    def run_due(self) -> None:
        """A run became due: the workers look for it at once."""
        for event in self.workers:
            event.set()

    def signal(self, run_id: str) -> None:
        """A signal, an approval or a child's end reached the run: its wait in memory
        here goes on."""
        for waiter in self.signal_waiters.get(run_id, ()):
            waiter.set()

    def changed(self, run_id: str) -> None:
        """The run's state changed (a step, its end, a cancellation)."""
        for event in self.watchers.get(run_id, ()):
            event.set()

    def run_changed(self, run_id: str) -> None:
        """Something reached the run from outside: whoever waits on it, and the workers
        (the run may have become due)."""
        self.signal(run_id)
        self.changed(run_id)
        self.run_due()

    def notified(self, run_id: str) -> None:
        """Another process made a run due (NOTIFY; the run's id when a signal did)."""
        if run_id:
            self.signal(run_id)
        self.run_due()

    @staticmethod
    def join(members: dict, run_id: str, member: Any) -> None:
        members.setdefault(run_id, set()).add(member)

    @staticmethod
    def leave(members: dict, run_id: str, member: Any) -> None:
        waiting = members.get(run_id, set())
        waiting.discard(member)
        if not waiting:
            members.pop(run_id, None)

    @contextlib.contextmanager
    def _in(self, members: dict, run_id: str, member: Any):
        self.join(members, run_id, member)
        try:
            yield member
        finally:
            self.leave(members, run_id, member)

    def watching(self, run_id: str, event: Optional[asyncio.Event] = None):
        """A context giving an event (``event``, or a new one) set whenever the run
        changes here; clear it before reading the run's state."""
        return self._in(self.watchers, run_id, event or asyncio.Event())


_HUBS: dict[str, _Hub] = {}  # database key -> its hub


def _hub(key: str) -> _Hub:
    hub = _HUBS.get(key)
    if hub is None:
        hub = _HUBS[key] = _Hub()
    return hub


# ---- engine: one run, replayed ----------------------------------------------------------


def _recorded_deadline(record: dict, default: Optional[float]) -> Optional[float]:
    """The deadline a wait's row recorded (rows of older versions: in its output or
    input)."""
    if record.get("deadline") is not None:
        return record["deadline"]
    if record["kind"] == "approval":
        return (_loads(record["input"]) or {}).get("deadline", default)
    value = _loads(record["output"])
    return value if isinstance(value, (int, float)) else default


class _Execution:
    """One execution of a run: its workflow loop, the history it replays, its steps in
    flight, and the driver (``drive``) that steps the loop from the real one.

    Outcomes reach the workflow one at a time, in ``seq`` order: first those recorded
    (a replay), then new ones, each only once its record is durable. A step that only
    writes (an event, a compensation, a patch marker, a child's start, a wait's row) is
    written after the activation that called it, before anything else is delivered.
    The run leaves memory only when nothing is in flight and all it awaits is durable.
    """

    __slots__ = ("_random", "abandoned", "arrived", "attempt", "base", "begun", "closing",
                 "codec", "ctx", "engine", "fatal", "finishing", "flushing", "history", "idle",
                 "inbox", "inflight", "last_recorded", "looked_until", "loop", "main", "markers",
                 "next_step", "notify", "owner", "real", "recorded", "resolutions", "returns",
                 "run", "run_id", "seq", "starting", "stop", "store", "successor", "targets",
                 "timers", "torn_down", "unchecked", "unsequenced", "unsettled", "waited",
                 "waits", "writes")

    def __init__(self, engine: "_Engine", run: dict, history: dict):
        self.engine, self.store, self.run, self.history = engine, engine.store, run, history
        self.codec = engine.codec
        self.run_id, self.owner, self.attempt = run["run_id"], run["owner"], run["retry_count"]
        self.real = asyncio.get_running_loop()
        started = run["started_at"] if run["started_at"] is not None else engine.clock()
        self.loop = _WorkflowLoop(self, started)
        # Where a retried or resumed attempt's new timers and waits count from.
        self.base = run.get("attempt_started_at") or started
        self._random: Optional[random.Random] = None
        self.next_step = 1
        self.last_recorded = max(history) if history else 0
        self.seq = max((row["seq"] or 0 for row in history.values()), default=0) \
            if history else 0
        self.recorded: list = []  # heap of (seq, step): recorded outcomes of called steps
        self.unsequenced: list = []  # called steps with an outcome recorded but no seq yet
        self.arrived: list = []  # heap of (seq, step, row, exception): new outcomes, durable
        self.unsettled: set = set()  # seqs whose record is being written
        self.targets: dict = {}  # step -> (kind, what its outcome goes to)
        self.waits: dict[int, _Wait] = {}  # durable waits not over yet
        self.unchecked: set = set()  # waits to look at the next check
        self.timers: dict[int, int] = {}  # id(timer handle) -> step
        self.inflight: dict[int, asyncio.Task] = {}  # step -> its activity's task
        self.starting: list = []  # activities called in this activation
        self.abandoned: set = set()  # steps the workflow cancelled while in flight
        self.begun: set = set()  # steps whose activity task has begun
        self.finishing: set = set()  # steps whose outcome is being recorded
        self.writes: list = []  # (row, event, extra) to record after this activation
        self.markers: list = []  # (row, event) of patch markers, for the next write
        self.resolutions: list = []  # (future, value) settled after those writes
        self.flushing: Optional[asyncio.Future] = None
        self.fatal: Optional[BaseException] = None  # fails the attempt, whatever is caught
        self.stop: Optional[BaseException] = None  # ends the execution (not the run)
        self.closing = False  # the workflow ended: nothing new starts
        self.torn_down = False
        self.successor: Optional[str] = None  # continue_as_new's input
        self.notify = _Notify(self.real)
        self.inbox: Optional[int] = None  # the run's inbox count at the last check
        self.waited = False  # waited in memory since the last outcome
        self.looked_until = -math.inf  # deadline up to which the waits were looked at
        self.idle = False  # the driver only waits for activities in flight (see pump)
        self.main: Optional[asyncio.Task] = None
        self.returns: Any = Any  # the workflow's declared result type (see drive)
        self.ctx = WorkflowContext(self, run)

    @property
    def random(self) -> random.Random:
        """The run's generator, seeded from its id (a str seed is hashed stably)."""
        if self._random is None:
            self._random = random.Random(self.run_id)
        return self._random

    # -- numbering and history
    def peek(self) -> int:
        """The next step number (runs recorded by older versions had ``value`` steps for
        ctx.now() and the like: they are passed over)."""
        step = self.next_step
        while step in self.history and self.history[step]["kind"] == "value":
            step += 1
        return step

    def new_step(self) -> int:
        step = self.next_step
        if step in self.history:
            step = self.peek()
        self.next_step = step + 1
        return step

    def usable(self) -> None:
        """Refuse a ctx call made outside this run's workflow code, or after it ended."""
        if asyncio._get_running_loop() is not self.loop:
            raise RunStateError(
                f"the context of run {self.run_id} ({self.run['workflow_name']!r}) is used "
                + ("after its execution ended" if self.loop.is_closed() else
                   "outside its workflow code (from another run, an activity or the "
                   "application)") + "; use ctx only inside the workflow it was given to",
                run_id=self.run_id, status="ended" if self.loop.is_closed() else "")

    def refuse(self, what: str) -> BaseException:
        error = WorkflowLoopError(
            f"workflow code of run {self.run_id} ({self.run['workflow_name']!r}) called "
            f"loop.{what}(): a workflow runs on a deterministic loop that does no I/O, "
            "threads or subprocesses; do that in an activity (ctx.execute_activity)")
        self.fatal = self.fatal or error
        return error

    def check_replay(self, step: int, record: dict, kind: str, name: str) -> None:
        if record["kind"] == kind and (kind == "timer" or record["name"] == name):
            return
        error = NonDeterminismError(
            f"step {step} of run {self.run_id} (workflow {self.run['workflow_name']!r}) was "
            f"recorded as {record['kind']} {record['name']!r} but the code now calls "
            f"{kind} {name!r}; a workflow must call its steps in the same order every "
            "time it runs: branch new code with `if ctx.patched(\"change-id\"):` so "
            "that runs started with the old code keep its path, or let them finish "
            "(or cancel them) before reordering, adding or removing steps",
            run_id=self.run_id, step=step, recorded=record["name"], requested=name)
        self.fatal = self.fatal or error
        raise error

    def begin(self, kind: str, name: str) -> tuple[int, Optional[dict]]:
        """Every step kind starts here: its number and, if the run recorded the step
        before, its record -- of the same kind and name, or NonDeterminismError (the
        code changed under the run)."""
        step = self.next_step
        record = self.history.get(step)
        if record is not None and record["kind"] == "value":
            step = self.peek()
            record = self.history.get(step)
        self.next_step = step + 1
        if record is not None:
            self.check_replay(step, record, kind, name)
        return step, record

    def note(self, row: dict, event: tuple, extra: tuple = ()) -> None:
        """Record a new step's row (and its event) right after this activation: with
        the steps it called, in one write."""
        if not self.torn_down:
            self.writes.append((row, event, extra))

    def expect(self, step: int, record: dict) -> None:
        """The recorded outcome of a called step reaches the workflow in its turn."""
        if record["seq"] is not None:
            heapq.heappush(self.recorded, (record["seq"], step))
        else:  # decided by an approver, or recorded by an older version
            self.unsequenced.append(step)

    def row(self, step: int, name: str, kind: str, status: str, input: Optional[str] = None,
            output: Optional[str] = None, deadline: Optional[float] = None, attempts: int = 1,
            started_at: Optional[float] = None) -> dict:
        return {"run_id": self.run_id, "step": step, "name": name, "kind": kind,
                "status": status, "input": input, "output": output, "error": None,
                "attempts": attempts, "run_attempt": self.attempt,
                "started_at": self.loop._now if started_at is None else started_at,
                "completed_at": None, "seq": None, "deadline": deadline}

    def blocked(self) -> bool:
        """Whether a new step that works (an activity, a child) may not start now."""
        if self.closing:
            return True
        if self.owner in self.engine.draining:  # the worker stops: give the run back
            self.stop = self.stop or _Released(self.run_id)
            return True
        return False

    # -- steps
    def activity(self, definition: _ActivityDef, args: tuple, kwargs: dict) -> _Step:
        (step, record), future, attempts = self.begin("activity", definition.name), \
            _ActivityStep(loop=self.loop), 0
        future.step = step
        if definition.typed or self.codec is not _CODEC and definition.returns is not Any:
            future.returns = definition.returns
        self.targets[step] = ("activity", future)
        if record is not None:
            # A failure in an earlier attempt of the run runs again (that is what a
            # workflow retry means); any other outcome is the step's.
            if record["status"] == "completed" or (record["status"] in ("failed", "cancelled")
                                                  and record["run_attempt"] == self.attempt):
                self.expect(step, record)
                return future
            if record["run_attempt"] == self.attempt:
                attempts = record["attempts"]  # crashed while retrying: keep counting
        if self.closing or self.engine.draining and self.blocked():
            return future
        # It starts right after this activation (nothing else runs on the real loop
        # meanwhile): in a task of its own, or, alone, in the driver (see launch).
        self.starting.append((step, future, definition, args, kwargs, attempts))
        return future

    def lone(self) -> Optional[tuple]:
        """The one activity the last activation called, taken to run in the driver, if
        it is all there is: nothing else ready, in flight, awaited, to write, or ending
        the execution (see step)."""
        if len(self.starting) != 1 or self.run["deadline_at"] is not None or (
                self.loop._ready or self.writes or self.resolutions or self.inflight
                or self.waits or self.recorded or self.unsequenced or self.arrived
                or self.unsettled or self.stop or self.fatal or self.main.done()
                or self.successor is not None or self.starting[0][1].cancelled()):
            return None
        return self.starting.pop()

    def launch(self) -> None:
        """Start the activities called in the last activation, each in a task of its own."""
        for step, future, definition, args, kwargs, attempts in self.starting:
            if future.cancelled():
                continue
            task = asyncio.Task(self.activity_task(step, definition, args, kwargs, attempts),
                                loop=self.real)
            self.inflight[step] = task
            task.add_done_callback(lambda t, step=step: self.ended(step, t))
        self.starting.clear()

    def ended(self, step: int, task: asyncio.Task) -> None:
        """An activity's task is done (normally ``activity_task`` said so already; not
        if it was cancelled before it started)."""
        if self.inflight.get(step) is task:
            del self.inflight[step]
            self.notify.wake()

    def abandon(self, step: int) -> None:
        """The workflow cancelled a step in flight: its activity is cancelled too."""
        task = self.inflight.get(step)
        if task is not None and not task.done():
            self.abandoned.add(step)
            # Its outcome stands, whole, once being recorded. A task cancelled before it
            # began would run nothing, not even the record that it was given up: it is
            # left to begin, and record that without running the activity.
            if step not in self.finishing and step in self.begun:
                task.cancel()

    def timer(self, when: float, callback: Callable, args: tuple, context: Any,
              name: str = "timer", future: Optional[asyncio.Future] = None,
              absolute: bool = False) -> asyncio.TimerHandle:
        """A durable timer: a step recorded when it fires (``ctx.sleep``'s also when set,
        every pending one when the run parks). Its deadline is the workflow's time plus
        the delay, the same on every replay; in a retried or resumed attempt, a timer
        its history had not fired counts from the attempt's start (``absolute``: a
        wall-clock deadline, as given)."""
        self.usable()
        if not absolute and not when - self.loop._now <= _MAX_SECONDS:  # NaN too
            raise ValueError(
                f"a timer of run {self.run_id} was set {when - self.loop._now:g} s ahead "
                f"(asyncio.sleep, wait_for or timeout in the workflow); at most "
                f"{_MAX_SECONDS:g} ({_MAX_TEXT})")
        step, record = self.begin("timer", name)
        context = context if context is not None else contextvars.copy_context()
        if record is not None:
            if record["status"] != "completed" and record["run_attempt"] != self.attempt:
                record = None  # an earlier attempt's timer that had not fired: set anew
            elif record["status"] != "completed":
                when = _recorded_deadline(record, when)
        if record is None and not absolute:
            when += max(0.0, self.base - self.loop._now)
        handle = asyncio.TimerHandle(when, callback, args, self.loop, context)
        self.targets[step] = ("timer", (handle, callback, args, context))
        if record is not None and record["status"] == "completed":
            self.expect(step, record)
            return handle
        wait = _Wait("timer", step, name, when, handle)
        if record is not None:
            wait.row = record
        elif future is not None:  # ctx.sleep: the timer is set as a step of its own
            wait.row = self.row(step, name, "timer", "waiting", output=_encode(when),
                                deadline=when, input=_encode({"until": when}))
            self.note(wait.row, ("timer_set", {"step": step, "wake_at": when,
                                               "at": _dt(when).isoformat()}))
        self.waits[step] = wait
        self.timers[id(handle)] = step
        return handle

    def timer_cancelled(self, handle: asyncio.TimerHandle) -> None:
        step = self.timers.pop(id(handle), None)
        wait = self.waits.pop(step, None) if step is not None else None
        if wait is not None:
            self.forget(wait)

    def forget(self, wait: _Wait) -> None:
        """A wait the workflow gave up before it ended: its row says so."""
        self.unchecked.discard(wait.step)
        if wait.row is None or wait.row["status"] != "waiting" or self.torn_down:
            return
        wait.row = {**wait.row, "status": "cancelled"}
        event = ("step_cancelled", {"step": wait.step, "name": wait.name, "kind": wait.kind})
        if wait.kind != "approval":
            self.writes.append((wait.row, event, ()))
            return
        # An approver may have decided since the last look: that decision stays recorded
        # (the workflow gave the wait up; it is not used), so only a row still waiting
        # is cancelled -- and only while the run is ours.
        self.writes.append((None, None, self.store.approval_given_up_ops(
            self.run_id, self.owner, wait.step, self.engine.clock(), event)))

    def wait(self, kind: str, name: str, timeout: Optional[float], event: str) -> _Step:
        """A signal or approval wait: its row is recorded with the deadline, then a check
        (a signal stored already is taken at once) or a decision ends it."""
        (step, record), future = self.begin(kind, name), _Step(loop=self.loop)
        self.targets[step] = (kind, future)
        if record is not None:
            if record["status"] in ("completed", "failed"):
                self.expect(step, record)
                return future
            if record["run_attempt"] != self.attempt:
                record = None  # an earlier attempt's wait: begins anew
        if record is not None:
            deadline = _recorded_deadline(record, None)
            row = record
        else:
            deadline = (None if timeout is None
                        else max(self.loop.time(), self.base) + timeout)
            row = self.row(step, name, kind, "waiting", deadline=deadline, output=_encode(deadline),
                           input=_encode({"timeout": timeout, "deadline": deadline}))
            extra = self.store.approval_wait_ops(self.run_id, name) if kind == "approval" \
                else ()
            self.note(row, (event, {"step": step, "name" if kind == "signal" else "key": name,
                                    "timeout": timeout}), extra)
        wait = _Wait(kind, step, name, deadline, future, row)
        self.waits[step] = wait
        if kind == "signal" or record is not None:
            self.unchecked.add(step)
        future.on_cancel = lambda: self.waits.pop(step, None) and self.forget(wait)
        return future

    def start_child(self, workflow_name: str, input_text: Optional[str],
                    workflow_id: Optional[str], record: Optional[dict], step: int) -> _Step:
        future = _Step(loop=self.loop)
        if record is not None:
            self.resolutions.append((future, self.child_handle(step, record)))
        elif not self.blocked():
            row = self.row(step, workflow_name, "child", "waiting", input=input_text)
            self.writes.append((row, None, (workflow_name, input_text, workflow_id, future)))
        return future

    def child_handle(self, step: int, record: dict) -> ChildWorkflowHandle:
        child_id = _loads(record["output"])["run_id"]
        outcome = _Step(loop=self.loop)
        definition = _WORKFLOWS.get(record["name"])  # its result decoded by its annotation
        if definition is not None and definition.returns is not Any:
            outcome.returns = definition.returns
        self.targets[step] = ("child", outcome)
        if record["status"] in ("completed", "failed"):
            self.expect(step, record)
        else:
            self.waits[step] = _Wait("child", step, record["name"], None, outcome, record,
                                     child_id)
            self.unchecked.add(step)
        return ChildWorkflowHandle(child_id, record["name"], outcome)

    # -- outcomes
    def allocate(self) -> int:
        self.seq += 1
        self.unsettled.add(self.seq)
        return self.seq

    def arrive(self, step: int, row: dict, exc: Optional[BaseException] = None) -> None:
        self.unsettled.discard(row["seq"])
        heapq.heappush(self.arrived, (row["seq"], step, row, exc))

    def deliver(self, step: int, row: dict, exc: Optional[BaseException] = None) -> None:
        """Hand a step's outcome to the workflow (an activation follows)."""
        completed, loop = row["completed_at"], self.loop
        if completed is not None and completed > loop._now:
            loop._now = completed
        self.waited = False
        kind, target = self.targets.pop(step)  # delivered once: nothing kept per step
        if kind == "activity":  # the common case first: no wait to end
            if exc is None and row["status"] == "completed" and target.returns is Any \
                    and self.codec is _CODEC and not target.done():
                target.set_result(_loads(row["output"]))
                return
        elif kind == "timer":
            handle, callback, args, context = target
            self.timers.pop(id(handle), None)
            self.waits.pop(step, None)
            if not handle.cancelled():
                self.loop.call_soon(callback, *args, context=context)
            return
        self.waits.pop(step, None)
        if target.done():  # given up by the workflow (a race it lost, a timeout)
            if kind == "signal" and row["status"] == "completed":
                self.give_back(step, row)
            return
        status = row["status"]
        if status == "cancelled":
            target.cancel()
        elif status == "completed":
            value = _loads(row["output"])
            if kind == "child":
                value = value["result"]
            if (target.returns is not Any or self.codec is not _CODEC) and kind != "approval":
                try:  # (an approval's outcome is ours: True or False)
                    value = _from_data(self.codec, value, target.returns,
                                       f"the recorded result of step {step} ({row['name']}) "
                                       f"of run {self.run_id}")
                except _Undecodable as exc:  # not the workflow's to see: resumes later
                    self.targets[step] = (kind, target)
                    self.stop = self.stop or _stopped(self.run_id, exc)
                    return
                except SerializationError as exc:
                    target.set_exception(exc)
                    return
            target.set_result(value)
        elif exc is not None:
            target.set_exception(exc)
        else:
            error = _loads(row["error"])
            if kind in ("signal", "approval"):
                target.set_exception(TimeoutError(error["message"]))
            elif kind == "child":
                target.set_exception(WorkflowFailedError(
                    error["message"], run_id=error["run_id"], status=error["status"],
                    error=error["error"], non_retryable=error.get("non_retryable", False)))
            else:
                target.set_exception(_rebuild_error(error, self.run_id, step))

    def give_back(self, step: int, row: dict) -> None:
        """The signal taken for a wait the workflow gave up before the signal reached it
        goes back to the run's signals (the next wait for its name takes it); the wait's
        row records that, so a replay does the same."""
        self.writes.append(({**row, "status": "cancelled", "completed_at": None},
                            ("signal_returned", {"step": step, "name": row["name"]}),
                            self.store.signal_returned_ops(self.run_id, step)))

    async def record(self, row: dict, event: Optional[tuple], in_status: str = "running",
                     extra: tuple = ()) -> None:
        """Record a step, fenced by this execution's owner token and the run's status
        (``in_status``: running, or compensating for a compensation: once a run compensates,
        what is left of its forward execution can record nothing)."""
        await self.write([(row, event)], in_status, extra)

    async def write(self, items: list, in_status: str = "running", extra: tuple = ()) -> None:
        """Record steps in one transaction, with the patch markers not recorded yet: a
        marker matters only to a replay that finds steps recorded after it, so it goes
        with the next write, and every later write waits until it is in."""
        if self.flushing is None and not self.markers:
            return await self.write_now(items, in_status, extra)
        while self.flushing is not None and not self.flushing.done():
            await asyncio.wait({self.flushing})
        markers, self.markers = self.markers, []
        if markers:
            self.flushing = self.real.create_future()
            items = markers + items
        try:
            await self.write_now(items, in_status, extra)
        finally:
            if markers:
                self.flushing.set_result(None)
                self.flushing = None

    async def write_now(self, items: list, in_status: str, extra: tuple) -> None:
        now = self.engine.clock()
        for row, _ in items:
            if row["completed_at"] is None and row["status"] not in ("waiting", "registered"):
                row["completed_at"] = now
            if self.store.max_value is not None:
                self.fits(row)
        try:
            ours = await self.store.record_steps(self.run_id, self.owner, now, items, in_status,
                                                 list(extra))
        except Exception as exc:
            raise self.unstored(exc, items[0][0]) from exc
        if not ours:
            raise _LostOwnership(self.run_id)

    def fits(self, row: dict) -> None:
        """A SerializationError (fatal) if the row is too large for the database."""
        try:
            for column in ("input", "output", "error"):
                self.store.fits(f"the {column} of step {row['step']} ({row['name']}) "
                                f"of run {self.run_id}", row[column])
        except SerializationError as error:  # it always will be refused
            self.fatal = self.fatal or error
            raise

    def unstored(self, exc: Exception, row: dict) -> BaseException:
        """What a write the database refused means: its trouble, passing (the execution
        stops), or a value it will always refuse (too large for it, say: fatal)."""
        if self.store.transient(exc):
            return _StoreFailed(self.run_id, exc)
        error = SerializationError(
            f"step {row['step']} ({row['name']}) of run {self.run_id} could not be "
            f"stored: {type(exc).__name__}: {exc}")
        self.fatal = self.fatal or error
        return error

    async def record_outcome(self, step: int, row: dict, event: tuple,
                             exc: Optional[BaseException] = None) -> None:
        """Record a new outcome with the next seq; it reaches the workflow in that order."""
        row["seq"] = self.allocate()
        try:
            await self.record(row, event)
        except BaseException:
            self.unsettled.discard(row["seq"])
            raise
        self.arrive(step, row, exc)

    async def activity_task(self, step: int, definition: _ActivityDef, args: tuple,
                            kwargs: dict, attempts: int) -> None:
        """An activity step on the real loop: its attempts, its outcome recorded, then
        handed to the workflow. A failure to record stops the execution."""
        self.begun.add(step)
        try:
            row, exc = await self.run_activity(step, definition, args, kwargs, attempts)
            self.arrive(step, row, exc)
        except asyncio.CancelledError:  # the execution stops: halt waits for the task
            pass
        except BaseException as exc:
            self.failed(step, exc)
        finally:
            self.inflight.pop(step, None)
            self.begun.discard(step)
            if self.idle:
                self.pump()
            else:
                self.notify.wake()

    def failed(self, step: int, exc: BaseException) -> None:
        """An activity's outcome could not be recorded: the execution stops (the
        database's trouble, or the run is no longer ours) or the attempt fails."""
        if isinstance(exc, (_StoreFailed, _LostOwnership, _Released)):
            self.stop = self.stop or exc
        elif isinstance(exc, SerializationError):
            pass  # fatal already
        elif isinstance(exc, Exception):  # a bug of ours: the attempt fails, visibly
            _log.error("run %s: step %d could not be completed", self.run_id, step,
                       exc_info=(type(exc), exc, exc.__traceback__))
            self.fatal = self.fatal or exc
        else:
            raise exc

    def pump(self) -> None:
        """Deliver outcomes here, in place of waking the driver, while it only waits for
        activities in flight and has nothing else to do (no wait, no deadline, nothing
        to write): a run of sequential steps then costs one turn of the real loop each."""
        while not (self.stop or self.writes or self.resolutions or self.fatal or self.waits
                   or self.recorded or self.unsequenced or self.successor is not None
                   or self.main.done() or self.torn_down):
            if not self.deliver_arrived():
                if self.inflight or self.unsettled or self.arrived:
                    return  # the driver goes on waiting
                break
            self.loop.run_until_idle()
            self.launch()
        self.notify.wake()

    def arguments(self, definition: _ActivityDef, args: tuple, kwargs: dict) -> str:
        """An activity's arguments as recorded, for people to read (never fails): plain
        JSON, else by the codec (declared types, own classes), else their repr -- but
        never past a codec of one's own (it may encrypt)."""
        if self.codec is _CODEC:
            try:
                return _encode({"args": args, "kwargs": kwargs}, _ENCODE_STRICT)
            except (TypeError, ValueError, RecursionError):
                pass
        try:
            return _dumps(definition.arguments(self.codec, args, kwargs, "arguments"),
                          "arguments")
        except SerializationError as exc:
            if self.codec is _CODEC:
                return _dumps_for_display({"args": args, "kwargs": kwargs})
            return _encode(f"<arguments the codec does not encode: {exc}>")

    async def run_activity(self, step: int, definition: _ActivityDef, args: tuple,
                           kwargs: dict, attempts: int, kind: str = "activity") -> tuple:
        """Attempt the activity with its retry policy and record its outcome: (row,
        exception or None). A workflow's step gets the next seq; a compensation none."""
        engine, policy = self.engine, definition.retry_policy
        started = engine.clock()
        arguments = self.arguments(definition, args, kwargs)
        in_status = "compensating" if kind == "compensation" else "running"
        while True:
            if attempts and self.owner in engine.draining:
                raise _Released(self.run_id)  # between attempts: the failures are recorded
            attempts += 1
            row = self.row(step, definition.name, kind, "", input=arguments,
                           attempts=attempts, started_at=started)
            token = _CURRENT_ACTIVITY.set((self.run, step, definition.name, attempts))
            _IN_FLIGHT.count += 1  # in flight until it returns or its timeout abandons it
            error: Optional[BaseException] = None
            given_up = False
            try:
                if step in self.abandoned:  # given up before its task began: not run
                    raise asyncio.CancelledError()
                call = (definition.fn(*args, **kwargs) if definition.is_async
                        else definition.call(args, kwargs))
                if definition.timeout is None:
                    result = await call
                else:
                    result = await _with_timeout(
                        call, definition.timeout,
                        lambda: ActivityTimeoutError(
                            f"activity {definition.name!r} (step {step} of run "
                            f"{self.run_id}) timed out after {definition.timeout} s"))
                if definition.typed or self.codec is not _CODEC:
                    result = _to_data(self.codec, result, definition.returns,
                                      f"the result of activity {definition.name!r} (step "
                                      f"{step} of run {self.run_id})", "result")
                try:
                    output = _encode(result, _ENCODE_STRICT)
                except (TypeError, ValueError, RecursionError):  # say which
                    output = _dumps(result, f"the result of activity {definition.name!r} "
                                            f"(step {step} of run {self.run_id})")
            except asyncio.CancelledError as exc:
                if step in self.abandoned:  # the workflow gave the step up
                    error, given_up = exc, True
                elif _cancelling(asyncio.current_task()):
                    raise  # the execution stops (see halt)
                else:  # raised by the activity itself: a failure like any other
                    error = exc
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # SystemExit (argparse, say), GeneratorExit...
                error = exc
            finally:
                _IN_FLIGHT.count -= 1
                _CURRENT_ACTIVITY.reset(token)
            if given_up:
                row.update(status="cancelled", error=_dumps_for_display(_error_record(error)))
                return await self.final(row, ("step_cancelled", {
                    "step": step, "name": definition.name, "kind": kind}), in_status), None
            if error is None:
                row["status"], row["output"] = "completed", output
                return await self.final(row, ("step_completed", {
                    "step": step, "name": definition.name, "attempts": attempts,
                    "duration_ms": round((engine.clock() - started) * 1e6) / 1000}), in_status), None
            final = not policy.retryable(error)  # recorded: a replay says so too
            retry = attempts <= policy.max_retries and not final and not isinstance(
                error, SerializationError)
            delay = policy.calculate_delay(attempts - 1) if retry else None
            record = _error_record(error)
            if final:
                record["non_retryable"] = True
            row.update(status="retrying" if retry else "failed",
                       error=_dumps_for_display(record))
            event = ("step_failed", {"step": step, "name": definition.name,
                                     "attempt": attempts, "error": _error_text(error),
                                     "retry_in": delay, **({"non_retryable": True}
                                                           if final else {})})
            if not retry:
                if not isinstance(error, Exception):  # the workflow gets an Exception
                    error = _rebuild_error(record, self.run_id, step)
                return await self.final(row, event, in_status), error
            await self.record(row, event, in_status)
            _log.info("run %s step %d (%s) attempt %d failed, retrying in %.2fs: %s",
                      self.run_id, step, definition.name, attempts, delay, _error_text(error))
            try:
                await engine.sleep(delay)
            except asyncio.CancelledError:
                if step not in self.abandoned:
                    raise
                row.update(status="cancelled")
                return await self.final(row, ("step_cancelled", {
                    "step": step, "name": definition.name, "kind": kind}), in_status), None

    async def final(self, row: dict, event: tuple, in_status: str) -> dict:
        """Record an activity's outcome, whole even if the workflow gives the step up
        meanwhile (with the next seq for a workflow's step)."""
        if in_status == "running":
            self.seq += 1  # (allocate's, inline)
            self.unsettled.add(self.seq)
            row["seq"] = self.seq
        self.finishing.add(row["step"])  # not cancelled now: see abandon and halt
        try:
            if self.flushing is None and not self.markers:  # the common case: write_now's
                now = self.engine.clock()  # (a coroutine less)
                if row["completed_at"] is None:  # (a retry cancelled in its backoff: set)
                    row["completed_at"] = now
                if self.store.max_value is not None:
                    self.fits(row)
                try:
                    ours = await self.store.record_step(self.run_id, self.owner, now, row,
                                                        event, in_status)
                except Exception as exc:
                    raise self.unstored(exc, row) from exc
                if not ours:
                    raise _LostOwnership(self.run_id)
            else:
                await self.write([(row, event)], in_status)
        except BaseException:
            self.unsettled.discard(row["seq"])
            raise
        finally:
            self.finishing.discard(row["step"])
        return row

    # -- the driver
    def call(self, definition: _WorkflowDef) -> Coroutine:
        """The workflow function called with the run's input: its parameters bound from
        the input's keys and decoded by their annotations (also ``ctx.input_data``).
        An input that does not fit fails the run at once: a retry cannot mend it."""
        ctx, what = self.ctx, f"the input of run {self.run_id}"
        try:
            if definition.parameters is None:
                if self.codec is not _CODEC:
                    ctx.input_data = _from_data(self.codec, ctx.input_data, Any, what)
                return definition.fn(ctx)
            ctx.input_data = arguments = definition.arguments(self.codec, ctx.input_data, what)
            return definition.fn(ctx, **arguments)
        except _Undecodable as exc:
            raise _stopped(self.run_id, exc) from exc
        except (ValueError, SerializationError) as exc:
            failure = NonRetryableError(f"{what} does not fit workflow {definition.name!r}: "
                                        f"{exc}")

            async def refused() -> NoReturn:
                raise failure
            return refused()

    async def drive(self, definition: _WorkflowDef) -> tuple:
        """Step the workflow until it ends (("completed", output), ("failed", error),
        ("continued", input)) or is parked (("parked",)). Raises what stops the
        execution but not the run (_StoreFailed, _LostOwnership, _Released, a
        cancellation from outside); steps in flight are stopped first."""
        hub = self.engine.hub  # a signal to the run sets notify (see check)
        hub.join(hub.signal_waiters, self.run_id, self.notify)
        try:
            self.returns = definition.returns
            self.main = asyncio.Task(self.call(definition), loop=self.loop)
            return await self.step()
        except BaseException:
            await self.halt(abandon=False)
            raise
        finally:
            hub.leave(hub.signal_waiters, self.run_id, self.notify)
            self.teardown()

    async def step(self) -> tuple:
        engine, loop, deadline = self.engine, self.loop, self.run["deadline_at"]
        while True:
            self.notify.clear()  # before looking: nothing set from here on is missed
            loop.run_until_idle()
            if self.starting:
                call = self.lone()
                # A lone activity (see lone) runs in the driver itself and its outcome goes
                # to the workflow at once: a run of sequential steps stays in this loop,
                # one step per turn of the real loop.
                while call is not None:
                    step, _, definition, args, kwargs, attempts = call
                    try:
                        row, exc = await self.run_activity(step, definition, args, kwargs,
                                                           attempts)
                    except asyncio.CancelledError:  # the driver is what is cancelled
                        raise
                    except BaseException as failure:
                        self.failed(step, failure)
                        break
                    self.unsettled.discard(row["seq"])  # nothing else was in flight
                    self.deliver(step, row, exc)
                    loop.run_until_idle()
                    call = self.lone()
                self.launch()
            if self.stop is not None:
                if isinstance(self.stop, _Released) and self.inflight:
                    await asyncio.wait(list(self.inflight.values()))  # the grace period
                raise self.stop
            if self.writes or self.resolutions:
                await self.flush()
                continue
            if self.fatal is not None or self.main.done() or self.successor is not None:
                return await self.end()
            now = engine.clock()
            if deadline is not None and now >= deadline:
                return await self.end(timed_out=True)
            if (self.recorded or self.unsequenced or self.arrived) and await self.deliver_next():
                continue
            due = min(((w.deadline, w.step) for w in self.waits.values()
                       if w.deadline is not None), default=None) if self.waits else None
            # (No look while an outcome awaits its turn: that outcome comes first.)
            lookable = not self.unsettled and not self.arrived and any(
                w.kind != "timer" for w in self.waits.values())
            if due is not None and due[0] <= now:
                if lookable and self.looked_until < due[0]:
                    # First what came before the deadline (the run may have been parked,
                    # or its worker down, when it did): a signal sent in time is taken.
                    self.looked_until = due[0]
                    await self.check(until=due[0])
                    continue
                await self.expire(self.waits.pop(due[1]))
                continue
            if lookable and (self.unchecked or self.notify.came):
                self.notify.came = False
                await self.check()
                continue
            wake = min((t for t in (due and due[0], deadline) if t is not None), default=None)
            if self.inflight or self.unsettled or self.arrived:
                # Working: until an outcome, a deadline, or (another process may send
                # a signal or decide) a look at the run's inbox now and then.
                polls = any(w.kind != "timer" for w in self.waits.values())
                if wake is None and not polls:
                    self.idle = True  # see pump
                    try:
                        await self.notify.wait()
                    finally:
                        self.idle = False
                elif not await engine.wait(self.notify, None if wake is None else
                                           wake - now, _SLEEP_IN_MEMORY if polls else None):
                    self.notify.came = self.notify.came or polls
                continue
            if await self.quiescent(now, wake):
                return ("parked",)

    async def deliver_next(self) -> bool:
        """Hand the workflow its next outcome, if one may go now: a replay's recorded
        ones first, in their order; then new ones, each once recorded, in seq order."""
        if self.recorded:
            self.deliver_recorded()
            return True
        if self.unsequenced:
            await self.sequence(self.unsequenced.pop(0))
            return True
        return self.deliver_arrived()

    def deliver_arrived(self) -> bool:
        """Deliver the next new outcome, if every one before it is recorded."""
        if not self.arrived or (self.unsettled and self.arrived[0][0] > min(self.unsettled)):
            return False
        _, step, row, exc = heapq.heappop(self.arrived)
        self.deliver(step, row, exc)
        return True

    def deliver_recorded(self) -> None:
        step = heapq.heappop(self.recorded)[1]
        self.deliver(step, self.history[step])

    async def flush(self) -> None:
        """Record what the last activation wrote (one transaction), then settle the
        futures of the steps that only wrote, in call order."""
        writes, self.writes = self.writes, []
        resolutions, self.resolutions = self.resolutions, []
        items, extra, children = [], [], []
        for row, event, more in writes:
            if row is None:  # statements of their own (fenced by their conditions)
                extra += more
            elif event is None:  # a child's start: its row, the child run, its handle
                name, input_text, workflow_id, future = more
                try:
                    options = await _workflow_options(self.store, name)
                except WorkflowNotFoundError as exc:
                    resolutions.append((future, exc))
                    continue
                except Exception as exc:  # reading the live workers failed
                    raise _StoreFailed(self.run_id, exc) from exc
                child = _new_run(name, input_text, workflow_id, options,
                                 self.engine.clock(), parent_run_id=self.run_id)
                row["output"] = _encode({"run_id": child["run_id"]})
                items.append((row, ("child_started", {
                    "step": row["step"], "workflow_name": name,
                    "child_run_id": child["run_id"]})))
                extra += self.store.child_ops(self.run_id, row["step"], child)
                children.append((future, row))
            else:
                items.append((row, event))
                extra += more
        if items:
            await self.write(items, extra=extra)
        elif extra:
            try:
                await self.store.batch(list(extra))
            except Exception as exc:
                raise _StoreFailed(self.run_id, exc) from exc
        for future, row in children:
            resolutions.append((future, self.child_handle(row["step"], row)))
            self.unchecked.discard(row["step"])  # just started: its end notifies
        if children:
            self.engine.hub.run_due()  # this process's workers take them at once
        if items:
            self.engine.hub.changed(self.run_id)  # get_event, start_workflow(wait=True)
        for future, value in resolutions:
            _settle_future(future, value)

    async def sequence(self, step: int) -> None:
        """An outcome recorded without a seq (an approver's decision; a row of an older
        version) gets the next one before it reaches the workflow."""
        row = {**self.history[step]}
        event = (("approval_received", {"step": step, "key": row["name"]})
                 if row["kind"] == "approval" else ("step_sequenced", {"step": step}))
        await self.record_outcome(step, row, event)

    async def expire(self, wait: _Wait) -> None:
        """A wait's deadline has come: a timer fires, a signal or approval wait times out."""
        step, now = wait.step, self.engine.clock()
        self.unchecked.discard(step)
        if wait.kind == "timer":
            self.timers.pop(id(wait.target), None)
            row = wait.row or self.row(step, wait.name, "timer", "waiting",
                                       deadline=wait.deadline, output=_encode(wait.deadline))
            row = {**row, "status": "completed", "completed_at": None,
                   "run_attempt": self.attempt}
            return await self.record_outcome(step, row, ("timer_fired", {
                "step": step, "late_ms": round((now - wait.deadline) * 1000, 3)}))
        what = "signal" if wait.kind == "signal" else "decision on approval"
        error = TimeoutError(f"no {what} {wait.name!r} came within "
                             f"{_loads(wait.row['input'])['timeout']} s (step {step} of "
                             f"run {self.run_id})")
        row = {**wait.row, "status": "failed", "error": _dumps_for_display(_error_record(error)),
               "completed_at": None, "run_attempt": self.attempt}
        key = "name" if wait.kind == "signal" else "key"
        event = (f"{wait.kind}_timed_out", {"step": step, key: wait.name,
                                            "timeout": _loads(wait.row["input"])["timeout"]})
        if wait.kind == "signal":
            return await self.record_outcome(step, row, event, error)
        # An approval: only while no decision has come (the approver writes the row).
        row["seq"] = self.allocate()
        try:
            timed_out = await self.store.time_out_approval(self.run_id, self.owner, now, row,
                                                           event)
        except Exception as exc:
            self.unsettled.discard(row["seq"])
            raise _StoreFailed(self.run_id, exc) from exc
        if timed_out is None:
            self.unsettled.discard(row["seq"])
            raise _LostOwnership(self.run_id)
        if timed_out:
            return self.arrive(step, {**row, "completed_at": now}, error)
        self.unsettled.discard(row["seq"])
        self.waits[step] = wait  # decided just in time: the check takes the decision
        wait.deadline = None
        self.unchecked.add(step)
        self.notify.came = True

    async def check(self, until: Optional[float] = None) -> None:
        """Look for what the waits wait for: a stored signal (taken now), a decision, a
        child's end -- with ``until``, only what came by then (each of them, all the
        waits). The inbox count read first tells the park whether something came after
        this look."""
        try:
            inbox = await self.store.inbox(self.run_id)
        except Exception as exc:
            raise _StoreFailed(self.run_id, exc) from exc
        if inbox is None:
            raise _LostOwnership(self.run_id)
        steps = (self.waits.keys() if inbox != self.inbox or until is not None
                 else self.unchecked)
        self.inbox = inbox
        waits = [self.waits[s] for s in sorted(steps) if s in self.waits]
        self.unchecked.clear()
        for wait in waits:
            if wait.kind == "timer" or wait.target.done() or wait.step not in self.waits:
                continue
            if wait.kind == "signal":
                await self.take_signal(wait, until)
            elif wait.kind == "approval":
                await self.take_decision(wait, until)
            else:
                await self.take_child(wait, until)

    async def take_signal(self, wait: _Wait, until: Optional[float]) -> None:
        now, seq = self.engine.clock(), self.allocate()
        row = {**wait.row, "status": "completed", "completed_at": now, "seq": seq,
               "run_attempt": self.attempt}
        try:
            taken = await self.store.consume_signal(self.run_id, self.owner, now, wait.name, row,
                                                    until)
        except Exception as exc:
            self.unsettled.discard(seq)
            raise _StoreFailed(self.run_id, exc) from exc
        if taken is None:
            self.unsettled.discard(seq)
            raise _LostOwnership(self.run_id)
        if not taken[0]:
            self.unsettled.discard(seq)
            return
        del self.waits[wait.step]
        self.arrive(wait.step, {**row, "output": taken[1]})

    async def take_decision(self, wait: _Wait, until: Optional[float]) -> None:
        try:
            record = (await self.store.load_steps(self.run_id, wait.step)).get(wait.step)
        except Exception as exc:
            raise _StoreFailed(self.run_id, exc) from exc
        if record is not None and record["status"] == "completed" and (
                until is None or record["completed_at"] <= until):
            del self.waits[wait.step]
            await self.record_outcome(wait.step, {**record, "run_attempt": self.attempt},
                                      ("approval_received", {"step": wait.step,
                                                             "key": wait.name}))

    async def take_child(self, wait: _Wait, until: Optional[float]) -> None:
        try:
            child = await self.store.current_run(wait.child_id)
        except Exception as exc:
            raise _StoreFailed(self.run_id, exc) from exc
        if child is not None and (child["status"] not in _TERMINAL or (
                until is not None and (child["completed_at"] or 0) > until)):
            return
        details = {}
        if child is not None and child["status"] in ("failed", "compensated"):
            try:  # whether its failure ended its attempts at once: then the parent's too
                details = await self.store.failure(child["run_id"])
            except Exception as exc:
                raise _StoreFailed(self.run_id, exc) from exc
        del self.waits[wait.step]
        child_id, step = wait.child_id, wait.step
        row = {**wait.row, "run_attempt": self.attempt, "completed_at": None}
        if child is not None and child["status"] == "completed":
            row.update(status="completed", output=_encode(
                {"run_id": child_id, "result": _loads(child["output_data"])["result"]}))
            return await self.record_outcome(step, row, ("child_completed", {
                "step": step, "child_run_id": child_id}))
        status, error = ("deleted", "") if child is None else (child["status"],
                                                               child["error"] or "")
        final = bool(details.get("non_retryable"))
        failure = WorkflowFailedError(
            f"child run {child_id} of workflow {wait.name!r} "
            + {"cancelled": "was cancelled", "deleted": "no longer exists"}.get(status, status)
            + (f": {error}" if error else ""), run_id=child_id, status=status, error=error,
            non_retryable=final)
        row.update(status="failed", error=_dumps_for_display({
            **_error_record(failure), "run_id": child_id, "status": status, "error": error,
            **({"non_retryable": True} if final else {})}))
        await self.record_outcome(step, row, ("child_failed", {
            "step": step, "child_run_id": child_id, "status": status}), failure)

    async def quiescent(self, now: float, wake: Optional[float]) -> bool:
        """Nothing in flight, nothing to deliver: wait here a moment, or park the run
        (True) until its earliest deadline or something it waits for comes."""
        engine = self.engine
        kinds = {w.kind for w in self.waits.values()}
        # A stopping worker holds nothing; and people take longer than is worth holding
        # in memory: a run waiting for an approval parks at once.
        park_now = self.owner in engine.draining or "approval" in kinds
        if not park_now and wake is not None and wake - now <= _SLEEP_IN_MEMORY:
            await engine.wait(self.notify, wake - now, None)
            return False
        if not park_now and not self.waited and kinds & {"signal", "child"}:
            # A signal or a child's end soon after is taken without parking and
            # replaying the run.
            self.waited = True
            await engine.wait(self.notify, None if wake is None else wake - now,
                              _SLEEP_IN_MEMORY)
            self.notify.came = True  # look once more (another process may have sent)
            return False
        approvals = sorted((w.step, w.name) for w in self.waits.values()
                           if w.kind == "approval")
        # Its pending timers are recorded (ctx.sleep's are already): a replay keeps their
        # deadlines, and ctx.patched() knows the run has passed them.
        unrecorded = [w for w in self.waits.values() if w.kind == "timer" and w.row is None]
        for wait in unrecorded:
            wait.row = self.row(wait.step, wait.name, "timer", "waiting",
                                output=_encode(wait.deadline), deadline=wait.deadline,
                                input=_encode({"until": wait.deadline}))
        if unrecorded:
            await self.write([(w.row, ("timer_set", {
                "step": w.step, "wake_at": w.deadline, "at": _dt(w.deadline).isoformat()}))
                for w in unrecorded])
        if not self.waits and wake is None:
            _log.warning("run %s waits for nothing durable (no step, timer, signal, approval "
                         "or child): it is parked until a signal comes or it is cancelled",
                         self.run_id)
        try:
            parked = await self.store.suspend_run(self.run_id, self.owner, now, wake,
                                                  approvals[0][1] if approvals else None,
                                                  self.inbox if kinds - {"timer"} else None)
            run = None if parked else await self.store.get_run(self.run_id)
        except Exception as exc:
            raise _StoreFailed(self.run_id, exc) from exc
        if parked:
            return True
        if run is None or run["owner"] != self.owner or run["status"] != "running":
            raise _LostOwnership(self.run_id)
        self.notify.came = True  # something came after the last look: look again
        return False

    async def end(self, timed_out: bool = False) -> tuple:
        """The workflow ended (returned, raised, continued as new, failed for good, or
        its time is up). Its steps in flight finish first and their outcomes still reach
        it (an activity never awaited runs and is recorded; a branch of a failing gather
        registers its compensation); only a workflow timeout cancels them. The run's
        outcome is recorded after that."""
        self.closing = True
        main = self.main
        if timed_out:
            await self.halt(abandon=True)
            return ("failed", WorkflowTimeoutError(
                f"workflow {self.run['workflow_name']!r} (run {self.run_id}) timed out after "
                f"{self.run['timeout']:g} s"))
        error = self.fatal
        if error is None and self.successor is None and main.done():
            error = main.exception() if not main.cancelled() else RunStateError(
                f"the workflow of run {self.run_id} cancelled its own main task",
                run_id=self.run_id)
        await self.settle()
        if error is not None:
            return ("failed", self.fatal or error)
        if self.successor is not None:
            return ("continued", self.successor)
        result = main.result()
        if self.codec is _CODEC and _TYPED.plain(self.returns):  # plain JSON: as it is
            try:
                return ("completed", _encode({"result": result}, _ENCODE_STRICT))
            except (TypeError, ValueError, RecursionError):
                pass  # (said below)
        what = f"the result of workflow {self.run['workflow_name']!r}"
        try:
            result = _to_data(self.codec, result, self.returns, what, "result")
            return ("completed", _dumps({"result": result}, what))
        except SerializationError as exc:
            return ("failed", exc)

    async def settle(self) -> None:
        """Until no step is in flight: their outcomes recorded and delivered."""
        while True:
            self.notify.clear()
            self.loop.run_until_idle()
            if self.starting:
                self.launch()  # none, unless the failure's other branches go on
            if self.stop is not None:
                raise self.stop
            if self.writes or self.resolutions:
                await self.flush()
                continue
            if (self.recorded or self.unsequenced or self.arrived) and await self.deliver_next():
                continue  # (replaying a failure: its branches' too)
            if not self.inflight and not self.unsettled:
                return
            await self.notify.wait()

    async def halt(self, abandon: bool) -> None:
        """Stop the activities in flight and wait until they have (a thread ends when
        its function returns). ``abandon``: the workflow gives them up (each is recorded
        as cancelled, if it did not finish first); else the execution stops."""
        tasks = list(self.inflight.values())
        if abandon:
            self.abandoned.update(self.inflight)
        for step, task in self.inflight.items():
            if step not in self.finishing:  # a write half done is let finish
                task.cancel()
        while tasks and not all(task.done() for task in tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait(tasks)

    def teardown(self) -> None:
        """Close what is left of the workflow's tasks. Their ``finally`` blocks run;
        whatever they try is ignored (nothing starts, nothing is recorded)."""
        self.torn_down = self.closing = True
        self.writes.clear()
        tasks = [task for task in (self.main, *(self.loop._tasks or ()))
                 if task is not None and not task.done()]
        if tasks:
            real = _running_loop()
            _set_running_loop(self.loop)
            try:
                for task in tasks:
                    with contextlib.suppress(BaseException):
                        task.get_coro().close()
            finally:
                _set_running_loop(real)
        self.loop._ready.clear()
        self.loop._closed = True
        self.waits.clear()


# ---- engine: claims, leases, the watchdog -----------------------------------------------


class _Watchdog:
    """Keeps an engine's leases while something blocks its event loop.

    An ``async def`` activity that computes for long or calls ``time.sleep`` stops the
    event loop, and the heartbeats with it: the leases would expire, another worker
    would take the runs over and run the step again, and the same would happen to it
    -- a ping-pong without end. So a thread watches the loop. A timer on the loop
    marks every ``lease / 6`` seconds that the loop runs; once the loop has not run for
    a third of the lease, the thread renews the leases of the runs executing here
    through a connection of its own, fenced by their owner tokens only (a run
    cancelled meanwhile keeps its lease until its execution has stopped, as with the
    heartbeat), then logs a warning that names the activity (or workflow) blocking the
    loop and the line it is on -- from a thread of its own, since a log handler may be
    what blocks. A loop that never runs again keeps its runs until the process is
    killed; code that holds the GIL throughout (some C extensions) stops this thread
    too."""

    def __init__(self, engine: _Engine):
        self.engine, self.beat = engine, engine.lease / 6
        self.loop, self.loop_thread = asyncio.get_running_loop(), threading.get_ident()
        self.seen = time.monotonic()  # when the loop last ran the timer
        self.warned: Optional[float] = None  # the ``seen`` of the blockage warned about
        self.in_memory = engine.store.twin() is None
        self.stopped = threading.Event()
        threading.Thread(target=self._watch, daemon=True,
                         name=f"tinyworkflow watchdog {engine.worker_id}").start()
        self.handle = self.loop.call_later(self.beat, self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        if self.warned == self.seen:  # the blockage warned about has ended
            _log.warning("worker %s: the event loop runs again, after %.1f s blocked",
                         self.engine.worker_id, now - self.seen)
        self.seen = now
        self.handle = self.loop.call_later(self.beat, self._tick)

    def stop(self) -> None:
        self.stopped.set()
        self.handle.cancel()

    def _watch(self) -> None:
        engine, lease = self.engine, self.engine.lease
        loop, store = None, None  # a loop and a connection of the thread's own, when needed
        renewed, warned, outcome = 0.0, 0.0, ""
        try:
            while not self.stopped.wait(self.beat / 2) and not self.loop.is_closed():
                seen = self.seen
                blocked = time.monotonic() - seen  # since the loop last ran
                held = list(engine.leases.items())
                # (A loop that stopped, not blocked, executes nothing: its leases expire.)
                if blocked < lease / 3 or not held or not self.loop.is_running():
                    if store is not None:
                        loop.run_until_complete(self._close(store))
                    store, renewed, warned, outcome = None, 0.0, 0.0, ""
                    continue
                if time.monotonic() - renewed >= lease / 3:
                    if store is None:
                        store = engine.store.twin()
                        if store is not None:
                            loop = loop or asyncio.new_event_loop()
                            try:
                                loop.run_until_complete(store.connect())
                            except Exception as exc:
                                store, outcome = None, f"could not connect ({exc!r})"
                    if store is not None:
                        outcome = loop.run_until_complete(self._renew(store, held))
                    renewed = time.monotonic()
                if blocked >= warned + (lease if warned else 0):  # at once, then once a lease
                    self._warn(blocked, len(held), outcome)
                    self.warned, warned = seen, blocked
        finally:
            if store is not None:
                loop.run_until_complete(self._close(store))
            if loop is not None:
                loop.close()

    async def _renew(self, store: _Store, held: list) -> str:
        engine, lease, renewed, failed = self.engine, self.engine.lease, 0, None
        for owner, run in held:
            try:
                renewed += await asyncio.wait_for(store.renew_lease(  # the owner: fence enough
                    run["run_id"], owner, engine.clock(), time.time() + lease, None), lease / 3)
            except Exception as exc:
                failed = exc
        return f"{renewed} of {len(held)} renewed" + (f"; failed: {failed!r}" if failed else "")

    @staticmethod
    async def _close(store: _Store) -> None:
        with contextlib.suppress(Exception):
            await store.close()

    def _warn(self, blocked: float, held: int, outcome: str) -> None:
        leases = ("in memory, no other worker can take them over" if self.in_memory
                  else f"renewed from a thread ({outcome})")
        message = (f"worker {self.engine.worker_id}: the event loop has been blocked for "
                   f"{blocked:.1f} s (the lease is {self.engine.lease:g} s) {self._culprit()}. "
                   f"The leases of the runs executing here ({held}): {leases}. Code that "
                   "blocks belongs in a sync activity (a plain def runs in a thread) or behind "
                   "asyncio.to_thread.")
        # From a thread of its own: the blocked loop may hold a log handler's lock.
        threading.Thread(target=_log.warning, args=("%s", message), daemon=True).start()

    def _culprit(self) -> str:
        """Where the loop's thread is: in which activity or workflow, on which line."""
        codes = {}
        for kind, registry in (("activity", _ACTIVITIES), ("workflow", _WORKFLOWS)):
            for name, definition in list(registry.items()):
                with contextlib.suppress(Exception):
                    codes[inspect.unwrap(definition.fn).__code__] = f"{kind} {name!r}"
        frame, innermost = sys._current_frames().get(self.loop_thread), None
        while frame is not None:
            where = f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
            innermost = innermost or where
            if frame.f_code in codes:
                return f"in {codes[frame.f_code]}, at {where}" + (
                    f" (now at {innermost})" if innermost != where else "")
            frame = frame.f_back
        return f"at {innermost}" if innermost else "outside Python code"


class _Engine:
    """Claims runs and executes them by replay. One per client; the worker loop of
    ``start_worker`` and ``start_workflow(wait=True)`` both execute through it."""

    def __init__(self, store: _Store, lease: float, clock: Clock = _REAL_CLOCK,
                 codec: Codec = _CODEC):
        self.store, self.lease, self.codec = store, lease, codec
        # The workflows' time (timers, timeouts, recorded times) and its waits; leases
        # go by the machine's time.
        self.clock, self.sleep, self.wait = clock.time, clock.sleep, clock.wait
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._claims = itertools.count(1)
        self._tasks: dict[str, tuple] = {}  # run id -> (owner, task, done event)
        self._cancelling: set[tuple] = set()  # (run id, owner) of executions we cancelled
        self.hub = _hub(store.key)  # who waits here on this database
        self.draining: set[str] = set()  # owner tokens whose runs stop before their next step
        self.in_queues: collections.Counter = collections.Counter()  # queue -> claimed here
        self._claiming = asyncio.Lock()  # one claim at a time: in_queues stays exact
        # The runs executing here (owner token -> run): what the watchdog renews while
        # the event loop is blocked.
        self.leases: dict[str, dict] = {}
        self._watchdog: Any = None  # a _Watchdog once needed (False: none to be had)

    def close(self) -> None:
        if self._watchdog:
            self._watchdog.stop()
        self._watchdog = None

    def new_owner(self) -> str:
        """A fencing token: unique per claim, so even this worker's own earlier,
        abandoned execution of a run can no longer write to it."""
        return f"{self.worker_id}:{next(self._claims)}"

    async def claim(self, *, run_ids: Optional[list] = None, limit: int = 1) -> list:
        """Claim due runs; each must then be executed (``execute``) or ``forget``."""
        async with self._claiming:
            runs = await self.store.claim(self.new_owner(), self.clock, self.lease,
                                          names=sorted(_WORKFLOWS), run_ids=run_ids,
                                          limit=limit, local=self.in_queues)
            self.in_queues.update(run["queue_name"] for run in runs if run["queue_name"])
        return runs

    def forget(self, runs: list) -> None:
        """Claimed runs that will not be executed here (their leases run out)."""
        self.in_queues.subtract(run["queue_name"] for run in runs if run["queue_name"])

    async def fire_schedules(self) -> None:
        """Start the runs of the due schedules of the workflows registered here."""
        now, names, started, last = self.clock(), sorted(_WORKFLOWS), False, None
        while True:
            batch = await self.store.due_schedules(now, names, 100, last)
            for schedule in batch:
                try:
                    started |= await self.fire(schedule, now)
                except Exception:  # a bad row, the database failing: the others still fire
                    _log.exception("schedule %s could not start its run; trying again later",
                                   schedule["schedule_id"])
            if len(batch) < 100:
                break
            last = batch[-1]
        if started:
            self.hub.run_due()

    async def fire(self, schedule: dict, now: float) -> bool:
        timing, first_due = _timing(schedule), schedule["next_due_at"]
        definition = _WORKFLOWS[schedule["workflow_name"]]
        runs = []
        for due in _due_times(timing, first_due, now, schedule["catch_up"]):
            run = _new_run(definition.name, schedule["input_data"], schedule["workflow_id"],
                           (definition.retry_policy.max_retries, definition.timeout), now,
                           schedule_id=schedule["schedule_id"], scheduled_for=due)
            event = {"workflow_name": definition.name, "schedule_id": schedule["schedule_id"],
                     "scheduled_for": due}
            if not runs and due > first_due:  # no worker was up at the earlier times
                event["skipped_from"] = first_due
            runs.append((run, event))
        if not await self.store.fire_schedule(schedule, now, _first_after(timing, now), runs):
            return False  # another worker started them, or the schedule changed meanwhile
        for run, event in runs:
            _log.info("schedule %s started run %s of %s for %s%s", schedule["schedule_id"],
                      run["run_id"], definition.name, _dt(event["scheduled_for"]),
                      f" (due times from {_dt(first_due)} on were missed and skipped)"
                      if "skipped_from" in event else "")
        return True

    async def execute(self, run: dict) -> None:
        """Execute a claimed run until it completes, fails, is scheduled for a retry,
        is cancelled or is lost to another owner."""
        run_id, owner = run["run_id"], run["owner"]
        if self._watchdog is None:
            try:
                self._watchdog = _Watchdog(self)
            except RuntimeError:  # no thread to be had: the heartbeats alone keep the leases
                _log.warning("worker %s: no watchdog thread", self.worker_id, exc_info=True)
                self._watchdog = False  # (said once)
        if run_id in self._tasks:  # an execution here lost the run (its lease ran out)
            self.cancel_local(run_id)  # and this claim took it: the old one stops first,
            await self.settled(run_id)  # so that the two never overlap
        task, done = asyncio.ensure_future(self._execute(run)), asyncio.Event()
        self._tasks[run_id] = (owner, task, done)
        self.leases[owner] = run
        heartbeat: list = []  # a task from its first beat on (most runs end sooner)

        def beat() -> None:
            heartbeat.append(asyncio.ensure_future(self._heartbeat(run)))
        first_beat = asyncio.get_running_loop().call_later(self.lease / 3, beat)
        try:
            await task
        except asyncio.CancelledError:
            if (run_id, owner) not in self._cancelling:
                task.cancel()
                # Until the execution has really stopped (a sync activity's thread ends
                # when it returns), the run stays ours: the heartbeat keeps the lease.
                await asyncio.wait({task})
                raise
        finally:
            first_beat.cancel()
            for beat in heartbeat:
                beat.cancel()
            try:
                if (run_id, owner) in self._cancelling:
                    self._cancelling.discard((run_id, owner))
                    with contextlib.suppress(Exception):  # else the lease runs out by itself
                        await self.store.settle_run(run_id, owner, self.clock())
            finally:
                self.leases.pop(owner, None)
                if self._tasks.get(run_id, (None,))[0] == owner:
                    del self._tasks[run_id]
                if run["queue_name"]:
                    self.in_queues[run["queue_name"]] -= 1
                done.set()
                self.hub.changed(run_id)

    async def _heartbeat(self, run: dict) -> None:
        """Renew the lease while the run executes, also through activities longer than
        the lease; stop the execution as soon as the run is no longer ours (or no
        longer in the status it executes in: cancelled). A cancelled execution keeps
        its lease until it has stopped (a sync activity's thread ends when it returns):
        nothing may overlap it."""
        run_id, owner, stopping = run["run_id"], run["owner"], False
        while True:  # (begun a third of the lease after the execution: see execute)
            try:
                ours = await self.store.renew_lease(run_id, owner, self.clock(),
                                                    time.time() + self.lease,
                                                    None if stopping else run["status"])
            except Exception:  # a busy or unreachable database: try again next beat
                _log.warning("run %s: could not renew its lease", run_id, exc_info=True)
                ours = True
            if not ours and stopping:
                return  # not even its owner any more: taken over
            if not ours:
                _log.info("run %s is no longer ours (cancelled or taken over); stopping", run_id)
                self.cancel_local(run_id, owner)
                stopping = True
            await asyncio.sleep(self.lease / 3)

    def cancel_local(self, run_id: str, owner: Optional[str] = None) -> None:
        """Stop this engine's execution of a run (only the one under ``owner``, if given)."""
        current_owner, task, _ = self._tasks.get(run_id, (None, None, None))
        if (task is not None and owner in (None, current_owner)
                and (run_id, current_owner) not in self._cancelling):  # once: see call()
            self._cancelling.add((run_id, current_owner))
            task.cancel()
        self.hub.changed(run_id)

    async def settled(self, run_id: str) -> None:
        """Wait until this engine no longer executes the run."""
        while run_id in self._tasks:
            await self._tasks[run_id][2].wait()

    async def _execute(self, run: dict) -> None:
        run_id, owner = run["run_id"], run["owner"]
        history = run["history"] if "history" in run else await self.store.load_steps(run_id)
        execution = _Execution(self, run, history)
        try:
            if run["status"] == "compensating":  # failed or cancelled earlier: undo
                await self._compensate(run, execution, history, run["error"] or "")
            else:
                await self._attempt(run, _WORKFLOWS[run["workflow_name"]], execution)
        except _LostOwnership:
            _log.info("run %s is no longer ours (cancelled or taken over); stopped", run_id)
        except _Released:
            _log.info("run %s stopped before its next step: the worker is stopping", run_id)
            with contextlib.suppress(Exception):  # else the drain gives it back
                await self.store.release_run(run_id, owner, self.clock())
        except _StoreFailed as failure:
            if isinstance(failure.__cause__, _Undecodable):  # not at once: it may last
                _log.warning("run %s stopped: a record could not be read (%s); it resumes "
                             "once its lease expires", run_id, failure.__cause__)
                return
            _log.warning("run %s stopped: a step could not be recorded (%s); it resumes "
                         "from that step", run_id, failure.__cause__)
            with contextlib.suppress(Exception):  # else it resumes once the lease expires
                await self.store.release_run(run_id, owner, self.clock())

    async def _attempt(self, run: dict, definition: _WorkflowDef,
                       execution: _Execution) -> None:
        """Step the workflow (replaying what is recorded) and record how this attempt
        ended: completed, failed, retrying, parked, or continued as new."""
        if run["deadline_at"] is not None and run["deadline_at"] <= self.clock():
            return await self._failed(run, definition, execution, WorkflowTimeoutError(
                f"workflow {definition.name!r} (run {run['run_id']}) timed out after "
                f"{run['timeout']:g} s"))  # woken at its deadline, say
        outcome = await execution.drive(definition)
        if outcome[0] == "completed":
            await self._finish(run, "completed", outcome[1], None, ("workflow_completed", {}))
        elif outcome[0] == "failed":
            await self._failed(run, definition, execution, outcome[1])
        elif outcome[0] == "continued":
            await self._continue(run, definition, outcome[1])

    async def _finish(self, run: dict, status: str, output: Optional[str],
                      error: Optional[str], event: tuple) -> None:
        """Record the run's final state; a child's parent learns of it at once."""
        parent = run["parent_run_id"]
        if not await self.store.finish_run(run["run_id"], run["owner"], self.clock(), status,
                                           output, error, event, parent, run["status"]):
            _log.info("run %s ended (%s) but is no longer ours; not recorded", run["run_id"],
                      status)
            return
        if parent is not None:
            self.hub.run_changed(parent)  # its wait in memory here goes on, or it is due

    async def _continue(self, run: dict, definition: _WorkflowDef, input_text: str) -> None:
        successor = _new_run(run["workflow_name"], input_text, run["workflow_id"],
                             (definition.retry_policy.max_retries, definition.timeout),
                             self.clock(), parent_run_id=run["parent_run_id"],
                             queue_name=run["queue_name"], queue_key=run["queue_key"],
                             priority=run["priority"])  # back in its queue
        new_id = successor["run_id"]
        if not await self.store.continue_run(run["run_id"], run["owner"],
                                             successor["created_at"], successor):
            _log.info("run %s is no longer ours; not continued", run["run_id"])
            return
        _log.info("run %s continued as new run %s", run["run_id"], new_id)
        self.hub.run_due()

    async def _failed(self, run: dict, definition: _WorkflowDef, execution: _Execution,
                      error: BaseException) -> None:
        run_id, owner, attempt = run["run_id"], run["owner"], run["retry_count"]
        text, now = _error_text(error), self.clock()
        final = not definition.retry_policy.retryable(error)
        retryable = not final and not isinstance(error, (NonDeterminismError, SerializationError,
                                                         WorkflowLoopError))
        if retryable and attempt < run["max_retries"]:
            delay = definition.retry_policy.calculate_delay(attempt)
            _log.warning("run %s attempt %d failed, retrying in %.2fs: %s",
                         run_id, attempt + 1, delay, text)
            await self.store.retry_run(run_id, owner, now, now + delay, text, (
                "workflow_retrying", {"attempt": attempt + 1, "error": text, "retry_in": delay}))
            return
        _log.warning("run %s failed after %d attempt(s): %s", run_id, attempt + 1, text)
        details = {"attempts": attempt + 1, "error": text,
                   "traceback": _error_record(error)["traceback"],
                   **({"non_retryable": True} if final else {})}
        try:
            steps = await self.store.load_steps(run_id)
        except Exception as exc:
            raise _StoreFailed(run_id, exc) from exc
        if any(s["kind"] == "compensation" and s["status"] == "registered"
               for s in steps.values()):
            if await self.store.begin_compensation(run_id, owner, now, text, (
                    "workflow_compensating", {"reason": "failed", **details})):
                run["status"] = "compensating"  # what its writes are fenced on from now
                await self._compensate(run, execution, steps, text)
            return
        await self._finish(run, "failed", None, text, ("workflow_failed", details))

    async def _compensate(self, run: dict, execution: _Execution, steps: dict,
                          error: str) -> None:
        """Run the registered compensations of a failed or cancelled run, latest first,
        each a step with its activity's retries; those done already are skipped."""
        failures = []
        for record in sorted((s for s in steps.values() if s["kind"] == "compensation"
                              and s["status"] != "completed"), key=lambda s: -s["step"]):
            step, name = record["step"], record["name"]
            if record["status"] == "failed":  # done with: failed after its retries
                failures.append(f"{name} (step {step}): {_loads(record['error'])['message']}")
                continue
            if execution.owner in self.draining:
                raise _Released(run["run_id"])  # the next worker goes on from here
            definition, unrunnable = _ACTIVITIES.get(name), None
            if definition is None:  # the code changed: nothing to run it with
                unrunnable = ActivityError(f"no activity named {name!r} is registered in "
                                           "this worker to run the compensation",
                                           run_id=run["run_id"], step=step)
            else:
                try:
                    args, kwargs = definition.call_of(
                        self.codec, _loads(record["input"]),
                        f"the arguments of compensation {name!r} (step {step})")
                except _Undecodable as exc:  # passing trouble: resumes later
                    raise _stopped(run["run_id"], exc) from exc
                except SerializationError as exc:
                    unrunnable = exc
            if unrunnable is not None:
                await execution.record({**record, "status": "failed", "completed_at": None,
                                        "error": _dumps_for_display(_error_record(unrunnable))},
                                       ("step_failed", {"step": step, "name": name,
                                                        "error": str(unrunnable)}),
                                       in_status="compensating")
                failures.append(f"{name} (step {step}): {unrunnable}")
                continue
            _, exc = await execution.run_activity(step, definition, args, kwargs,
                                                  record["attempts"], kind="compensation")
            if exc is not None:
                failures.append(f"{name} (step {step}): {_error_text(exc)}")
        if failures:
            text = f"compensation failed: {'; '.join(failures)} (after: {error})"
            await self._finish(run, "failed", None, text, ("workflow_failed", {"error": text}))
        else:
            await self._finish(run, "compensated", None, error, ("workflow_compensated", {}))


# ---- the worker -------------------------------------------------------------------------


# The retention policy is applied at most once an hour (among all workers); each worker
# looks whether it is its turn every few minutes.
_RETENTION_EVERY = 3600.0
_RETENTION_LOOK = 300.0


class _Worker:
    """What executes runs for a client, through its engine: the background worker of
    ``start_worker`` (claims due runs up to its concurrency, fires due schedules,
    advertises itself, applies the retention policy, and drains on stop), ``drive``
    for ``start_workflow(wait=True)``, and ``recover`` for ``recover_workflows``."""

    def __init__(self, engine: _Engine, poll_interval: float, concurrency: int,
                 retention_days: Optional[float]):
        self.engine, self.store = engine, engine.store
        self.poll_interval, self.concurrency = poll_interval, concurrency
        self.retention_days = retention_days
        self.wakeup = asyncio.Event()  # a run may be due, a slot free, or a stop asked
        self.task: Optional[asyncio.Task] = None  # the background worker
        self.stopping = asyncio.Event()  # the current worker's; a new one gets a new one
        self.grace = 10.0

    async def start(self) -> None:
        if self.task is not None and not self.task.done():
            if not self.stopping.is_set():
                return  # running already
            await asyncio.wait({self.task})  # a stopping worker: let it finish first
        self.stopping = asyncio.Event()
        self.task = asyncio.ensure_future(self._work(self.stopping))
        self.engine.hub.workers.add(self.wakeup)
        await self.store.listen(self.engine.hub.notified)

    async def stop(self, grace: float) -> None:
        task, stopping = self.task, self.stopping
        if task is None:
            return
        if not stopping.is_set():
            self.grace = grace
            stopping.set()
            self.wakeup.set()
        await asyncio.wait({task})  # every caller waits for the same drain
        if self.task is task:
            self.task = None
            self.engine.hub.workers.discard(self.wakeup)
            await self.store.unlisten()
            if not task.cancelled() and task.exception() is not None:
                _log.error("the worker stopped with an error", exc_info=task.exception())

    async def _work(self, stopping: asyncio.Event) -> None:
        engine = self.engine
        running: dict[asyncio.Task, dict] = {}
        advertiser = asyncio.ensure_future(self._advertise())
        retainer = asyncio.ensure_future(self._retain())
        # When a schedule is due (the workflows' clock), when to look at the schedules
        # anyway (the machine's), and the time of the last look.
        schedule_due, look_at, looked = None, 0.0, 0.0
        try:
            while not stopping.is_set():
                self.wakeup.clear()
                if ((schedule_due is not None and schedule_due <= engine.clock())
                        or time.monotonic() >= look_at):
                    schedule_due, look_at = None, time.monotonic() + self.poll_interval
                    looked = engine.clock()
                    try:
                        await engine.fire_schedules()
                    except Exception:
                        _log.warning("worker %s could not read the schedules; retrying in "
                                     "%.1fs", engine.worker_id, self.poll_interval,
                                     exc_info=True)
                free = self.concurrency - len(running)
                if free <= 0:  # every slot busy: a finishing execution wakes us
                    await _REAL_CLOCK.wait(self.wakeup, None, self.poll_interval)
                    continue
                try:
                    claimed = await engine.claim(limit=free)
                except Exception:  # a locked or unreachable database: try again later
                    _log.warning("worker %s could not claim runs; retrying in %.1fs",
                                 engine.worker_id, self.poll_interval, exc_info=True)
                    claimed = []
                for run in claimed:
                    task = asyncio.ensure_future(engine.execute(run))
                    running[task] = run
                    task.add_done_callback(self._finished(running))
                if len(claimed) < free:  # else claim again right away: more are waiting
                    run_due = None  # unknown: poll as usual
                    with contextlib.suppress(Exception):
                        run_due, schedule_due = await self.store.next_wake(
                            sorted(_WORKFLOWS), looked, engine.clock())
                    due = min((t for t in (run_due, schedule_due) if t is not None),
                              default=None)
                    # Until the earliest waiting run or schedule is due (the workflows'
                    # clock), or the next look for runs stored by other processes.
                    await engine.wait(self.wakeup, None if due is None else
                                      due - engine.clock(), self.poll_interval)
        finally:
            advertiser.cancel()
            retainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retainer  # (a delete batch in flight rolls back first)
            await self._drain(running)
            with contextlib.suppress(Exception):
                await self.store.retire(engine.worker_id)

    async def _advertise(self) -> None:
        """Keep this worker's row up to date: the workflows it serves, and until when
        it counts as alive (one lease past its last heartbeat)."""
        engine = self.engine
        started = time.time()  # liveness: the machine's time
        while True:
            now = time.time()
            serves = {name: {"max_retries": d.retry_policy.max_retries, "timeout": d.timeout,
                             "retention_days": d.retention_days}
                      for name, d in _WORKFLOWS.items()}
            try:
                await self.store.advertise({
                    "worker_id": engine.worker_id, "host": socket.gethostname(),
                    "pid": os.getpid(), "workflows": _dumps(serves, "the workflows served"),
                    "started_at": started, "heartbeat_at": now, "expires_at": now + engine.lease})
            except Exception:
                _log.warning("worker %s could not record its heartbeat", engine.worker_id,
                             exc_info=True)
            await asyncio.sleep(engine.lease / 3)

    async def _retain(self) -> None:
        """Apply the retention policy (``retention_days`` of the workflows registered here
        and of this client), at most once an hour among all the workers of the database:
        finished runs older than that are deleted, a family at a time, in small batches
        (see cleanup_old_workflows)."""
        engine = self.engine
        while True:
            own = {name: d.retention_days for name, d in _WORKFLOWS.items()
                   if d.retention_days is not None}
            if own or self.retention_days is not None:
                try:
                    # The policies of the workflows other live workers serve count too.
                    for _, _, _, served, _, _ in await self.store.live_workers(time.time()):
                        for name, options in (_loads(served) or {}).items():
                            days = (options or {}).get("retention_days")
                            if days is not None and name not in own:
                                own[name] = days
                    if await self.store.take_turn("retention_at", _RETENTION_EVERY,
                                                   time.time()):
                        now, deleted = engine.clock(), 0
                        for name, days in sorted(own.items()):
                            deleted += await self.store.delete_finished_before(
                                now - days * 86400, names=[name])
                        if self.retention_days is not None:
                            deleted += await self.store.delete_finished_before(
                                now - self.retention_days * 86400, other_than=sorted(own))
                        _log.info("worker %s: retention deleted %d finished runs",
                                  engine.worker_id, deleted)
                except Exception:
                    _log.warning("worker %s could not apply the retention policy",
                                 engine.worker_id, exc_info=True)
            await asyncio.sleep(_RETENTION_LOOK)

    async def _drain(self, running: dict) -> None:
        """Let the executions finish their current step, then give their runs back."""
        engine = self.engine
        held = dict(running)
        if not held:
            return
        owners = {run["owner"] for run in held.values()}
        engine.draining |= owners
        try:
            _, late = await asyncio.wait(held, timeout=self.grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            now = engine.clock()
            for run in held.values():  # fenced: a run that finished is not touched
                with contextlib.suppress(Exception):
                    if await self.store.release_run(run["run_id"], run["owner"], now):
                        _log.info("run %s released by stopping worker %s", run["run_id"],
                                  engine.worker_id)
        finally:
            engine.draining -= owners

    def _finished(self, running: dict) -> Callable[[asyncio.Task], None]:
        def done(task: asyncio.Task) -> None:
            running.pop(task, None)
            if not task.cancelled() and task.exception() is not None:
                _log.error("worker execution failed", exc_info=task.exception())
            self.wakeup.set()
        return done

    async def drive(self, run: dict, owned: bool = True) -> None:
        """Execute a run here until it is final, sleeping through retry backoffs and
        timers; with it the child runs it starts (theirs too) and the runs it continues
        as, side by side. ``owned``: ``run`` is claimed by this engine already (else
        it is claimed when due, or waited for while another process executes it)."""
        engine = self.engine
        root, poll = run["run_id"], 0.05
        claimed: list = [run] if owned else []  # rows this engine owns, to execute
        executing: dict[str, asyncio.Task] = {}
        changed, watched = asyncio.Event(), set()
        with contextlib.ExitStack() as watches:
            try:
                while True:
                    for row in claimed:
                        executing[row["run_id"]] = asyncio.ensure_future(engine.execute(row))
                        poll = 0.05
                    changed.clear()  # before reading the state: no change is missed
                    tree = await self.store.tree(root, engine.clock(), time.time())
                    if not tree:
                        return
                    for run_id in {row[0] for row in tree} - watched:
                        watches.enter_context(engine.hub.watching(run_id, changed))
                        watched.add(run_id)
                    for run_id, task in list(executing.items()):
                        if task.done():
                            del executing[run_id]
                            task.result()  # an execution's own error is the caller's
                    status, output = tree[0][1], tree[0][2]
                    if status == "continued":  # carry on with its successor
                        root, claimed = _successor(status, output), []
                        continue
                    if status in _TERMINAL and all(row[1] != "compensating" for row in tree):
                        return  # (descendants cancelled with it compensate first)
                    due = [row[0] for row in tree if row[3] and row[0] not in executing]
                    claimed = await engine.claim(run_ids=due, limit=len(due)) if due else []
                    if claimed:
                        continue
                    # Until a change here, the next timer or backoff, or a look at the
                    # work of other processes.
                    now = engine.clock()
                    wake = min((row[4] for row in tree if row[4] is not None and row[4] > now),
                               default=None)
                    await engine.wait(changed, None if wake is None else wake - now, poll)
                    poll = min(poll * 2, 1.0)
            except BaseException:
                for task in executing.values():
                    task.cancel()
                raise
            finally:
                # Children it left running (never awaited) park or finish first.
                await asyncio.gather(*executing.values(), return_exceptions=True)

    async def recover(self) -> list[str]:
        """``recover_workflows``: claim every due run and execute them side by side."""
        engine = self.engine
        await engine.fire_schedules()
        runs: list = []
        try:
            while True:  # in batches: one claim binds every id in an IN list
                claimed = await engine.claim(limit=500)
                runs += claimed
                if len(claimed) < 500:
                    break
        except BaseException:
            engine.forget(runs)
            raise
        await asyncio.gather(*(engine.execute(run) for run in runs))
        return [run["run_id"] for run in runs]


# ---- client -----------------------------------------------------------------------------


def _execution(row: dict) -> WorkflowExecution:
    return WorkflowExecution(
        run_id=row["run_id"], workflow_id=row["workflow_id"],
        workflow_name=row["workflow_name"], status=WorkflowStatus(row["status"]),
        input_data=_loads(row["input_data"]), output_data=_loads(row["output_data"]),
        error=row["error"], retry_count=row["retry_count"], max_retries=row["max_retries"],
        created_at=_dt(row["created_at"]), started_at=_dt(row["started_at"]),
        completed_at=_dt(row["completed_at"]), updated_at=_dt(row["updated_at"]),
        wake_at=_dt(row["wake_at"]), owner=row["owner"], parent_run_id=row["parent_run_id"],
        approval_required=row["approval_required"], schedule_id=row["schedule_id"],
        scheduled_for=_dt(row["scheduled_for"]), idempotency_key=row["idempotency_key"],
        queue_name=row["queue_name"], queue_key=row["queue_key"], priority=row["priority"],
        dequeued_at=_dt(row["dequeued_at"]))


_NOT_YET = object()  # a watched value that is not there yet
_KEEP = object()  # an argument not given: the stored value stays


def _queue_info(row: tuple) -> QueueInfo:
    name, concurrency, per_worker, per_key, rate, period, updated, waiting, running, \
        recent = row
    return QueueInfo(name=name, concurrency=concurrency, worker_concurrency=per_worker,
                     key_concurrency=per_key,
                     rate_limit=None if rate is None else (rate, period), waiting=waiting,
                     running=running, started_recently=recent, updated_at=_dt(updated))


def _schedule_info(row: dict) -> ScheduleInfo:
    return ScheduleInfo(
        schedule_id=row["schedule_id"], workflow_name=row["workflow_name"],
        cron_expression=row["cron_expression"], every=row["interval_seconds"],
        timezone=row["timezone"], input_data=_loads(row["input_data"]),
        workflow_id=row["workflow_id"], catch_up=row["catch_up"], paused=bool(row["paused"]),
        next_run_at=None if row["paused"] else _dt(row["next_due_at"]),
        last_run_at=_dt(row["last_due_at"]), last_run_id=row["last_run_id"],
        created_at=_dt(row["created_at"]), updated_at=_dt(row["updated_at"]))


def _lease_seconds(value: Optional[float]) -> float:
    source = "lease_seconds"
    if value is None:
        value = os.environ.get("TINYWORKFLOW_LEASE_SECONDS")
        source = "TINYWORKFLOW_LEASE_SECONDS"
        if value is None:
            return _DEFAULT_LEASE_SECONDS
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not 0 < seconds <= _MAX_SECONDS:
        raise ValueError(f"{source} must be a number of seconds > 0 and at most "
                         f"{_MAX_SECONDS:g} ({_MAX_TEXT}), got {value!r}")
    return seconds


class TinyWorkflowClient:
    """The entry point: starts, inspects and executes runs.

        async with TinyWorkflowClient("sqlite+aiosqlite:///app.db") as client:
            run_id = await client.start_workflow("etl", {"url": url}, wait=True)
            run = await client.get_workflow_status(run_id)
            if run.status == "failed":
                print(run.error)

    ``database_url`` defaults to ``$TINYWORKFLOW_DATABASE_URL``, else
    ``sqlite+aiosqlite:///tinyworkflow.db``. ``auto_start_worker=True`` starts an
    in-process worker that executes runs started with ``wait=False``.
    ``lease_seconds`` (default ``$TINYWORKFLOW_LEASE_SECONDS``, else 30) is how long
    a run stays with an executor that stopped writing before another may take it over.
    ``retention_days``: this client's workers delete finished runs that many days old
    (of workflows without a ``retention_days`` of their own), see
    ``cleanup_old_workflows``. ``codec`` (a ``Codec``) turns the values crossing steps
    into the JSON stored for them and back; every process sharing the database uses
    the same.
    """

    def __init__(self, database_url: Optional[str] = None, auto_start_worker: bool = False, *,
                 table_prefix: str = _DEFAULT_PREFIX, lease_seconds: Optional[float] = None,
                 poll_interval: float = 1.0, worker_concurrency: int = 100,
                 clock: Optional[Clock] = None, retention_days: Optional[float] = None,
                 codec: Optional[Codec] = None):
        self.database_url = (database_url or os.environ.get("TINYWORKFLOW_DATABASE_URL")
                             or _DEFAULT_URL)
        self._store = _open_store(self.database_url, table_prefix)  # ValueError on a bad URL
        self._lease = _lease_seconds(lease_seconds)
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval!r}")
        if not isinstance(worker_concurrency, int) or worker_concurrency < 1:
            raise ValueError(f"worker_concurrency must be a whole number >= 1, "
                             f"got {worker_concurrency!r}")
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a tinyworkflow Clock (TestClock in tests), "
                            f"got {clock!r}")
        self._clock = clock or _REAL_CLOCK
        self._codec = _check_codec(codec)
        if retention_days is not None:
            _check_days("retention_days", retention_days)
        self._retention_days = retention_days
        self._auto_start_worker = auto_start_worker
        self._poll_interval, self._worker_concurrency = poll_interval, worker_concurrency
        self._engine: Optional[_Engine] = None
        self._worker: Optional[_Worker] = None
        self._opening = asyncio.Lock()
        self._queues_stored: dict = {}  # queue name -> the declaration stored (None: none)

    # -- lifecycle
    async def initialize(self) -> None:
        """Open the database and create or migrate the tables. Called by ``async with``
        and, if needed, by the first method that needs the database."""
        async with self._opening:  # concurrent first calls open one connection
            if self._engine is not None:
                return
            loop = asyncio.get_running_loop()
            if not isinstance(loop, asyncio.BaseEventLoop):
                # Workflow code runs on a loop of ours, stepped from inside asyncio's
                # own; uvloop and other implementations are not tested, so not used.
                raise TinyWorkflowError(
                    f"tinyworkflow runs on asyncio's own event loop, not on "
                    f"{type(loop).__module__}.{type(loop).__qualname__} (uvloop and other "
                    "event loops are not supported): start the program with asyncio.run")
            try:
                await self._store.connect()
                await self._store.migrate()
                for queue in list(_QUEUES.values()):  # the limits as declared in code
                    await self._store.declare_queue(queue._row(self._clock.time()), True)
                    self._queues_stored[queue.name] = queue
            except BaseException as exc:
                await self._store.close()
                if isinstance(exc, (OSError, sqlite3.Error)) and not isinstance(
                        exc, TinyWorkflowError):  # the driver's, said our way
                    kind = (DatabaseBusyError if isinstance(_database_error(exc),
                                                            DatabaseBusyError)
                            else DatabaseUnavailableError)
                    raise kind(f"cannot open the database {_redact(self.database_url)}: "
                               f"{exc}") from exc
                raise
            self._engine = _Engine(self._store, self._lease, self._clock, self._codec)
            self._worker = _Worker(self._engine, self._poll_interval, self._worker_concurrency,
                                   self._retention_days)
        if self._auto_start_worker:
            await self.start_worker()

    async def close(self) -> None:
        """Stop the worker and close the database."""
        try:
            await self.stop_worker()
        finally:
            if self._engine is not None:
                engine, self._engine = self._engine, None
                engine.close()
                await self._store.close()

    async def __aenter__(self) -> "TinyWorkflowClient":
        await self.initialize()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def _engine_ready(self) -> _Engine:
        if self._engine is None:
            await self.initialize()
        return self._engine

    # -- runs
    @typing.overload
    async def start_workflow(self, workflow_name: Callable[typing.Concatenate[Any, _P],
                                                           Awaitable[Any]], /,
                             *args: _P.args, **kwargs: _P.kwargs) -> str: ...

    @typing.overload
    async def start_workflow(self, workflow_name: str | Callable[..., Awaitable[Any]],
                             input_data: Any = None, workflow_id: Optional[str] = None,
                             wait: bool = False, *, idempotency_key: Optional[str] = None,
                             run_id: Optional[str] = None, queue: Any = None,
                             queue_key: Optional[str] = None, priority: Optional[int] = None,
                             debounce: Optional[tuple] = None) -> str: ...

    async def start_workflow(self, workflow_name: Any, *args: Any, **kwargs: Any) -> str:
        """Store a new run of a registered workflow and return its run id:
        ``start_workflow(workflow_name, input_data=None, workflow_id=None, wait=False, *,
        idempotency_key=None, run_id=None, queue=None, queue_key=None, priority=None,
        debounce=None)``.

        The workflow is named, with its input (``start_workflow("order", {"order_id":
        "o-1"})``), or given as its function with its parameters as arguments
        (``start_workflow(order, order_id="o-1", items=[...])``, which type checkers
        check), then the options by name. Either way its parameters are encoded by
        their annotations, and input that does not fit them -- a key missing or
        unknown -- is a ValueError; nothing is stored. (A parameter named like an
        option is given in ``input_data``, a dict.)

        With ``wait=False`` the run is left for a worker (``auto_start_worker=True``,
        ``start_worker()`` or ``recover_workflows()``). With ``wait=True`` it executes
        here, workflow-level retries included, and the call returns once the run has
        reached a final state; it does not raise when the workflow fails: read the
        outcome with ``get_workflow_status(run_id)`` (``status``, ``output_data``,
        ``error``). ``workflow_id`` groups related runs; it defaults to the name.

        ``idempotency_key`` (or an explicit ``run_id``) makes the start idempotent:
        starting again with the same key, from any process and even at the same moment,
        returns the run the first start stored instead of storing a second one (with
        ``wait=True``, once that run has finished), for as long as the run is kept. The
        same key with another workflow or input is an ``IdempotencyError`` (a
        ``ValueError``), and nothing is stored.

        ``queue`` (a name or a ``Queue``) starts the run within the queue's limits;
        ``queue_key`` is its key for the queue's ``key_concurrency`` (a tenant, a
        user), ``priority`` its place among the waiting runs (lower first; default 0).

        ``debounce=("key", seconds)`` starts one run once the calls with that key have
        stopped for ``seconds``, with the latest call's input: each call while that
        run waits returns its id and moves its start. A call after it started stores
        a new run.
        """
        if not isinstance(workflow_name, str):
            workflow_name, args, kwargs = _called(workflow_name, args, kwargs, _START_OPTIONS,
                                                  "start_workflow")
        return await self._start(workflow_name, *args, **kwargs)

    async def _start(self, workflow_name: str, input_data: Any = None,
                     workflow_id: Optional[str] = None, wait: bool = False, *,
                     idempotency_key: Optional[str] = None, run_id: Optional[str] = None,
                     queue: Any = None, queue_key: Optional[str] = None,
                     priority: Optional[int] = None, debounce: Optional[tuple] = None) -> str:
        _check_workflow_id(workflow_id)
        for what, value in (("idempotency_key", idempotency_key), ("run_id", run_id)):
            if value is not None:
                _check_name(what, value)
        columns = _queue_columns(queue, queue_key, priority)
        if debounce is not None:
            debounce = _debounce_option(debounce)
            if wait or idempotency_key is not None or run_id is not None:
                raise ValueError("debounce starts the run later, once the calls stop: it "
                                 "does not combine with wait=True, idempotency_key or run_id")
        input_text = self._input_text(workflow_name, input_data)
        definition = _WORKFLOWS.get(workflow_name)
        engine = await self._engine_ready()
        self._store.fits(f"the input of workflow {workflow_name!r}", input_text)
        options = await _workflow_options(self._store, workflow_name)
        if columns:
            await self._use_queue(columns["queue_name"])
        run = _new_run(workflow_name, input_text, workflow_id, options, engine.clock(),
                       idempotency_key=idempotency_key, **columns)
        run["run_id"] = run_id = run_id or run["run_id"]
        now = run["created_at"]
        events = [("workflow_created", {"workflow_name": workflow_name, **(
            {"queue": columns["queue_name"]} if columns else {})})]
        if debounce is not None:
            return await self._debounce(run, events, *debounce)
        if not wait or columns or definition is None:
            existing = await self._insert_once(run, events)
            self._wake_workers()
            if wait and definition is None:  # served by a live worker: it executes it
                await self._until_final(existing or run_id)
            elif wait:  # in its queue: executed here once the queue lets it start
                await self._worker.drive({"run_id": existing or run_id}, owned=False)
            return existing or run_id
        # Inserted already claimed, so no worker can take it between insert and execute.
        owner = engine.new_owner()
        run.update(status="running", owner=owner, lease_expires_at=time.time() + engine.lease,
                   started_at=now,
                   deadline_at=None if definition.timeout is None else now + definition.timeout)
        events.append(("workflow_started", {"attempt": 1, "owner": owner}))
        existing = await self._insert_once(run, events)
        if existing is not None:  # started before: execute it here if it is due, else wait
            await self._worker.drive({"run_id": existing}, owned=False)
            return existing
        await self._worker.drive(await self._store.get_run(run_id))
        return run_id

    def _same_input(self, workflow_name: str, stored: Optional[str], given: Optional[str]) -> bool:
        """Whether two stored inputs are the same input: as JSON, or decoded -- by a codec
        of one's own (one that encrypts writes the same value differently each time),
        with the defaults of parameters one of them leaves out (stored by one version
        and not the other, or changed since)."""
        if _loads(stored) == _loads(given):
            return True
        definition = _WORKFLOWS.get(workflow_name)
        try:
            if definition is not None and definition.parameters is not None:
                defaults = {key: default for key, (_, default) in definition.parameters.items()
                            if key != "**" and default is not inspect.Parameter.empty}
                return ({**defaults, **definition.arguments(self._codec, _loads(stored), "")}
                        == {**defaults, **definition.arguments(self._codec, _loads(given), "")})
            return self._codec is not _CODEC and (
                _from_data(self._codec, _loads(stored), Any, "input")
                == _from_data(self._codec, _loads(given), Any, "input"))
        except (ValueError, SerializationError):
            return False

    def _input_text(self, workflow_name: str, input_data: Any) -> str:
        return _input_text(self._codec, _WORKFLOWS.get(workflow_name), input_data,
                           f"the input of workflow {workflow_name!r}")

    async def _until_final(self, run_id: str) -> None:
        """Until the run (and, if it continued as new, its chain) has reached a final
        state, wherever it executes."""
        async def look(row: dict) -> Any:
            if row["status"] == "continued":
                return _successor(row["status"], row["output_data"])
            return None if row["status"] in _TERMINAL else _NOT_YET
        while run_id is not None:
            run_id = await self._watch(run_id, None, look, "finished")

    async def _insert_once(self, run: dict, events: list) -> Optional[str]:
        """Store the run; None, or the id of the run its idempotency key or run id
        already names (the same workflow and input, else IdempotencyError)."""
        try:
            await self._store.insert_run(run, events)
            return None
        except Exception as exc:
            key = run.get("idempotency_key")
            if not self._store.duplicate(exc):
                raise
            existing = await self._store.get_run(run["run_id"])
            if existing is None and key is not None:
                existing = await self._store.get_run_by_key(key)
            if existing is None:  # the one holding it was deleted since: store ours
                return await self._insert_once(run, events)
        if existing["workflow_name"] != run["workflow_name"]:
            detail = f"of workflow {existing['workflow_name']!r}"
        elif existing["idempotency_key"] != key:
            detail = f"with idempotency key {existing['idempotency_key']!r}"
        elif not self._same_input(run["workflow_name"], existing["input_data"],
                                  run["input_data"]):
            detail = "started with other input"
        else:
            return existing["run_id"]
        name = f"idempotency key {key!r}" if key is not None else f"run id {run['run_id']!r}"
        raise IdempotencyError(f"{name} already names run {existing['run_id']} {detail}; "
                               "nothing was stored", run_id=existing["run_id"])

    async def _use_queue(self, name: str) -> None:
        """Store the queue if it is not stored yet: as declared, else with no limits
        (a declaration made after a use by name is stored then)."""
        declared = _QUEUES.get(name)
        if name in self._queues_stored and self._queues_stored[name] is declared:
            return
        row = declared._row(self._clock.time()) if declared is not None else {
            "name": name, "concurrency": None, "worker_concurrency": None,
            "key_concurrency": None, "rate_limit": None, "rate_period": None,
            "updated_at": self._clock.time()}
        await self._store.declare_queue(row, declared is not None)
        self._queues_stored[name] = declared

    async def _debounce(self, run: dict, events: list, key: str, seconds: float) -> str:
        """Store the run to start ``seconds`` from now, or give the run of ``key`` that
        has not started yet this input and that start; return the run's id."""
        for _ in range(20):  # each turn lost a race to a start or another call
            now = self._engine.clock()
            waiting = await self._store.get_run_by_debounce(key)
            if waiting is None:
                run.update(created_at=now, updated_at=now, wake_at=now + seconds,
                           debounce_key=key)
                try:
                    await self._store.insert_run(run, events + [
                        ("workflow_debounced", {"starts_at": now + seconds})])
                except Exception as exc:
                    if not self._store.duplicate(exc):
                        raise
                    continue  # another call stored one first: debounce into it
                self._wake_workers()
                return run["run_id"]
            if waiting["workflow_name"] != run["workflow_name"]:
                raise ValueError(f"debounce key {key!r} belongs to run {waiting['run_id']} "
                                 f"of workflow {waiting['workflow_name']!r}, waiting to "
                                 "start; nothing was stored")
            if await self._store.debounce_run(waiting["run_id"], key, run["input_data"],
                                              now + seconds, now):
                self._wake_workers()
                return waiting["run_id"]
        raise TinyWorkflowError(f"debounce key {key!r}: its run kept starting or changing "
                                "under this call; nothing was stored")

    async def get_workflow_status(self, run_id: str) -> Optional[WorkflowExecution]:
        """The run with this id, or None if there is none."""
        row = await (await self._engine_ready()).store.get_run(run_id)
        return None if row is None else _execution(row)

    async def list_workflow_executions(self, status: Any = None,
                                       workflow_name: Optional[str] = None, limit: int = 100,
                                       offset: int = 0, *, run_id_prefix: Optional[str] = None,
                                       parent_run_id: Optional[str] = None
                                       ) -> list[WorkflowExecution]:
        """Runs, newest first, optionally of one status and/or one workflow, whose run id
        starts with ``run_id_prefix`` (what a short id shown by the command line or the
        web page gives), or started by ``parent_run_id`` (its child runs)."""
        for label, value in (("limit", limit), ("offset", offset)):
            _check_count(label, value)
        filters = _run_filters(status, workflow_name, run_id_prefix, parent_run_id)
        rows = await (await self._engine_ready()).store.list_runs(filters, limit, offset)
        return [_execution(row) for row in rows]

    async def count_workflow_executions(self, status: Any = None,
                                        workflow_name: Optional[str] = None, *,
                                        run_id_prefix: Optional[str] = None,
                                        parent_run_id: Optional[str] = None) -> int:
        """How many runs ``list_workflow_executions`` with these filters would list without
        its limit (the total a page of runs is part of)."""
        filters = _run_filters(status, workflow_name, run_id_prefix, parent_run_id)
        return await (await self._engine_ready()).store.count_runs(filters)

    async def get_statistics(self, minutes: int = 60) -> dict:
        """For a dashboard: ``{"by_status": {status: runs}, "total": runs,
        "created_per_minute": [runs created in each of the last ``minutes`` minutes,
        oldest first]}`` (every status is listed, 0 included)."""
        if not _real(minutes, whole=True) or not 1 <= minutes <= 1440:
            raise ValueError(f"minutes must be a whole number from 1 to 1440, got {minutes!r}")
        engine = await self._engine_ready()
        counts = await self._store.status_counts()
        start = (math.floor(engine.clock() / 60) + 1 - minutes) * 60  # whole minutes
        return {"by_status": {s.value: counts.get(s.value, 0) for s in WorkflowStatus},
                "total": sum(counts.values()),
                "created_per_minute": await self._store.created_per_minute(start, minutes)}

    async def get_workflow_events(self, run_id: str, limit: int = 100) -> list[WorkflowEvent]:
        """The run's audit trail, oldest first (empty for an unknown run id)."""
        _check_count("limit", limit)
        rows = await (await self._engine_ready()).store.events(run_id, limit)
        return [WorkflowEvent(id=i, run_id=r, event_type=t, event_data=_loads(d), timestamp=_dt(ts))
                for i, r, t, d, ts in rows]

    async def get_workflow_steps(self, run_id: str) -> list[StepRecord]:
        """The run's recorded steps in step order, with attempts and times."""
        history = await (await self._engine_ready()).store.load_steps(run_id)
        return [StepRecord(run_id=s["run_id"], step=s["step"], name=s["name"], kind=s["kind"],
                           status=s["status"], input=_loads(s["input"]),
                           output=_loads(s["output"]), error=_loads(s["error"]),
                           attempts=s["attempts"], started_at=_dt(s["started_at"]),
                           completed_at=_dt(s["completed_at"]))
                for s in history.values()]

    async def send_signal(self, run_id: str, name: str, payload: Any = None) -> None:
        """Send the signal ``name`` with a ``payload`` to a run that has not finished;
        its ``ctx.wait_for_signal(name)`` receives it (now if it waits, else when it
        does). A payload of a type the codec knows (a dataclass, a datetime...) is
        encoded by its class, for ``wait_for_signal(name, type=...)`` to decode. A run that continued as new passes it to its successor.
        ``RunNotFoundError`` for an unknown run, ``RunStateError`` for a finished one;
        nothing is stored then."""
        _check_name("a signal name", name)
        what = f"the payload of signal {name!r}"
        data = _dumps(_to_data(self._codec, payload, _own_type(payload), what), what)
        engine = await self._engine_ready()
        self._store.fits(f"the payload of signal {name!r}", data)
        while not await self._store.send_signal(run_id, name, data, engine.clock()):
            row = await self._current(run_id)
            if row["run_id"] != run_id:
                run_id = row["run_id"]  # the chain's current run: send to it
                continue
            raise RunStateError(f"run {run_id} is {row['status']}: it takes no more signals",
                                run_id=run_id, status=row["status"])
        # A wait in memory here takes it at once; a start_workflow(wait=True) here
        # claims it again; a worker here takes it if it is due.
        engine.hub.run_changed(run_id)

    async def _current(self, run_id: str) -> dict:
        """The run, or for a run that continued as new the last run of its chain."""
        row = await self._store.current_run(run_id)
        if row is None:
            raise RunNotFoundError(f"no run with id {run_id!r}")
        return row

    async def get_pending_approvals(self) -> list[WorkflowExecution]:
        """The runs waiting for an approval (``paused``; the key they wait for is
        ``approval_required``), longest waiting first."""
        return [_execution(row) for row in await (await self._engine_ready()).store.pending_approvals()]

    async def approve_workflow(self, run_id: str, key: Optional[str] = None) -> bool:
        """Approve the run's pending approval: its ``ctx.wait_for_approval`` returns
        True and the run goes on (a worker executes it). Returns True.
        ``RunStateError`` if the run is not waiting for an approval, or its wait timed
        out (nothing changes); ``RunNotFoundError`` if there is no such run. With
        ``key``, only the approval of that key is decided: a decision that comes after
        the run has moved on to another approval (a double click, a retried request)
        is refused instead of deciding that one too. A run that continued as new: the
        decision goes to its chain's current run."""
        return await self._decide(run_id, True, key)

    async def reject_workflow(self, run_id: str, key: Optional[str] = None) -> bool:
        """Reject the run's pending approval: its ``ctx.wait_for_approval`` returns
        False and the run goes on. ``key`` and errors as for ``approve_workflow``."""
        return await self._decide(run_id, False, key)

    async def _decide(self, run_id: str, approved: bool, key: Optional[str]) -> bool:
        if key is not None:
            _check_name("an approval key", key)
        engine = await self._engine_ready()
        row = await self._current(run_id)
        run_id = row["run_id"]
        deciding = key or row["approval_required"]
        if deciding is not None and await self._store.decide_approval(
                run_id, deciding, approved, engine.clock()):
            engine.hub.run_changed(run_id)  # an execution here takes it at once
            return True
        row = await self._store.get_run(run_id) or row  # it may have changed meanwhile
        status, waiting = row["status"], row["approval_required"]
        asked = (await self._store.approval_steps(run_id, deciding)) if deciding else []
        if status in ("running", "paused") and asked and asked[-1] in ("waiting", "failed"):
            why = f"the wait of run {run_id} for the approval {deciding!r} timed out"
        elif status in ("running", "paused") and waiting is not None and key != waiting:
            why = f"run {run_id} waits for the approval {waiting!r}, not {key!r}"
        else:
            why = f"run {run_id} is {status}, not waiting for an approval"
        raise RunStateError(f"{why}; nothing changed", run_id=run_id, status=status)

    async def cancel_workflow(self, run_id: str) -> bool:
        """Cancel a run that has not finished, and its unfinished child runs (theirs
        too), and return True. A run executing in this process stops at once, at its
        current await; one executing in another process stops within a third of the
        lease (its next lease renewal). A run with registered compensations becomes
        ``compensating`` instead: a worker runs them once its execution has stopped,
        and it ends ``compensated``; cancelling it again stops that. RunStateError if
        the run had already finished (nothing changes), RunNotFoundError if unknown. A
        run that continued as new: its chain's current run is cancelled."""
        engine = await self._engine_ready()
        while True:
            stopped, parent = await self._store.cancel_run(run_id, engine.clock())
            if stopped:
                break
            row = await self._current(run_id)
            if row["run_id"] != run_id:
                run_id = row["run_id"]  # the chain's current run: cancel that
                continue
            raise RunStateError(f"run {run_id} has already finished ({row['status']}); "
                                "only a run that has not finished can be cancelled",
                                run_id=run_id, status=row["status"])
        for stopped_id in stopped:
            engine.cancel_local(stopped_id)
        if parent is not None:  # a child cancelled alone: its parent learns of it
            engine.hub.run_changed(parent)
        engine.hub.run_due()  # runs to compensate
        return True

    async def wait_for_result(self, run_id: str, timeout: Optional[float] = None, *,
                              type: Any = Any) -> Any:
        """Wait until the run has finished and return its result (the workflow's return
        value), decoded as ``type`` if given, else plain JSON as stored. Raises
        WorkflowFailedError if it failed, was cancelled or compensated (its
        ``non_retryable`` says whether the failure ended its attempts at once),
        TimeoutError after ``timeout`` seconds, RunNotFoundError for an unknown id. A
        run that continued as new is followed to the end of its chain. The run may
        execute anywhere: in this process (woken at once) or in another (polled)."""
        started, successor = time.monotonic(), []

        async def look(row: dict) -> Any:
            status, error = row["status"], row["error"]
            if status == "completed":
                return _from_data(self._codec, _loads(row["output_data"])["result"], type,
                                  f"the result of run {row['run_id']}")
            if status == "continued":
                successor.append(_successor(status, row["output_data"]))
                return None
            if status in _TERMINAL:
                details = (await self._store.failure(row["run_id"])
                           if status in ("failed", "compensated") else {})
                raise WorkflowFailedError(
                    f"run {row['run_id']} of workflow {row['workflow_name']!r} "
                    + {"cancelled": "was cancelled", "compensated": "failed and was "
                       "compensated"}.get(status, "failed") + (f": {error}" if error else ""),
                    run_id=row["run_id"], status=status, error=error or "",
                    non_retryable=bool(details.get("non_retryable")))
            return _NOT_YET

        while True:
            value = await self._watch(run_id, timeout, look, "finished", started)
            if not successor:
                return value
            run_id = successor.pop()

    async def get_event(self, run_id: str, key: str, timeout: Optional[float] = None, *,
                        type: Any = Any) -> Any:
        """The latest value the run published under ``key`` (``ctx.set_event``),
        waiting until it has published one; decoded as ``type`` if given, else plain
        JSON as stored. ``TimeoutError`` after ``timeout`` seconds
        (None: no limit), ``RunNotFoundError`` for an unknown run, ``RunStateError``
        if the run finished without publishing ``key``."""
        _check_name("an event key", key)
        _check_timeout("get_event", timeout)

        async def look(row: dict) -> Any:
            found = await self._store.latest_event(run_id, key)
            if found is not None:
                return _from_data(self._codec, _loads(found[0]), type,
                                  f"the value of event {key!r} of run {run_id}")
            if row["status"] in _TERMINAL:
                raise RunStateError(f"run {run_id} {row['status']} without publishing the "
                                    f"event {key!r}", run_id=run_id, status=row["status"])
            return _NOT_YET

        return await self._watch(run_id, timeout, look, f"published the event {key!r}")

    async def _watch(self, run_id: str, timeout: Optional[float],
                     look: Callable[[dict], Awaitable[Any]], what: str,
                     started: Optional[float] = None) -> Any:
        """Until ``look(run row)`` returns something other than ``_NOT_YET`` (or raises):
        woken at once by changes this process makes to the run, else polled, more
        slowly as time goes on. ``timeout``: the machine's seconds from ``started``
        (``time.monotonic()``, default now)."""
        engine = await self._engine_ready()
        poll = 0.02
        deadline = None if timeout is None else (started or time.monotonic()) + timeout
        with engine.hub.watching(run_id) as changed:
            while True:
                changed.clear()
                row = await self._store.get_run(run_id)
                if row is None:
                    raise RunNotFoundError(f"no run with id {run_id!r}")
                value = await look(row)
                if value is not _NOT_YET:
                    return value
                pause = poll
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"run {run_id} has not {what} within {timeout} s "
                                           f"(it is {row['status']})")
                    pause = min(pause, left)
                await _REAL_CLOCK.wait(changed, None, pause)
                poll = min(poll * 2, self._poll_interval)

    async def resume_workflow(self, run_id: str) -> str:
        """Run a failed or cancelled run again from its failure point, as a new attempt:
        its completed steps replay, the rest execute, and it gets its workflow's
        automatic retries again. A run whose compensations had begun compensates again
        instead (only those that did not complete; never the forward path) and ends
        ``compensated``. Child runs it awaits that were cancelled with it are resumed
        too. A worker executes it; returns the run id. RunStateError if the run is not
        failed or cancelled (nothing changes)."""
        engine = await self._engine_ready()
        await engine.settled(run_id)  # a cancelled execution here: let it stop first
        row = await self._store.get_run(run_id)
        if row is None:
            raise RunNotFoundError(f"no run with id {run_id!r}")
        if row["status"] in ("failed", "cancelled"):
            # The children it awaits that were cancelled with it go on first, so that
            # its replay finds them running rather than fails on them.
            for child_id in await self._store.cancelled_children(run_id):
                with contextlib.suppress(RunStateError):
                    await self.resume_workflow(child_id)
        retries, _ = await _workflow_options(self._store, row["workflow_name"])
        if not await self._store.resume_run(run_id, engine.clock(), retries, time.time()):
            row = await self._store.get_run(run_id)
            raise RunStateError(f"run {run_id} is {row['status']}; only a failed or cancelled "
                                "run can be resumed", run_id=run_id, status=row["status"])
        self._wake_workers()
        return run_id

    async def fork_workflow(self, run_id: str, from_step: int) -> str:
        """Start a new run of the same workflow and input that reuses the recorded
        results of the steps numbered below ``from_step`` and executes from there
        (after fixing a bug in step ``from_step``, say). Returns the new run's id."""
        _check_count("from_step", from_step, 1)
        engine = await self._engine_ready()
        source = await self._store.get_run(run_id)
        if source is None:
            raise RunNotFoundError(f"no run with id {run_id!r}")
        options = await _workflow_options(self._store, source["workflow_name"])
        run = _new_run(source["workflow_name"], source["input_data"], source["workflow_id"],
                       options, engine.clock(), queue_name=source["queue_name"],
                       queue_key=source["queue_key"], priority=source["priority"])
        await self._store.fork_run(source, run, from_step)
        self._wake_workers()
        return run["run_id"]

    # -- schedules
    async def schedule_workflow(self, workflow_name: Any, cron_expression: Optional[str] = None,
                                input_data: Any = None, *, every: Any = None,
                                timezone: Optional[str] = None, catch_up: Any = False,
                                schedule_id: Optional[str] = None,
                                workflow_id: Optional[str] = None) -> str:
        """Start runs of ``workflow_name`` on a schedule kept in the database, and return
        the schedule's id (what ``pause_schedule`` and the others take)::

            await client.schedule_workflow("daily_backup", "0 2 * * *")    # 2:00 UTC
            await client.schedule_workflow("report", "0 9 * * 1", timezone="Europe/Paris")
            await client.schedule_workflow("health_check", every=30)      # seconds

        A cron expression has five fields (minute hour day month weekday), or six with
        seconds first; its times are in ``timezone`` (an IANA name, default UTC) and
        follow daylight saving changes as cron does. ``every`` (seconds or a
        ``timedelta``) starts a run at that interval from now instead.

        Workers that serve the workflow start the runs: one run per due time, however
        many workers share the database; the run records the schedule's id and the due
        time (``schedule_id``, ``scheduled_for``). Of the times missed while no such
        worker ran, the latest starts (``catch_up=False``), up to 100 of the latest
        (``True``), or up to the number given.

        ``schedule_id`` names the schedule (default: a new id), for an application that
        declares its schedules each time it starts: declaring one again returns it
        unchanged, or updated to the declaration if that changed (as ``update_schedule``
        does: a new timing counts from now; a paused schedule stays paused). An id that
        names a schedule of another workflow is a ValueError. A bad cron expression,
        interval or timezone, or a workflow neither registered here nor served by a live
        worker: ValueError, and nothing is stored.
        """
        workflow_name = _workflow_name(workflow_name, "schedule_workflow")
        if schedule_id is not None:
            _check_name("schedule_id", schedule_id)
        _check_workflow_id(workflow_id)
        timing = _schedule_timing(cron_expression, every, timezone)
        schedule = {
            "schedule_id": schedule_id or str(uuid.uuid4()), "workflow_name": workflow_name,
            "workflow_id": workflow_id or workflow_name,
            "input_data": self._input_text(workflow_name, input_data),
            **timing, "catch_up": _catch_up(catch_up)}
        engine = await self._engine_ready()
        await _workflow_options(self._store, workflow_name)
        now = engine.clock()
        schedule.update(anchor_at=now, paused=0, last_due_at=None, last_run_id=None,
                        revision=uuid.uuid4().int >> 66, created_at=now, updated_at=now)
        schedule["next_due_at"] = _first_after(_timing(schedule), now)
        stored = await self._store.add_schedule(schedule)
        if stored is None:
            raise ScheduleNotFoundError(f"schedule {schedule['schedule_id']!r} was deleted "
                                        "while being declared")
        if stored["workflow_name"] != workflow_name:
            raise ValueError(f"schedule {schedule['schedule_id']!r} starts workflow "
                             f"{stored['workflow_name']!r}; delete it first, or use another id")
        same = ("workflow_id", "cron_expression", "timezone", "interval_seconds", "catch_up")
        if (any(stored[c] != schedule[c] for c in same)
                or not self._same_input(workflow_name, stored["input_data"],
                                        schedule["input_data"])):
            await self.update_schedule(  # the declaration changed: the schedule follows
                schedule["schedule_id"], cron_expression=timing["cron_expression"],
                every=timing["interval_seconds"], input_data=input_data,
                timezone=timing["timezone"] if timing["cron_expression"] else None,
                catch_up=schedule["catch_up"], workflow_id=schedule["workflow_id"])
        self._wake_workers()
        return schedule["schedule_id"]

    async def schedule_delayed_workflow(self, workflow_name: Any, delay_seconds: Any = None,
                                        input_data: Any = None, *, at: Optional[datetime] = None,
                                        workflow_id: Optional[str] = None) -> str:
        """Store a run that starts ``delay_seconds`` (a number or a ``timedelta``) from
        now, or ``at`` a timezone-aware datetime, and return its run id. It waits in the
        database as ``pending`` (its start time in ``scheduled_for``), so a restart
        before then loses nothing; a worker serving the workflow starts it when due."""
        workflow_name = _workflow_name(workflow_name, "schedule_delayed_workflow")
        _check_workflow_id(workflow_id)
        if (delay_seconds is None) == (at is None):
            raise ValueError("schedule_delayed_workflow takes delay_seconds or at="
                             + (", not both" if at is not None else ""))
        if at is not None:
            if not isinstance(at, datetime) or at.tzinfo is None:
                raise ValueError(f"at must be a timezone-aware datetime, got {at!r}")
        else:
            if isinstance(delay_seconds, timedelta):
                delay_seconds = delay_seconds.total_seconds()
            if (not _real(delay_seconds)
                    or not 0 <= delay_seconds < _LATEST_TIME):  # NaN too
                raise ValueError(f"delay_seconds must be a number >= 0 or a timedelta, "
                                 f"got {delay_seconds!r}")
        input_text = self._input_text(workflow_name, input_data)
        engine = await self._engine_ready()
        self._store.fits(f"the input of workflow {workflow_name!r}", input_text)
        options = await _workflow_options(self._store, workflow_name)
        now = engine.clock()
        start = at.timestamp() if at is not None else now + delay_seconds
        if start >= _LATEST_TIME:
            raise ValueError(f"the run would start after the year 9999 "
                             f"(delay_seconds={delay_seconds!r})")
        run = _new_run(workflow_name, input_text, workflow_id, options, now,
                       wake_at=start, scheduled_for=start)
        await self._store.insert_run(run, [("workflow_created", {
            "workflow_name": workflow_name, "scheduled_for": start})])
        self._wake_workers()
        return run["run_id"]

    async def list_schedules(self) -> list[ScheduleInfo]:
        """Every schedule, oldest first, with its next due time."""
        await self._engine_ready()
        return [_schedule_info(row) for row in await self._store.list_schedules()]

    async def get_schedule(self, schedule_id: str) -> Optional[ScheduleInfo]:
        """The schedule, or None if there is none with this id."""
        _check_name("schedule_id", schedule_id)
        await self._engine_ready()
        row = await self._store.get_schedule(schedule_id)
        return None if row is None else _schedule_info(row)

    async def pause_schedule(self, schedule_id: str) -> ScheduleInfo:
        """Start no more runs until ``resume_schedule``; runs started already go on."""
        return await self._change_schedule(schedule_id, lambda row, now: {"paused": 1})

    async def resume_schedule(self, schedule_id: str) -> ScheduleInfo:
        """Start runs again, from the next due time on: the times that passed while
        paused are not made up for."""
        def resume(row: dict, now: float) -> dict:
            if not row["paused"]:
                return {}
            after = max(now, row["last_due_at"] or now)
            return {"paused": 0, "next_due_at": _first_after(_timing(row), after)}
        return await self._change_schedule(schedule_id, resume)

    async def update_schedule(self, schedule_id: str, *, cron_expression: Optional[str] = None,
                              every: Any = None, timezone: Optional[str] = None,
                              input_data: Any = _KEEP, catch_up: Any = None,
                              workflow_id: Optional[str] = None) -> ScheduleInfo:
        """Change what is given and keep the rest. A new cron expression, interval or
        timezone takes effect from now (an interval counts from now). ValueError for
        bad values, ScheduleNotFoundError for an unknown id; nothing changes then."""
        _check_workflow_id(workflow_id)
        changes: dict = {}
        if catch_up is not None:
            changes["catch_up"] = _catch_up(catch_up)
        if workflow_id is not None:
            changes["workflow_id"] = workflow_id
        if cron_expression is not None or every is not None:
            _schedule_timing(cron_expression, every, timezone)  # bad values: before any read
        elif timezone is not None:
            _zone(timezone)

        def update(row: dict, now: float) -> dict:
            new = {**row, **changes}
            if input_data is not _KEEP:
                new["input_data"] = _input_text(self._codec, _WORKFLOWS.get(row["workflow_name"]),
                                                input_data, f"the input of schedule {schedule_id!r}")
            if cron_expression is not None or every is not None or timezone is not None:
                cron = cron_expression if cron_expression is not None or every is not None \
                    else row["cron_expression"]
                if cron is None and every is None:
                    raise ValueError(f"schedule {schedule_id!r} runs at an interval; timezone "
                                     "applies to cron expressions")
                zone = timezone if timezone is not None or every is not None else row["timezone"]
                new.update(_schedule_timing(cron, every, zone))
            if any(new[c] != row[c] for c in ("cron_expression", "interval_seconds",
                                               "timezone")):
                new["anchor_at"] = now
                new["next_due_at"] = _first_after(_timing(new),
                                                  max(now, row["last_due_at"] or now))
            return {c: new[c] for c in _SCHEDULE_COLUMNS if new[c] != row[c]}
        return await self._change_schedule(schedule_id, update)

    async def delete_schedule(self, schedule_id: str) -> None:
        """Delete the schedule; the runs it started stay. ScheduleNotFoundError if none
        has this id."""
        _check_name("schedule_id", schedule_id)
        await self._engine_ready()
        if not await self._store.delete_schedule(schedule_id):
            raise ScheduleNotFoundError(f"no schedule has the id {schedule_id!r}")

    async def _change_schedule(self, schedule_id: str,
                               change: Callable[[dict, float], dict]) -> ScheduleInfo:
        """Read the schedule, work out the change, write it if nobody wrote in between
        (a worker moving it on to its next time), else again from a fresh read."""
        _check_name("schedule_id", schedule_id)
        engine = await self._engine_ready()
        while True:
            row = await self._store.get_schedule(schedule_id)
            if row is None:
                raise ScheduleNotFoundError(f"no schedule has the id {schedule_id!r}")
            now = engine.clock()
            changes = change(row, now)
            if not changes:
                return _schedule_info(row)
            if await self._store.change_schedule(row, changes, now):
                self._wake_workers()
                return _schedule_info({**row, **changes, "updated_at": now})

    def _wake_workers(self) -> None:
        """A run became due: wake this process's workers on this database."""
        _hub(self._store.key).run_due()

    async def list_queues(self) -> list[QueueInfo]:
        """Every queue stored (declared, or used by name), by name: its limits and how
        many runs wait in it and hold a place in it now."""
        engine = await self._engine_ready()
        for queue in list(_QUEUES.values()):  # declared after this client opened
            await self._use_queue(queue.name)
        return [_queue_info(row) for row in await self._store.list_queues(engine.clock())]

    async def get_queue(self, name: str) -> QueueInfo:
        """One queue's limits and counts (as ``list_queues``); QueueNotFoundError if no
        queue of that name is declared or was used."""
        _check_name("queue", name)
        engine = await self._engine_ready()
        if name in _QUEUES:
            await self._use_queue(name)
        rows = await self._store.list_queues(engine.clock(), name)
        if not rows:
            raise QueueNotFoundError(f"no queue named {name!r}: declare it with "
                                     f"Queue({name!r}, ...) or start a run in it")
        return _queue_info(rows[0])

    async def list_workers(self) -> list[WorkerInfo]:
        """The live workers sharing this database, with the workflows each serves."""
        await self._engine_ready()
        return [WorkerInfo(worker_id=w, host=h, pid=p, workflows=sorted(_loads(names)),
                           started_at=_dt(started), heartbeat_at=_dt(beat))
                for w, h, p, names, started, beat in await self._store.live_workers(
                    time.time())]

    async def recover_workflows(self) -> list[str]:
        """Execute here every run that is due: pending, due for a retry, left by an
        executor whose lease expired (a crashed process), or started now by a due
        schedule. Returns their run ids once each has finished or been rescheduled.
        Runs in a queue start as far as its limits allow now; the others wait for the
        next call or a worker."""
        await self._engine_ready()
        return await self._worker.recover()

    async def cleanup_old_workflows(self, days: float = 30) -> int:
        """Delete finished runs (with their steps and events) that finished more than
        ``days`` ago; returns how many runs were deleted."""
        _check_days("days", days)
        engine = await self._engine_ready()
        return await self._store.delete_finished_before(engine.clock() - days * 86400)

    # -- worker
    async def start_worker(self) -> None:
        """Execute due runs in the background of this event loop until ``stop_worker``."""
        await self._engine_ready()
        await self._worker.start()

    async def stop_worker(self, grace: float = 10.0) -> None:
        """Stop the background worker gracefully: it claims nothing more, lets the
        steps in flight finish for up to ``grace`` seconds (each run stops before its
        next step), cancels what is still running then, and gives every run it held
        back to the database, so that another worker takes it over at once."""
        if self._worker is not None:
            await self._worker.stop(grace)

    # -- registry
    def list_registered_workflows(self) -> list[str]:
        """Names of the workflows registered in this process."""
        return sorted(_WORKFLOWS)

    def list_registered_activities(self) -> list[str]:
        """Names of the activities registered in this process."""
        return sorted(_ACTIVITIES)


# Every coroutine of the client's API raises tinyworkflow's errors, never a driver's.
for _name, _method in list(vars(TinyWorkflowClient).items()):
    if inspect.iscoroutinefunction(_method) and (not _name.startswith("_")
                                                 or _name == "__aenter__"):
        setattr(TinyWorkflowClient, _name, _translating(_method))


def _companion(name: str) -> types.ModuleType:
    """Load cli.py or webui.py: from this file's folder when it is there (a checkout,
    or a project that copied the companions in too), else as installed by pip under
    the name tinyworkflow_<name>."""
    import importlib
    import importlib.util

    module_name = f"tinyworkflow_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    if not os.path.exists(path):
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            raise ImportError(f"{name}.py is not beside {__file__}; copy it from the "
                              "tinyworkflow sources too, or pip install tinyworkflow") from None
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


# ---- test hook --------------------------------------------------------------------------


# The one way the tests (tests/, bench/) reach inside: the registries, the parsers and
# schedule arithmetic they check directly, and a client's store and engine. Not API:
# it changes whenever the inside does.
_internals = types.SimpleNamespace(
    workflows=_WORKFLOWS, activities=_ACTIVITIES, migrations=_MIGRATIONS,
    parse_url=_parse_url, redact=_redact, database_error=_database_error,
    Cron=_Cron, Every=_Every, due_times=_due_times, new_run=_new_run, rebuild_error=_rebuild_error,
    typed=_TYPED, error_record=_error_record, encode=_encode,
    encoders={"plain": _ENCODE, "strict": _ENCODE_STRICT, "lenient": _ENCODE_LENIENT},
    SQLiteStore=_SQLiteStore, Pool=_Pool, companion=_companion,
    store=lambda client: client._store, engine=lambda client: client._engine)


# ---- command-line hand-off --------------------------------------------------------------


def _main(argv: Optional[list] = None) -> int:
    """The ``tinyworkflow`` command and ``python -m tinyworkflow``: hands off to the
    command line in cli.py (shipped beside this file, or installed by pip)."""
    try:
        cli = _companion("cli")
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return cli.main(argv)


if __name__ == "__main__":
    # Run the importable module, not this __main__ copy, so that the workflows the
    # command imports register where the command looks for them: one registry.
    import tinyworkflow

    sys.exit(tinyworkflow._main())
