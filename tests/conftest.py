"""Shared fixtures. The workflow registry is process-wide: every test registers its
workflows and activities under names of its own.

``db_url`` is parametrised over the three backends (ids ``sqlite``, ``postgres``,
``mysql``), so every test that uses it, or ``client``, runs on each:

- sqlite: a new file under the test's tmp_path;
- postgres / mysql: the server named by TINYWORKFLOW_TEST_POSTGRES_URL /
  TINYWORKFLOW_TEST_MYSQL_URL (a database of its own for the tests: every table in it is
  dropped before each test). Their parameters carry the ``postgres`` / ``mysql``
  markers, so ``-m "not postgres and not mysql"`` is the fast SQLite-only run. A server
  that does not answer skips its tests with the reason; with CI=true they fail instead.

A test that is about SQLite by nature (files, PRAGMAs, its locks, group commit) uses
``sqlite_url``. A test that goes through ``db_url`` but must stay on SQLite (say, a
command-line test that never opens the database) narrows it with
``@dbutil.sqlite_only``, which overrides the ``backend`` fixture by direct parametrisation;
``@dbutil.servers_only`` likewise keeps PostgreSQL and MySQL only.

Tests use the public API. Where one must reach inside (a registry, the URL parser, the
cron arithmetic, a client's store or engine), it goes through the one test hook,
``tinyworkflow._internals``, and nowhere else; and on the objects it gives, only their
names without a leading underscore (a store's ``driver``, ``paths``, ``lock``; an
engine's ``leases``, ``fire``).
"""

import os
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
if TESTS not in sys.path:  # import the helpers under one name, whatever pytest's import mode
    sys.path.insert(0, TESTS)

import dbutil  # noqa: E402
from tinyworkflow import TinyWorkflowClient  # noqa: E402


@pytest.fixture(autouse=True)
def _test_local_registrations():
    """A workflow or activity a test defines in its body is registered for that test
    only: the same ``def`` run again (the test's next backend) makes another function,
    which tinyworkflow refuses as a duplicate of the first while it is registered."""
    import tinyworkflow
    registries = (tinyworkflow._internals.workflows, tinyworkflow._internals.activities)
    saved = [dict(registry) for registry in registries]
    yield
    for registry, before in zip(registries, saved):
        registry.clear()
        registry.update(before)


@pytest.fixture(params=dbutil.BACKENDS)
def backend(request):
    """'sqlite', 'postgres' or 'mysql'."""
    return request.param


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite+aiosqlite:///{tmp_path}/tw.db"  # absolute path: four slashes


@pytest.fixture
def db_url(backend, tmp_path):
    """A URL of an empty database of the backend under test."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/tw.db"
    url = dbutil.require(backend)  # skips (or fails, with CI=true) if the server is down
    dbutil.empty_sync(url)
    return url


@pytest.fixture
async def client(db_url):
    async with TinyWorkflowClient(db_url) as c:
        yield c
