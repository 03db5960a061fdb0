"""The connection pool of the server backends, as README "Databases" promises it (the
pool table and the paragraph after it), on PostgreSQL and on MySQL/MariaDB.

Every test drives the library through its public API and counts the client's
connections on the server itself (PostgreSQL: pg_stat_activity; MySQL:
information_schema.processlist), on connections of the test's own. The client under
test is told apart from them by a unique application_name on PostgreSQL, and on MySQL
by the connections that were not there before it opened (the test database is the
tests' own, see conftest.py) or by a user of its own.

Where a test needs statements to overlap deterministically, it holds a lock on the runs
table from a connection of its own: every read of the client then waits on the server,
holding its connection, so the pool opens as many as it may and no more.
"""

import asyncio
import contextlib
import logging
import os
import sys
import time
import uuid
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
if TESTS not in sys.path:  # import the helpers under one name, whatever pytest's import mode
    sys.path.insert(0, TESTS)

import dbutil  # noqa: E402
import tinyworkflow  # noqa: E402
from dbutil import servers_only, until  # noqa: E402
from tinyworkflow import (RetryPolicy, TinyWorkflowClient, TinyWorkflowError,  # noqa: E402
                          WorkflowContext, activity, workflow)

RUNS_TABLE = dbutil.PREFIX + "runs"


