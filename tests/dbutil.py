"""Backend-neutral database helpers for the tests: which servers to test against, whether
they answer, emptying a test database, and raw SQL on whichever backend a URL names.

The library's own driver code is not used here: a test that inspects the database
directly must not depend on the code it checks. SQLite is read with sqlite3, PostgreSQL
with asyncpg, MySQL/MariaDB with PyMySQL (it comes with aiomysql), each on a connection
of its own that is closed again at once.

SQL passed to ``rows`` uses ``?`` placeholders on every backend; they are translated to
``$1, $2, ...`` (asyncpg) or ``%s`` (PyMySQL). Values come back as lists of plain tuples:
PostgreSQL DOUBLE PRECISION and MySQL DOUBLE round-trip Python floats exactly, integers
come back as ``int`` (MySQL's DECIMAL results of SUM/COUNT expressions too), text as
``str``; so snapshots taken with ``snapshot`` compare equal when nothing changed.
"""

from __future__ import annotations

import asyncio
import decimal
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from typing import Any, Optional
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import pytest

POSTGRES_URL = os.environ.get("TINYWORKFLOW_TEST_POSTGRES_URL",
                              "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("TINYWORKFLOW_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
SERVER_URLS = {"postgres": POSTGRES_URL, "mysql": MYSQL_URL}
SERVER_NAMES = {"postgres": "PostgreSQL", "mysql": "MySQL/MariaDB"}
SERVER_ENV = {"postgres": "TINYWORKFLOW_TEST_POSTGRES_URL", "mysql": "TINYWORKFLOW_TEST_MYSQL_URL"}
CONNECT_TIMEOUT = 3.0  # seconds: a server that does not answer in this time is unreachable
LOCK_TIMEOUT = 5  # seconds an emptying DROP TABLE waits for a lock before clearing the way

# The tables tinyworkflow creates, without their prefix.
TABLES = ("meta", "runs", "steps", "events", "workers", "signals", "schedules", "queues")
PREFIX = "tinyworkflow_"

# Query options of a tinyworkflow URL that are not the drivers' (dropped here).
_OWN_OPTIONS = {"pool_size", "max_overflow", "pool_recycle", "pool_pre_ping", "pool_timeout",
                "connect_timeout", "charset"}

_SCHEMES = {
    "sqlite": "sqlite", "sqlite+aiosqlite": "sqlite",
    "postgresql": "postgres", "postgresql+asyncpg": "postgres", "postgres": "postgres",
    "mysql": "mysql", "mysql+aiomysql": "mysql", "mysql+asyncmy": "mysql",
}


# The backends a test runs on: parameters of the ``backend`` fixture (conftest.py). The
# server ones carry their marker, so that -m "not postgres and not mysql" leaves SQLite.
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    pytest.param("mysql", id="mysql", marks=pytest.mark.mysql),
]
SERVERS = BACKENDS[1:]
# Direct parametrisation of ``backend`` overrides the fixture for one test: a test whose
# fixtures use db_url but that must stay on SQLite (or run on the servers only).
sqlite_only = pytest.mark.parametrize("backend", BACKENDS[:1])
servers_only = pytest.mark.parametrize("backend", SERVERS)


# ---- URLs -------------------------------------------------------------------------------


def child_env() -> dict:
    """The environment of a test's child process: imports tinyworkflow and the tests'
    modules from this checkout, and no database URL or lease from the caller's."""
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ)
    for name in ("TINYWORKFLOW_DATABASE_URL", "TINYWORKFLOW_LEASE_SECONDS"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (os.path.dirname(tests), tests, os.environ.get("PYTHONPATH")) if p)
    return env


def backend_of(url: str) -> str:
    """'sqlite', 'postgres' or 'mysql' for any URL form tinyworkflow accepts."""
    if url.strip() == ":memory:":
        return "sqlite"
    scheme, sep, _ = url.partition("://")
    try:
        return _SCHEMES[scheme.lower()] if sep else _SCHEMES[""]
    except KeyError:
        raise ValueError(f"not a database URL the tests know: {url!r}") from None


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/?#@]*:)[^@/?#]*@", r"\1***@", url)


