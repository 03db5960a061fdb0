"""Shared fixtures. The workflow registry is process-wide: every test registers its
workflows and activities under names of its own."""

import pytest

from tinyworkflow import TinyWorkflowClient


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite+aiosqlite:///{tmp_path}/tw.db"


@pytest.fixture
async def client(db_url):
    async with TinyWorkflowClient(db_url) as c:
        yield c
