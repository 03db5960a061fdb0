"""The wheel, the console script and `python -m tinyworkflow`."""

import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_wheel_contents(tmp_path):
    out = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                          "--outdir", str(tmp_path), ROOT],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (wheel,) = tmp_path.glob("tinyworkflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {"tinyworkflow.py", "tinyworkflow_cli.py", "tinyworkflow_webui.py"} <= top
    assert not {"cli.py", "webui.py", "cli", "webui", "tests", "examples", "bench"} & top
    meta = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tinyworkflow = tinyworkflow:_main" in zipfile.ZipFile(wheel).read(meta).decode()


def test_python_dash_m_hands_off_to_the_cli():
    for argv in (["-m", "tinyworkflow", "--version"], [os.path.join(ROOT, "tinyworkflow.py"),
                                                        "--version"]):
        out = subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                             cwd=ROOT, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().endswith(__import__("tinyworkflow").__version__)


def test_companion_prefers_the_file_beside_the_library():
    import tinyworkflow

    cli = tinyworkflow._companion("cli")
    assert os.path.samefile(cli.__file__, os.path.join(ROOT, "cli.py"))