def sqlite_path(url: str) -> str:
    """The file of a sqlite:///relative or sqlite:////absolute URL."""
    path = url.split("://", 1)[1].partition("?")[0]
    return unquote(path[1:]) or ":memory:"


def postgres_dsn(url: str) -> str:
    """An asyncpg DSN for the URL: scheme postgresql, tinyworkflow's own options gone."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k not in _OWN_OPTIONS]
    return urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(query), ""))


def mysql_params(url: str) -> dict:
    """PyMySQL connect() arguments for the URL."""
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    params = {"host": parts.hostname or "localhost", "port": parts.port or 3306,
              "user": unquote(parts.username or "") or "root",
              "password": unquote(parts.password or ""), "database": unquote(parts.path[1:]),
              "charset": "utf8mb4", "connect_timeout": CONNECT_TIMEOUT, "autocommit": True}
    if options.get("unix_socket"):
        params["unix_socket"] = options["unix_socket"]
    return params


# ---- raw SQL ----------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (bytes, bytearray)):  # MariaDB's information_schema, some versions
        return bytes(value).decode("utf-8")
    return value


def _numbered(sql: str) -> str:
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


def _sqlite_rows(url: str, sql: str, params: tuple) -> list:
    db = sqlite3.connect(sqlite_path(url), timeout=15)
    try:
        with db:  # committed
            return [tuple(r) for r in db.execute(sql, params).fetchall()]
    finally:
        db.close()


def _mysql_rows(url: str, sql: str, params: tuple, connection=None) -> list:
    import pymysql

    conn = connection or pymysql.connect(**mysql_params(url))
    try:
        with conn.cursor() as cur:
            cur.execute(sql.replace("%", "%%").replace("?", "%s") if params else sql,
                        params or None)
            return [tuple(_plain(v) for v in row) for row in (cur.fetchall() or ())]
    finally:
        if connection is None:
            conn.close()


async def _postgres_rows(url: str, sql: str, params: tuple) -> list:
    import asyncpg

    conn = await asyncpg.connect(postgres_dsn(url), timeout=CONNECT_TIMEOUT)
    try:
        return [tuple(r) for r in await conn.fetch(_numbered(sql), *params)]
    finally:
        await conn.close()


async def rows(url: str, sql: str, params: tuple = ()) -> list:
    """Run one statement (``?`` placeholders) on the URL's database on a connection of
    its own, committed; the rows it returns as tuples (empty for a statement without)."""
    backend, params = backend_of(url), tuple(params)
    if backend == "postgres":
        return await _postgres_rows(url, sql, params)
    if backend == "mysql":
        return await asyncio.to_thread(_mysql_rows, url, sql, params)
    return _sqlite_rows(url, sql, params)


execute = rows  # for statements run for their effect


def run_sync(coro):
    """Run a coroutine to its end from synchronous code, on a thread and event loop of
    its own (so it neither needs nor disturbs the event loop of the calling test)."""
    result: dict = {}

    def target():
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:  # handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=target, name="dbutil")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def rows_sync(url: str, sql: str, params: tuple = ()) -> list:
    return run_sync(rows(url, sql, params))


async def table_names(url: str) -> set:
    """Every table in the URL's database (SQLite: a missing file has none, and is not
    created by asking)."""
    backend = backend_of(url)
    if backend == "postgres":
        found = await rows(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    elif backend == "mysql":
        found = await rows(url, "SELECT table_name FROM information_schema.tables "
                                "WHERE table_schema = DATABASE()")
    else:
        path = sqlite_path(url)
        if path == ":memory:" or not os.path.exists(path):
            return set()
        found = await rows(url, "SELECT name FROM sqlite_master WHERE type = 'table'")
    return {r[0] for r in found}


def table_names_sync(url: str) -> set:
    return run_sync(table_names(url))


async def snapshot(url: str, prefix: str = PREFIX) -> list:
    """The rows of runs, steps and events, each table's rows in a fixed order."""
    return [sorted(await rows(url, f"SELECT * FROM {prefix}{t}"), key=repr)
            for t in ("runs", "steps", "events")]


