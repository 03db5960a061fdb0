"""Child process of tests/test_crash.py: runs one workflow to its end, unless killed.

    python tests/crash_worker.py DATABASE_URL WORKFLOW_NAME INPUT_JSON

The lease comes from TINYWORKFLOW_LEASE_SECONDS, the activities' sleeps from the
variables named in crash_workflows.py.
"""

import asyncio
import json
import sys

import crash_workflows  # noqa: F401  (registers the workflows)
from tinyworkflow import TinyWorkflowClient


async def main(url: str, name: str, input_json: str) -> None:
    async with TinyWorkflowClient(url) as client:
        run_id = await client.start_workflow(name, json.loads(input_json), wait=True)
        print(run_id, flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
