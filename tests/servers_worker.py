"""Worker process of tests/test_servers.py: serves the workflows of
tests/servers_workflows.py through the library's API (not the command line) until
SIGTERM, then stops gracefully and exits 0. Prints "worker started" once it serves.

    python tests/servers_worker.py DATABASE_URL CONCURRENCY
"""

import asyncio
import sys

import servers_workflows

if __name__ == "__main__":
    asyncio.run(servers_workflows.serve(sys.argv[1], int(sys.argv[2])))
