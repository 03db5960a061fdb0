"""Every example runs to completion on every backend (a smoke test with a time bound)."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.py")))


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_runs(path, tmp_path, db_url, backend):
    env = {**os.environ, "PYTHONPATH": ROOT, "TINYWORKFLOW_DATABASE_URL": db_url}
    if backend != "sqlite":  # database_configuration.py runs there too when given the URL
        env[f"TINYWORKFLOW_EXAMPLE_{backend.upper()}_URL"] = db_url
    out = subprocess.run([sys.executable, path], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize("spec, cwd", [("examples.workflows", ROOT),
                                       (os.path.join(ROOT, "examples", "workflows.py"), None)],
                         ids=["module", "file"])
def test_examples_workflows_registers_every_example(spec, cwd, tmp_path):
    """What `tinyworkflow server --import-workflows examples.workflows` serves: the
    workflows of every example file."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("TINYWORKFLOW_DATABASE_URL", None)
    listed = subprocess.run([sys.executable, "-m", "tinyworkflow", "--import-workflows", spec,
                             "workflows", "--json"], cwd=cwd or tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    registered = set(json.loads(listed.stdout)["workflows"])
    for path in EXAMPLES:
        if os.path.basename(path) == "workflows.py":
            continue
        with open(path) as source:
            names = set(re.findall(r'@workflow\(name="([^"]+)"', source.read()))
        assert names and names <= registered, (path, names - registered)