async def schema_version(url: str, prefix: str = PREFIX) -> list:
    return await rows(url, f"SELECT name, value FROM {prefix}meta ORDER BY name")


# ---- servers: reachable?  emptied -------------------------------------------------------

_reachability: dict = {}  # url -> None (answers) or the error, once per session


async def _probe(backend: str, url: str) -> None:
    if backend == "postgres":
        import asyncpg

        conn = await asyncpg.connect(postgres_dsn(url), timeout=CONNECT_TIMEOUT)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()
    else:
        await asyncio.to_thread(_mysql_rows, url, "SELECT 1", ())


def unreachable(backend: str) -> Optional[str]:
    """Why the test server of ``backend`` cannot be used, or None if it answers.
    Asked once per session and URL."""
    url = SERVER_URLS[backend]
    if url not in _reachability:
        for attempt in (1, 2):  # the second after a pause: a server briefly out of slots
            try:
                run_sync(asyncio.wait_for(_probe(backend, url), CONNECT_TIMEOUT + 2))
            except Exception as exc:  # ImportError, OSError, auth, no such database ...
                _reachability[url] = f"{type(exc).__name__}: {exc}".strip()
                if attempt == 1:
                    time.sleep(1.0)
            else:
                _reachability[url] = None
                break
    return _reachability[url]


def require(backend: str) -> str:
    """The test server URL of ``backend``; skips the test if the server does not answer,
    and fails it instead when CI=true (CI must never skip them silently)."""
    url = SERVER_URLS[backend]
    error = unreachable(backend)
    if error is not None:
        message = (f"{SERVER_NAMES[backend]} test server unreachable at {redact(url)} "
                   f"(set {SERVER_ENV[backend]}): {error}")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " [CI=true: failing instead of skipping]", pytrace=False)
        pytest.skip(message)
    return url