@activity(name="pool_nap")
async def pool_nap(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@workflow(name="pool_naps", retry_policy=RetryPolicy(max_retries=0))
async def pool_naps(ctx: WorkflowContext):
    """One step per nap in the input; returns the input's tag and the number of naps."""
    naps = ctx.get_input("naps", [])
    for seconds in naps:
        await ctx.execute_activity(pool_nap, seconds)
    return {"tag": ctx.get_input("tag"), "naps": len(naps)}


def with_options(url: str, options: str) -> str:
    return url + ("&" if "?" in url else "?") + options


def tagged(backend: str, url: str, options: str) -> tuple:
    """(url with the pool options, tag): on PostgreSQL a unique application_name that
    names this client's sessions in pg_stat_activity; None on MySQL."""
    if backend != "postgres":
        return with_options(url, options) if options else url, None
    tag = f"tw_pool_{uuid.uuid4().hex[:10]}"
    return with_options(url, "&".join(o for o in (options, f"application_name={tag}") if o)), tag




# ---- the server's view ------------------------------------------------------------------


class Server:
    """The sessions of the client under test, as the server lists them, read on a
    connection of the test's own (``sessions()``: {session id: its last statement}).

    PostgreSQL: the sessions with the application_name ``tag``, or of ``user``.
    MySQL: the sessions of ``user``, or else those of the test database that were not
    there when this was opened (open it before the client) and are not the test's own.
    """

    def __init__(self, backend: str, url: str, tag=None, user=None):
        self.backend, self.url, self.tag, self.user = backend, url, tag, user
        self._conn = None
        self._lock = asyncio.Lock()
        self._ignored: set = set()  # MySQL: connection ids that are not the client's

    async def __aenter__(self) -> "Server":
        await self._connect()
        if self.backend == "mysql" and self.user is None:
            self._ignored = {ident for (ident,) in await self._mysql(
                "SELECT id FROM information_schema.processlist WHERE db = DATABASE()")}
        return self

    async def _connect(self) -> None:
        if self.backend == "postgres":
            import asyncpg

            self._conn = await asyncpg.connect(dbutil.postgres_dsn(self.url),
                                               timeout=dbutil.CONNECT_TIMEOUT)
        else:
            import pymysql

            self._conn = await asyncio.to_thread(pymysql.connect,
                                                 **dbutil.mysql_params(self.url))

    async def __aexit__(self, *exc) -> None:
        with contextlib.suppress(Exception):
            if self.backend == "postgres":
                await self._conn.close()
            else:
                await asyncio.to_thread(self._conn.close)

    async def _mysql(self, sql: str, params: tuple = ()) -> list:
        return await asyncio.to_thread(dbutil._mysql_rows, self.url, sql, params, self._conn)

    async def sessions(self) -> dict:
        async with self._lock:  # one statement at a time on the connection
            try:
                return await self._sessions()
            except Exception as exc:
                if not self._lost(exc):
                    raise
                await self.__aexit__(None, None, None)  # ended by kill_other_connections:
                await self._connect()  # a new connection
                return await self._sessions()

    def _lost(self, exc: Exception) -> bool:
        if self.backend == "postgres":
            return self._conn.is_closed()
        import pymysql

        return isinstance(exc, (pymysql.err.OperationalError, pymysql.err.InterfaceError))

    async def _sessions(self) -> dict:
        if self.backend == "postgres":
            if self.tag is not None:
                found = await self._conn.fetch(
                    "SELECT pid, query FROM pg_stat_activity WHERE application_name = $1 "
                    "AND pid <> pg_backend_pid()", self.tag)
            else:
                found = await self._conn.fetch(
                    "SELECT pid, query FROM pg_stat_activity WHERE usename = $1", self.user)
            return {pid: query or "" for pid, query in found}
        if self.user is not None:
            # Not the ones still logging in ('Connect'): the server may yet refuse them.
            found = await self._mysql("SELECT id, info FROM information_schema.processlist "
                                      "WHERE user = ? AND command <> 'Connect'", (self.user,))
        else:
            found = await self._mysql("SELECT id, info FROM information_schema.processlist "
                                      "WHERE db = DATABASE() AND id <> CONNECTION_ID()")
        return {ident: info or "" for ident, info in found if ident not in self._ignored}

    async def describe(self) -> list:
        """Every session of the server, for a failure's message."""
        async with self._lock:
            if self.backend == "postgres":
                return [tuple(r) for r in await self._conn.fetch(
                    "SELECT pid, usename, application_name, backend_start, state, query "
                    "FROM pg_stat_activity WHERE datname IS NOT NULL")]
            return await self._mysql("SELECT id, user, host, db, command, time, state, info "
                                     "FROM information_schema.processlist")

    @staticmethod
    def listening(sessions: dict) -> set:
        """The PostgreSQL worker's LISTEN connection (not the pool's)."""
        return {ident for ident, query in sessions.items() if query.startswith("LISTEN")}

    async def pooled(self) -> set:
        """The client's pool connections: its sessions but the LISTEN one."""
        sessions = await self.sessions()
        return set(sessions) - self.listening(sessions)

    @contextlib.asynccontextmanager
    async def runs_locked(self):
        """Hold a lock on the runs table that makes the client's reads of it wait on
        the server (each holding its connection) until the block ends."""
        if self.backend == "postgres":
            import asyncpg

            conn = await asyncpg.connect(dbutil.postgres_dsn(self.url),
                                         timeout=dbutil.CONNECT_TIMEOUT)
            try:
                await conn.execute("BEGIN")
                await conn.execute(f"LOCK TABLE {RUNS_TABLE} IN ACCESS EXCLUSIVE MODE")
                yield
            finally:
                await conn.close()  # the lock goes with the session
        else:
            import pymysql

            # Connected to no database, so that it is not counted among the client's.
            params = dict(dbutil.mysql_params(self.url), database=None)
            conn = await asyncio.to_thread(pymysql.connect, **params)
            try:
                await asyncio.to_thread(
                    dbutil._mysql_rows, self.url,
                    f"LOCK TABLES `{params_db(self.url)}`.{RUNS_TABLE} WRITE", (), conn)
                yield
            finally:
                await asyncio.to_thread(conn.close)  # the lock goes with the session


def params_db(url: str) -> str:
    return dbutil.mysql_params(url)["database"]


class Sampler:
    """Samples the client's sessions on the server while a block runs: the most pool
    connections, and the most sessions in all (the LISTEN one included), seen at once.

    Counted are the sessions seen in two samples in a row: a session the client has
    closed can linger in the server's list for a moment after the server stopped
    counting it against the user's limit (seen on MariaDB), so a single sample may show
    one more session than were ever open together."""

    def __init__(self, server: Server):
        self.server, self.max_pooled, self.max_total, self.samples = server, 0, 0, 0
        self.listeners: set = set()
        self.at_max: dict = {}
        self._stop = self._task = None

    async def _sample(self) -> None:
        previous: dict = {}
        while not self._stop.is_set():
            seen = await self.server.sessions()
            sessions = {ident: seen[ident] for ident in seen.keys() & previous.keys()}
            previous = seen
            listening = Server.listening(sessions)
            self.listeners |= listening
            if len(sessions) - len(listening) > self.max_pooled:
                self.max_pooled, self.at_max = len(sessions) - len(listening), sessions
            self.max_total = max(self.max_total, len(sessions))
            self.samples += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.005)

    async def __aenter__(self) -> "Sampler":
        self._stop = asyncio.Event()
        self._task = asyncio.ensure_future(self._sample())
        return self

    async def __aexit__(self, *exc) -> None:
        # Not cancelled: a MySQL query runs on in its thread, on the shared connection.
        self._stop.set()
        await self._task


