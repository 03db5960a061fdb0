"""Workflows for tests/test_servers.py, imported by the test process (which starts the
runs) and by the worker processes it starts (tests/servers_worker.py), so that both
register the same names.

The activity ``servers_record`` inserts a row into the side table ``SIDE_TABLE`` of the
same database for every execution, on a connection of its own (not the library's): the
table counts executions across processes, in the database itself.
"""

import asyncio
import os
import signal

import dbutil
from tinyworkflow import RetryPolicy, TinyWorkflowClient, WorkflowContext, activity, \
    activity_info, workflow

NO_RETRY = RetryPolicy(max_retries=0)
SIDE_TABLE = "tw_test_side_effects"  # deliberately without the library's prefix
SIDE_TABLE_DDL = f"CREATE TABLE {SIDE_TABLE} (effect VARCHAR(200) NOT NULL, pid INTEGER NOT NULL)"

_pools: dict = {}  # url -> this process's small pool for the side table


async def _side_pool(url: str):
    if url not in _pools:
        if dbutil.backend_of(url) == "postgres":
            import asyncpg

            _pools[url] = await asyncpg.create_pool(dbutil.postgres_dsn(url), min_size=1,
                                                    max_size=2)
        else:
            import aiomysql

            params = dbutil.mysql_params(url)
            _pools[url] = await aiomysql.create_pool(
                host=params["host"], port=params["port"], user=params["user"],
                password=params["password"], db=params["database"], charset="utf8mb4",
                autocommit=True, minsize=1, maxsize=2)
    return _pools[url]


async def record_effect(url: str, effect: str) -> None:
    pool = await _side_pool(url)
    if dbutil.backend_of(url) == "postgres":
        await pool.execute(f"INSERT INTO {SIDE_TABLE} (effect, pid) VALUES ($1, $2)",
                           effect, os.getpid())
    else:
        async with pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(f"INSERT INTO {SIDE_TABLE} (effect, pid) VALUES (%s, %s)",
                              (effect, os.getpid()))


async def close_pools() -> None:
    for pool in _pools.values():
        pool.close()
        if hasattr(pool, "wait_closed"):
            await pool.wait_closed()
    _pools.clear()


@activity(name="servers_record", retry_policy=NO_RETRY)
async def record(side_url: str, x: int) -> int:
    info = activity_info()
    await record_effect(side_url, info.idempotency_key)  # "<run_id>:<step>"
    return x * 2 + info.step


@workflow(name="servers_short", retry_policy=NO_RETRY)
async def short(ctx: WorkflowContext):
    x = ctx.get_input("x")
    for _ in range(ctx.get_input("steps")):
        x = await ctx.execute_activity(record, ctx.get_input("side"), x)
    return x


def short_result(x: int, steps: int) -> int:
    for step in range(1, steps + 1):
        x = x * 2 + step
    return x


async def serve(url: str, concurrency: int) -> None:
    """A worker through the library's API until SIGTERM, then a graceful stop."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        async with TinyWorkflowClient(url, worker_concurrency=concurrency, lease_seconds=10,
                                      poll_interval=0.05) as client:
            await client.start_worker()
            print("worker started", flush=True)
            await stop.wait()
            await client.stop_worker(grace=5)
    finally:
        await close_pools()
