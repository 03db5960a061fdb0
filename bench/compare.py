"""Before and after in the same run: step latency and throughput of two versions.

    git worktree add /tmp/tw-before HEAD~1
    python bench/compare.py /tmp/tw-before/tinyworkflow.py [--steps 400] [--runs 500]
                            [--trials 8] [--dir /tmp] [--db URL]

Both versions are imported side by side (as modules of their own, each with its own
registry) and measured in alternating trials on fresh SQLite files in one folder, with
one raw durable commit as the baseline in each trial (see step_latency.py):

  step        -- one run of N sequential no-op activities, durable (synchronous=FULL);
  cpu step    -- the same with synchronous=OFF: what the engine itself costs;
  throughput  -- R stored runs of 5 no-op steps, one in-process worker, until all are
                 completed (durable).

Printed: the medians of each, and of the per-trial ratios after / before.

With ``--db URL`` (PostgreSQL or MySQL) the steps and the throughput run on that
database instead, each version on tables of its own (``twcmp_before_*``,
``twcmp_after_*``, emptied before each trial); the cpu step is not measured (a
server's commit is not ours to relax).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from step_latency import WARMUP_STEPS, raw_commit_us  # noqa: E402


def load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)

    @module.activity(name="compare_noop")
    async def noop(i: int = 0) -> int:
        return i

    @module.workflow(name="compare_sequential")
    async def sequential(ctx) -> int:
        steps = ctx.get_input("steps")
        for i in range(steps):
            await ctx.execute_activity(noop, i)
        return steps

    return module


async def step_us(tw, path: str, n: int, durable: bool) -> float:
    url = f"sqlite+aiosqlite:///{path}" + ("" if durable else "?synchronous=off")
    async with tw.TinyWorkflowClient(url) as client:
        await client.start_workflow("compare_sequential", {"steps": WARMUP_STEPS}, wait=True)
        start = time.perf_counter()
        run_id = await client.start_workflow("compare_sequential", {"steps": n}, wait=True)
        elapsed = time.perf_counter() - start
        assert (await client.get_workflow_status(run_id)).status == "completed"
    return elapsed / n * 1e6


async def empty(tw, url: str, prefix: str) -> None:
    """Drop a version's tables on a database server (each trial starts empty)."""
    async with tw.TinyWorkflowClient(url, table_prefix=prefix) as client:
        # (a version older than _internals keeps its store as the client's _store)
        store = tw._internals.store(client) if hasattr(tw, "_internals") else client._store
        for table in ("events", "steps", "signals", "runs", "schedules", "queues", "workers",
                      "meta"):
            await store.batch([(f"DROP TABLE IF EXISTS {prefix}{table}", ())])


async def server_step_us(tw, url: str, prefix: str, n: int) -> float:
    await empty(tw, url, prefix)
    async with tw.TinyWorkflowClient(url, table_prefix=prefix) as client:
        await client.start_workflow("compare_sequential", {"steps": 50}, wait=True)
        start = time.perf_counter()
        run_id = await client.start_workflow("compare_sequential", {"steps": n}, wait=True)
        elapsed = time.perf_counter() - start
        assert (await client.get_workflow_status(run_id)).status == "completed"
    return elapsed / n * 1e6


async def runs_per_second(tw, path: str, runs: int, prefix: str = "") -> float:
    url = path if "://" in path else f"sqlite+aiosqlite:///{path}"
    if prefix:
        await empty(tw, url, prefix)
    async with tw.TinyWorkflowClient(url, worker_concurrency=100, poll_interval=0.05,
                                     **({"table_prefix": prefix} if prefix else {})) as client:
        ids = [await client.start_workflow("compare_sequential", {"steps": 5})
               for _ in range(runs)]
        start = time.perf_counter()
        await client.start_worker()
        for run_id in ids:
            assert await client.wait_for_result(run_id, timeout=600) == 5
        elapsed = time.perf_counter() - start
        await client.stop_worker()
    return runs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", help="the other version's tinyworkflow.py")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--db", default=None, help="a PostgreSQL or MySQL URL")
    args = parser.parse_args()
    versions = {"before": load(args.before, "tw_before"),
                "after": load(os.path.join(HERE, "..", "tinyworkflow.py"), "tw_after")}
    folder = tempfile.mkdtemp(prefix="tw-compare-", dir=args.dir)
    figures: dict = {(what, v): [] for what in ("step", "cpu", "rps") for v in versions}
    raws = []
    try:
        for trial in range(args.trials):
            raws.append(raw_commit_us(os.path.join(folder, f"raw{trial}.db"), args.steps))
            order = list(versions) if trial % 2 == 0 else list(reversed(versions))
            for name in order:
                tw, base = versions[name], os.path.join(folder, f"{name}{trial}")
                if args.db:
                    prefix = f"twcmp_{name}_"
                    figures["step", name].append(asyncio.run(server_step_us(
                        tw, args.db, prefix, args.steps)))
                    figures["cpu", name].append(float("nan"))
                    figures["rps", name].append(asyncio.run(runs_per_second(
                        tw, args.db, args.runs, prefix)))
                    continue
                figures["step", name].append(asyncio.run(step_us(tw, base + "s.db",
                                                                 args.steps, True)))
                figures["cpu", name].append(asyncio.run(step_us(tw, base + "c.db",
                                                                args.steps, False)))
                figures["rps", name].append(asyncio.run(runs_per_second(tw, base + "r.db",
                                                                        args.runs)))
            print(f"trial {trial + 1}: raw {raws[-1]:6.1f} us | step before "
                  f"{figures['step', 'before'][-1]:6.1f} after {figures['step', 'after'][-1]:6.1f}"
                  f" us | cpu step before {figures['cpu', 'before'][-1]:5.1f} after "
                  f"{figures['cpu', 'after'][-1]:5.1f} us | runs/s before "
                  f"{figures['rps', 'before'][-1]:6.0f} after {figures['rps', 'after'][-1]:6.0f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\nPython {sys.version.split()[0]}, {args.trials} trials, medians "
          f"(after / before: median of the per-trial ratios)")
    print(f"raw durable commit   {statistics.median(raws):8.1f} us")
    for what, unit, label in (("step", "us", "durable step"), ("cpu", "us", "cpu step"),
                              ("rps", "/s", "runs/s (5 steps)")):
        if args.db and what == "cpu":
            continue
        before, after = figures[what, "before"], figures[what, "after"]
        ratio = statistics.median(a / b for a, b in zip(after, before))
        print(f"{label:20} before {statistics.median(before):8.1f} {unit}   after "
              f"{statistics.median(after):8.1f} {unit}   after/before {ratio:.2f}")
    if args.db:
        return
    per_commit = {name: statistics.median(s / r for s, r in zip(figures["step", name], raws))
                  for name in versions}
    print(f"durable step / raw commit: before {per_commit['before']:.2f}, "
          f"after {per_commit['after']:.2f}")


if __name__ == "__main__":
    main()