async def blocked_reads(server: Server, client: TinyWorkflowClient, run_ids: list,
                        connections: int) -> list:
    """Read the runs concurrently while their table is locked; wait until the server
    shows ``connections`` pool connections of the client, hold them a moment, release,
    and return what the reads returned."""
    async with server.runs_locked():
        reads = [asyncio.ensure_future(client.get_workflow_status(run_id))
                 for run_id in run_ids]
        reads.append(asyncio.ensure_future(client.list_workflow_executions(limit=1000)))
        try:
            await until(lambda: _has(server, connections), 5,
                        f"{connections} pool connections waiting on the lock")
            await asyncio.sleep(0.3)  # time for the pool to open more, if it would
            assert not any(read.done() for read in reads)
        except BaseException:
            for read in reads:
                read.cancel()
            raise
    return await asyncio.gather(*reads)


async def _has(server: Server, connections: int) -> bool:
    return len(await server.pooled()) >= connections


# ---- 1. at most pool_size + max_overflow ------------------------------------------------


@servers_only
async def test_the_pool_never_holds_more_than_pool_size_plus_max_overflow(backend, db_url):
    """With pool_size=2 and max_overflow=1, a worker executing 40 concurrent runs of
    overlapping steps, and then 40 concurrent reads that all wait on the server, never
    has more than 3 pool connections at once on the server (PostgreSQL: plus the
    worker's one LISTEN connection), reaches exactly 3 under the blocked reads (so the
    overflow connection was opened), and every run completes, every read answers."""
    url, tag = tagged(backend, db_url, "pool_size=2&max_overflow=1")
    async with Server(backend, db_url, tag=tag) as server, \
            TinyWorkflowClient(url, auto_start_worker=True, poll_interval=0.2) as client:
        async with Sampler(server) as sampler:
            run_ids = await asyncio.gather(*(
                client.start_workflow("pool_naps", {"tag": i, "naps": [0.02, 0.05, 0.02]})
                for i in range(40)))
            results = await asyncio.gather(*(client.wait_for_result(run_id, timeout=20)
                                             for run_id in run_ids))
            assert results == [{"tag": i, "naps": 3} for i in range(40)]
            busy_max = sampler.max_pooled

            read = await blocked_reads(server, client, run_ids, connections=3)
            assert [run.status for run in read[:-1]] == ["completed"] * 40
            assert {run.run_id for run in read[-1]} == set(run_ids)
            assert len(await server.pooled()) <= 3, await server.describe()
        assert sampler.samples > 20, sampler.samples
        assert 1 <= busy_max <= 3, busy_max
        assert sampler.max_pooled == 3, sampler.at_max
        listeners = 1 if backend == "postgres" else 0  # the worker's LISTEN connection
        assert len(sampler.listeners) == listeners, sampler.listeners
        assert sampler.max_total <= 3 + listeners, sampler.max_total


# ---- 2. overflow closed again -----------------------------------------------------------


@servers_only
async def test_overflow_connections_are_closed_once_the_load_has_passed(backend, db_url,
                                                                       monkeypatch):
    """Overflow connections opened by a burst are closed once they have been unused for
    _Pool._OVERFLOW_IDLE (10 s, shortened here to 0.2 s): after the burst (5 connections
    with pool_size=2, max_overflow=3), a quiet period without any call brings the
    client's connections on the server back to pool_size, and the client keeps working."""
    monkeypatch.setattr(tinyworkflow._internals.Pool, "_OVERFLOW_IDLE", 0.2)
    url, tag = tagged(backend, db_url, "pool_size=2&max_overflow=3")
    async with Server(backend, db_url, tag=tag) as server, TinyWorkflowClient(url) as client:
        run_id = await client.start_workflow("pool_naps", {"tag": "x", "naps": [0]}, wait=True)
        read = await blocked_reads(server, client, [run_id] * 12, connections=5)
        assert {run.status for run in read[:-1]} == {"completed"}
        assert len(await server.pooled()) == 5  # the burst's connections, now idle

        # Quiet: no call at all. The overflow connections close by themselves.
        await until(lambda: _at_most(server, 2), 3, "the overflow connections to close")
        assert (await client.get_workflow_status(run_id)).status == "completed"
        assert await client.wait_for_result(run_id) == {"tag": "x", "naps": 1}
        assert 1 <= len(await server.pooled()) <= 2


