"""Choosing the database: SQLite, PostgreSQL or MySQL/MariaDB, by URL.

    python examples/database_configuration.py

    TINYWORKFLOW_EXAMPLE_POSTGRES_URL=postgresql+asyncpg://user:pass@localhost:5432/db \\
    TINYWORKFLOW_EXAMPLE_MYSQL_URL=mysql+aiomysql://user:pass@localhost:3306/db \\
    python examples/database_configuration.py

First it checks the usage guide's URL forms: a client reads its URL when it is made (a
malformed one is a ValueError listing the accepted forms) and connects only when opened.
Then it runs a one-step workflow for real on SQLite files in a temporary folder -- once
with the default tables, once with table_prefix="myapp_wf_", which puts a second,
separate set of tables beside them -- on $TINYWORKFLOW_DATABASE_URL if it is set, and on
the PostgreSQL and MySQL/MariaDB databases given above (it creates tinyworkflow's tables
there). Every backend stores the same runs, steps and events.
"""

import asyncio
import contextlib
import os
import sqlite3
import tempfile
from urllib.parse import urlsplit

from tinyworkflow import RetryPolicy, TinyWorkflowClient, WorkflowContext, activity, workflow

GUIDE_URLS = [
    "sqlite+aiosqlite:///custom/path/db.db",  # relative: custom/path/db.db under the cwd
    "sqlite:////var/lib/myapp/tinyworkflow.db",  # four slashes: an absolute path
    "postgresql+asyncpg://user:password@localhost:5432/tinyworkflow",
    "mysql+asyncmy://user:password@localhost:3306/tinyworkflow?charset=utf8mb4",
    "mysql+aiomysql://user:password@localhost:3306/tinyworkflow?pool_size=5",
]


@activity(name="dbconfig_echo")
async def echo(message: str) -> str:
    return message.upper()


@workflow(name="dbconfig_check", retry_policy=RetryPolicy(max_retries=0))
async def check(ctx: WorkflowContext) -> str:
    return await ctx.execute_activity(echo, ctx.get_input("message"))


def shown(url: str) -> str:
    password = urlsplit(url).password
    return url.replace(f":{password}@", ":***@") if password else url


async def run_on(url: str, **options) -> None:
    async with TinyWorkflowClient(url, **options) as client:  # creates the tables if needed
        run_id = await client.start_workflow("dbconfig_check", {"message": "stored"}, wait=True)
        result = await client.wait_for_result(run_id, timeout=5)
        events = await client.get_workflow_events(run_id)
        print(f"  {shown(url)}{f' {options}' if options else ''}\n"
              f"    run {run_id[:8]}: {result!r}, {len(events)} events")
        if result != "STORED":
            raise SystemExit(f"unexpected result on {shown(url)}: {result!r}")


async def main() -> None:
    print(f"TinyWorkflowClient() uses {shown(TinyWorkflowClient().database_url)} "
          "($TINYWORKFLOW_DATABASE_URL, else the file ./tinyworkflow.db)")
    for url in GUIDE_URLS:
        TinyWorkflowClient(url)  # parses the URL and its options; no connection yet
        print(f"  accepted: {url}")
    try:
        TinyWorkflowClient("sqlite://tinyworkflow.db")
        raise SystemExit("a SQLite URL with two slashes should be refused")
    except ValueError as exc:
        print(f"  refused:  sqlite://tinyworkflow.db -> {exc}")

    print("SQLite in a temporary folder:")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "custom", "path", "db.db")  # the folders are created
        await run_on(f"sqlite+aiosqlite:///{path}")
        await run_on(f"sqlite+aiosqlite:///{path}", table_prefix="myapp_wf_")
        with contextlib.closing(sqlite3.connect(path)) as db:
            tables = [name for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        for prefix in ("tinyworkflow_", "myapp_wf_"):
            names = [t[len(prefix):] for t in tables if t.startswith(prefix)]
            print(f"    tables {prefix}*: {', '.join(names)}")

    for variable in ("TINYWORKFLOW_DATABASE_URL", "TINYWORKFLOW_EXAMPLE_POSTGRES_URL",
                     "TINYWORKFLOW_EXAMPLE_MYSQL_URL"):
        print(f"${variable}:")
        if os.environ.get(variable):
            await run_on(os.environ[variable])
        else:
            print(f"  skipped: set {variable} to a database URL to run there")


if __name__ == "__main__":
    asyncio.run(main())
