"""Every example runs to completion (a smoke test with a time bound)."""

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.py")))


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_runs(path, tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT,
           "TINYWORKFLOW_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/examples.db"}
    out = subprocess.run([sys.executable, path], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