async def _at_most(server: Server, connections: int) -> bool:
    return len(await server.pooled()) <= connections


# ---- 3. pool_recycle --------------------------------------------------------------------


@servers_only
async def test_pool_recycle_replaces_connections_older_than_it(backend, db_url):
    """With pool_recycle=0.5, work done more than 0.5 s after the client's connections
    were opened runs on new server sessions: the sessions seen before are all gone and
    others serve the client, and nothing fails."""
    url, tag = tagged(backend, db_url, "pool_recycle=0.5")
    async with Server(backend, db_url, tag=tag) as server, TinyWorkflowClient(url) as client:
        first = await client.start_workflow("pool_naps", {"tag": 1, "naps": [0, 0]}, wait=True)
        before = await server.pooled()
        assert before

        await asyncio.sleep(0.8)
        second = await client.start_workflow("pool_naps", {"tag": 2, "naps": [0, 0]},
                                             wait=True)
        assert await client.wait_for_result(first) == {"tag": 1, "naps": 2}
        assert await client.wait_for_result(second) == {"tag": 2, "naps": 2}
        assert {run.run_id for run in await client.list_workflow_executions()} == \
            {first, second}

        async def replaced() -> bool:
            now = await server.pooled()
            return bool(now) and not now & before

        await until(replaced, 3, f"the sessions {sorted(before)} to be replaced")


# ---- 4. killed connections --------------------------------------------------------------


@servers_only
async def test_connections_killed_while_idle_are_replaced_without_an_error(backend, db_url):
    """The server ends the client's idle connections (pg_terminate_backend / KILL): the
    client's next calls, reads and writes, made at once and again after more than a
    second (when pre-ping applies), succeed; the killed sessions are gone and new ones
    serve the client."""
    url, tag = tagged(backend, db_url, "")
    async with Server(backend, db_url, tag=tag) as server, TinyWorkflowClient(url) as client:
        first = await client.start_workflow("pool_naps", {"tag": 1, "naps": [0]}, wait=True)
        before = await server.pooled()
        assert before

        # At once: reads, and a write.
        assert await dbutil.kill_other_connections(db_url) >= len(before)
        assert (await client.get_workflow_status(first)).status == "completed"
        assert [run.run_id for run in await client.list_workflow_executions()] == [first]
        assert await client.wait_for_result(first) == {"tag": 1, "naps": 1}
        pending = await client.start_workflow("pool_naps", {"tag": 0, "naps": []})
        assert (await client.get_workflow_status(pending)).status == "pending"
        now = await server.pooled()
        assert now and not now & before

        # After more than a second idle: a write first, then reads.
        before = now
        await asyncio.sleep(1.2)
        assert await dbutil.kill_other_connections(db_url) >= len(before)
        await asyncio.sleep(1.2)
        second = await client.start_workflow("pool_naps", {"tag": 2, "naps": [0, 0]},
                                             wait=True)
        assert await client.wait_for_result(second) == {"tag": 2, "naps": 2}
        assert (await client.get_workflow_status(first)).status == "completed"
        assert len(await client.list_workflow_executions()) == 3
        now = await server.pooled()
        assert now and not now & before


# ---- 5. pool_timeout --------------------------------------------------------------------


@servers_only
async def test_pool_timeout_is_an_error_naming_it(backend, db_url):
    """With pool_size=1, max_overflow=0 and pool_timeout=0.3, a call that needs a
    connection while the only one is held fails after about 0.3 s with a
    TinyWorkflowError naming pool_timeout (no second connection is opened); once the
    connection is free again the client works."""
    url, tag = tagged(backend, db_url, "pool_size=1&max_overflow=0&pool_timeout=0.3")
    async with Server(backend, db_url, tag=tag) as server, TinyWorkflowClient(url) as client:
        run_id = await client.start_workflow("pool_naps", {"tag": 1, "naps": [0]}, wait=True)
        async with tinyworkflow._internals.store(client).transaction():  # the only connection, held
            started = time.monotonic()
            with pytest.raises(TinyWorkflowError, match=r"pool_timeout=0\.3 s") as caught:
                await client.get_workflow_status(run_id)
            waited = time.monotonic() - started
            assert "pool_size=1, max_overflow=0" in str(caught.value)
            assert 0.25 <= waited < 2.0, waited
            assert len(await server.pooled()) == 1
        assert (await client.get_workflow_status(run_id)).status == "completed"
        assert await client.wait_for_result(run_id) == {"tag": 1, "naps": 1}
        assert len(await server.pooled()) == 1


