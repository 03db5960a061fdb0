"""Every example runs to completion on every backend (a smoke test with a time bound)."""

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.py")))


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_runs(path, tmp_path, db_url):
    env = {**os.environ, "PYTHONPATH": ROOT, "TINYWORKFLOW_DATABASE_URL": db_url}
    out = subprocess.run([sys.executable, path], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