async def _empty_postgres(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(postgres_dsn(url), timeout=CONNECT_TIMEOUT)
    try:
        await conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}s'")
        for attempt in (1, 2):
            names = [r[0] for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
            if not names:
                return
            quoted = ", ".join('"' + n.replace('"', '""') + '"' for n in names)
            try:
                await conn.execute(f"DROP TABLE IF EXISTS {quoted} CASCADE")
                return
            except asyncpg.exceptions.LockNotAvailableError:
                if attempt == 2:
                    raise
                # A connection left behind by an earlier test (a killed worker whose
                # session the server has not noticed yet, a client not closed) holds a
                # lock: end every other session of the test database and try again.
                stray = await conn.fetch(
                    "SELECT pid, application_name, state, query FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")
                warnings.warn(f"emptying the PostgreSQL test database waited {LOCK_TIMEOUT} s "
                              f"for a lock; ending {len(stray)} other session(s): "
                              f"{[tuple(r) for r in stray]}")
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    finally:
        await conn.close()


def _empty_mysql(url: str) -> None:
    import pymysql

    conn = pymysql.connect(**mysql_params(url))
    try:
        for statement in (f"SET SESSION lock_wait_timeout = {LOCK_TIMEOUT}",
                          "SET SESSION FOREIGN_KEY_CHECKS = 0"):
            _mysql_rows(url, statement, (), conn)
        for attempt in (1, 2):
            names = [r[0] for r in _mysql_rows(
                url, "SELECT table_name FROM information_schema.tables "
                     "WHERE table_schema = DATABASE()", (), conn)]
            if not names:
                return
            quoted = ", ".join("`" + n.replace("`", "``") + "`" for n in names)
            try:
                _mysql_rows(url, f"DROP TABLE IF EXISTS {quoted}", (), conn)
                return
            except pymysql.err.OperationalError as exc:
                if attempt == 2 or exc.args[0] != 1205:  # lock wait timeout
                    raise
                stray = _mysql_rows(
                    url, "SELECT id, command, state, info FROM information_schema.processlist "
                         "WHERE db = DATABASE() AND id <> CONNECTION_ID()", (), conn)
                warnings.warn(f"emptying the MySQL test database waited {LOCK_TIMEOUT} s for "
                              f"a lock; ending {len(stray)} other connection(s): {stray}")
                for (ident, *_rest) in stray:
                    try:
                        _mysql_rows(url, f"KILL {int(ident)}", (), conn)
                    except pymysql.err.MySQLError:
                        pass  # gone meanwhile
    finally:
        conn.close()


async def empty(url: str) -> None:
    """Drop every table of a server test database (a database of its own for the tests:
    everything in it goes). PostgreSQL: all tables of schema public, CASCADE; MySQL: all
    tables of the current database, foreign key checks off."""
    backend = backend_of(url)
    if backend == "postgres":
        await _empty_postgres(url)
    elif backend == "mysql":
        await asyncio.to_thread(_empty_mysql, url)
    else:
        raise ValueError(f"empty() is for server databases, not {url!r}")


def empty_sync(url: str) -> None:
    run_sync(empty(url))


def transient_error(url: str) -> Exception:
    """An error the backend's driver raises when the database is briefly unusable: what
    a test injects to check that the library rides it out."""
    backend = backend_of(url)
    if backend == "postgres":
        import asyncpg

        return asyncpg.exceptions.ConnectionDoesNotExistError(
            "connection was closed in the middle of operation")
    if backend == "mysql":
        import pymysql

        return pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")
    return sqlite3.OperationalError("database is locked")


# ---- killing the library's connections (tests of connection loss) ------------------------


async def kill_other_connections(url: str) -> int:
    """End, server-side, every other connection to the URL's database (of the same
    user on MySQL); how many were ended."""
    backend = backend_of(url)
    if backend == "postgres":
        ended = await rows(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return sum(1 for (ok,) in ended if ok)
    if backend == "mysql":
        return await asyncio.to_thread(_kill_mysql, url)
    raise ValueError(f"no server connections to kill for {url!r}")


def _kill_mysql(url: str) -> int:
    import pymysql

    conn = pymysql.connect(**mysql_params(url))
    try:
        ids = _mysql_rows(url, "SELECT id FROM information_schema.processlist "
                               "WHERE db = DATABASE() "
                               "AND user = SUBSTRING_INDEX(CURRENT_USER(), '@', 1) "
                               "AND id <> CONNECTION_ID()", (), conn)
        ended = 0
        for (ident,) in ids:
            try:
                _mysql_rows(url, f"KILL {int(ident)}", (), conn)
                ended += 1
            except pymysql.err.MySQLError:
                pass  # closed meanwhile
        return ended
    finally:
        conn.close()


async def until(predicate, timeout: float, what: str, pause: float = 0.05):
    """Poll ``predicate`` (sync or async) until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(pause)


_WORKER_MAIN = """
async def main():
    async with TinyWorkflowClient(sys.argv[1], poll_interval={poll}, lease_seconds={lease}) as c:
        await c.start_worker()
        print("ready", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


def start_worker_script(workflows: str, *argv: str, poll: float = 0.1,
                        lease: float = 2) -> subprocess.Popen:
    """``start_script`` of ``workflows`` (source that imports asyncio, sys and
    TinyWorkflowClient and defines workflows) followed by a worker on the database
    ``argv[0]``, running until the process is killed (by default a killed worker's runs
    are taken over after a 2 s lease)."""
    return start_script(workflows + _WORKER_MAIN.format(poll=poll, lease=lease), *argv)


async def until_served(client, workflow_name: str, timeout: float = 10) -> None:
    """Until a live worker advertises that it serves ``workflow_name``."""
    async def served() -> bool:
        return any(workflow_name in w.workflows for w in await client.list_workers())

    await until(served, timeout, f"a worker serving {workflow_name}")


def start_script(source: str, *argv: str) -> subprocess.Popen:
    """Run ``python -c source argv...`` with this checkout importable and no database URL
    in its environment; return once it has printed "ready" (a worker has started)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    env.pop("TINYWORKFLOW_DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-c", source, *argv], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc
