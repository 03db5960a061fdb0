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

    cli = tinyworkflow._internals.companion("cli")
    assert os.path.samefile(cli.__file__, os.path.join(ROOT, "cli.py"))


@pytest.mark.parametrize("companion", ["cli.py", "webui.py"])
def test_the_companions_use_only_the_public_api(companion):
    import ast

    import tinyworkflow

    tree = ast.parse(open(os.path.join(ROOT, companion)).read())
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id == "tinyworkflow"}
    used |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
             and node.module == "tinyworkflow" for alias in node.names}
    assert used, "the scan found no use at all"
    assert {name for name in used if not name.startswith("__")} <= set(tinyworkflow.__all__)


def test_the_cli_loads_the_web_page_beside_it_checkout_and_installed(tmp_path):
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import tinyworkflow; "
              "cli = tinyworkflow._internals.companion('cli'); page = cli._webui(); "
              "assert page is tinyworkflow._internals.companion('webui'); print(page.__file__)")
    out = subprocess.run([sys.executable, "-c", script, ROOT], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert os.path.samefile(out.stdout.strip(), os.path.join(ROOT, "webui.py"))
    # As pip installs them: tinyworkflow_cli.py and tinyworkflow_webui.py side by side.
    site = tmp_path / "site"
    site.mkdir()
    for source, target in (("tinyworkflow.py", "tinyworkflow.py"),
                           ("cli.py", "tinyworkflow_cli.py"),
                           ("webui.py", "tinyworkflow_webui.py")):
        (site / target).write_text(open(os.path.join(ROOT, source)).read())
    out = subprocess.run([sys.executable, "-c", script, str(site)], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert os.path.samefile(out.stdout.strip(), site / "tinyworkflow_webui.py")


def test_the_private_driver_apis_in_use_are_there():
    """tinyworkflow uses aiosqlite's Connection._execute and ._conn, aiomysql's
    Connection._reader (pyproject.toml pins the tested ranges) and asyncio's loop._ready:
    fail loudly here, not in a run, if an upgrade changes them."""
    import asyncio
    import collections
    import sqlite3

    import aiosqlite

    async def check():
        conn = await aiosqlite.connect(":memory:")
        try:
            assert isinstance(conn._conn, sqlite3.Connection)
            assert await conn._execute(lambda a, b: a + b, 40, 2) == 42  # on its thread
        finally:
            await conn.close()
    asyncio.run(check())
    # asyncio's run queue: an empty one lets a SQLite write commit at once, and
    # TestClock.settle waits for it to empty (both fall back safely without it).
    loop = asyncio.new_event_loop()
    try:
        assert isinstance(loop._ready, collections.deque)
    finally:
        loop.close()
    import aiomysql.connection
    assert "self._reader" in open(aiomysql.connection.__file__).read()


def test_uvloop_is_refused_with_a_clear_error(tmp_path):
    uvloop = pytest.importorskip("uvloop") if not os.environ.get("CI") else __import__("uvloop")
    import tinyworkflow

    async def main():
        async with tinyworkflow.TinyWorkflowClient(f"sqlite:///{tmp_path}/t.db"):
            pass
    with pytest.raises(tinyworkflow.TinyWorkflowError, match="asyncio's own event loop.*uvloop"):
        uvloop.run(main())
    assert not (tmp_path / "t.db").exists()