# ---- 6. a server that refuses more connections ------------------------------------------

LIMITED = "tw_limited"


async def _drop_limited(backend: str, url: str) -> None:
    if backend == "postgres":
        if await dbutil.rows(url, "SELECT 1 FROM pg_roles WHERE rolname = ?", (LIMITED,)):
            await dbutil.execute(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                      "WHERE usename = ?", (LIMITED,))
            await dbutil.execute(url, f"DROP OWNED BY {LIMITED}")  # its tables, its grants
            await dbutil.execute(url, f"DROP ROLE {LIMITED}")
    else:
        for host in ("%", "localhost"):
            await dbutil.execute(url, f"DROP USER IF EXISTS '{LIMITED}'@'{host}'")


@contextlib.asynccontextmanager
async def limited_user(backend: str, url: str, limit: int):
    """A URL of the test database for a user the server lets open ``limit`` connections
    at most; the user (and on PostgreSQL what it owns) is dropped afterwards."""
    parts = urlsplit(url)
    database = parts.path[1:]
    netloc = f"{LIMITED}:{LIMITED}@{parts.hostname or '127.0.0.1'}" + \
        (f":{parts.port}" if parts.port else "")
    await _drop_limited(backend, url)  # left over by an interrupted run
    try:
        if backend == "postgres":
            await dbutil.execute(url, f"CREATE ROLE {LIMITED} LOGIN PASSWORD '{LIMITED}' "
                                      f"CONNECTION LIMIT {limit}")
            await dbutil.execute(url, f"GRANT ALL ON SCHEMA public TO {LIMITED}")
            await dbutil.execute(url, f'GRANT CREATE, CONNECT ON DATABASE "{database}" '
                                      f"TO {LIMITED}")
        else:
            for host in ("%", "localhost"):  # TCP from anywhere; a socket on localhost
                await dbutil.execute(url, f"CREATE USER '{LIMITED}'@'{host}' IDENTIFIED BY "
                                          f"'{LIMITED}' WITH MAX_USER_CONNECTIONS {limit}")
                await dbutil.execute(url, f"GRANT ALL ON `{database}`.* TO "
                                          f"'{LIMITED}'@'{host}'")
        yield urlunsplit((parts.scheme, netloc, quote(parts.path), parts.query, ""))
    finally:
        await dbutil.empty(url)  # as the administrator: the tables the user made
        await _drop_limited(backend, url)


@servers_only
async def test_a_server_refusing_more_connections_is_shared_not_fatal(backend, db_url,
                                                                     caplog):
    """The server lets the client's user open 2 connections (PostgreSQL: 3, as the
    worker keeps one more LISTENing). A client with the default pool (10 + 20) and its
    worker executing 20 concurrent runs completes them all on those connections: the
    server refuses the pool's further ones, the pool says so in the log and shares the
    ones it has, and no error reaches the caller."""
    limit = 3 if backend == "postgres" else 2
    caplog.set_level(logging.INFO, logger="tinyworkflow")
    async with limited_user(backend, db_url, limit) as url:
        async with Server(backend, db_url, user=LIMITED) as server, \
                TinyWorkflowClient(url, auto_start_worker=True, poll_interval=0.2) as client:
            async with Sampler(server) as sampler:
                run_ids = await asyncio.gather(*(
                    client.start_workflow("pool_naps", {"tag": i, "naps": [0.02, 0.02]})
                    for i in range(20)))
                results = await asyncio.gather(*(client.wait_for_result(run_id, timeout=30)
                                                 for run_id in run_ids))
                statuses = await asyncio.gather(*(client.get_workflow_status(run_id)
                                                  for run_id in run_ids))
            assert results == [{"tag": i, "naps": 2} for i in range(20)]
            assert {run.status for run in statuses} == {"completed"}
            assert len(await client.list_workflow_executions(status="completed")) == 20
        assert "no connection to spare" in caplog.text
        assert "sharing" in caplog.text
        assert sampler.max_total == limit, (sampler.max_total, limit)
