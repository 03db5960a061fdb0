"""A codec of one's own (issue 22, item 2): TinyWorkflowClient(codec=...) turns every
value crossing a step into the JSON stored for it and back -- results, inputs, signals,
events, children, compensation and activity arguments -- on every backend; the stored
rows stay JSON text, which the command line and the web page show as they are."""

import asyncio
import base64
import dataclasses
import json
import os
import subprocess
import sys
import time
import urllib.request
import zlib
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from tinyworkflow import (Codec, RetryPolicy, SerializationError, TinyWorkflowClient,
                          activity, workflow)

ROOT = Path(__file__).resolve().parent.parent


class Compressed(Codec):
    """Every stored value zlib-compressed, after the default codec's encoding."""

    def encode(self, value, type):
        text = json.dumps(super().encode(value, type))
        return {"zlib": base64.b64encode(zlib.compress(text.encode())).decode()}

    def decode(self, data, type):
        return super().decode(json.loads(zlib.decompress(base64.b64decode(data["zlib"]))),
                              type)


class WithFractions(Codec):
    """A type of one's own: Fraction as "n/d"."""

    def encode(self, value, type):
        if type is Fraction:
            return f"{value.numerator}/{value.denominator}"
        return super().encode(value, type)

    def decode(self, data, type):
        if type is Fraction:
            return Fraction(data)
        return super().decode(data, type)


def hidden(stored) -> bool:
    """Whether a stored value is the codec's (nothing readable past it)."""
    return isinstance(stored, dict) and set(stored) == {"zlib"}


@dataclasses.dataclass
class Parcel:
    id: str
    weight: Decimal


calls: list = []


@activity(name="cd_weigh")
async def cd_weigh(parcel: Parcel, secret: str) -> Parcel:
    calls.append(("weigh", parcel, secret))
    return Parcel(parcel.id, parcel.weight * 2)


@activity(name="cd_plain")
async def cd_plain(n):
    return {"n": n}


@activity(name="cd_unship")
async def cd_unship(parcel: Parcel) -> None:
    calls.append(("unship", parcel))


@activity(name="cd_break", retry_policy=RetryPolicy(max_retries=0))
async def cd_break() -> None:
    raise RuntimeError("lost in transit")


@workflow(name="cd_child")
async def cd_child(ctx, parcel: Parcel) -> Parcel:
    return await cd_weigh(parcel, "child-secret")


@workflow(name="cd_flow", retry_policy=RetryPolicy(max_retries=0))
async def cd_flow(ctx, parcel: Parcel, fail: bool = False) -> dict:
    heavier = await cd_weigh(parcel, "top-secret")
    plain = await cd_plain(3)
    child = await ctx.execute_child_workflow(cd_child, parcel=heavier)
    ctx.set_event("stage", Parcel("stage", Decimal("1")))
    label = await ctx.wait_for_signal("label", type=Parcel)
    ctx.add_compensation(cd_unship, label)
    if fail:
        await cd_break()
    return {"heavier": str(heavier.weight), "plain": plain, "child": str(child.weight),
            "label": label.id}


async def test_a_compressing_codec_end_to_end(db_url):
    calls.clear()
    async with TinyWorkflowClient(db_url, codec=Compressed()) as client:
        run_id = await client.start_workflow(cd_flow, parcel=Parcel("p-1", Decimal("1.5")))
        failing = await client.start_workflow(cd_flow, parcel=Parcel("p-2", Decimal("1")),
                                              fail=True)
        await client.start_worker()
        assert await client.get_event(run_id, "stage", type=Parcel, timeout=20) == \
            Parcel("stage", Decimal("1"))
        await client.get_event(failing, "stage", timeout=20)
        await client.stop_worker()  # what follows replays from the records, decoded again
        await client.send_signal(run_id, "label", Parcel("label-1", Decimal("0")))
        await client.send_signal(failing, "label", Parcel("label-2", Decimal("0")))
        await client.recover_workflows()
        result = await client.wait_for_result(run_id, timeout=20)
        run = await client.get_workflow_status(run_id)
        steps = await client.get_workflow_steps(run_id)
        failed = await client.get_workflow_status(failing)
        event = await client.get_event(run_id, "stage")
    assert result == {"heavier": "3.0", "plain": {"n": 3}, "child": "6.0", "label": "label-1"}
    assert failed.status == "compensated", failed.error
    assert ("unship", Parcel("label-2", Decimal("0"))) in calls
    assert calls.count(("weigh", Parcel("p-1", Decimal("1.5")), "top-secret")) == 1
    # Stored, everything is the codec's: nothing of the values is readable.
    assert all(hidden(v) for v in run.input_data.values()) and hidden(run.output_data["result"])
    assert event == {"id": "stage", "weight": "1"}  # decoded by the codec, as plain JSON
    kinds = {}
    for step in steps:
        kinds[step.kind] = step
        if step.kind in ("activity", "signal", "event"):
            assert hidden(step.output), step
        if step.kind in ("activity", "compensation"):
            assert all(hidden(a) for a in step.input["args"]), step
    assert hidden(kinds["child"].output["result"])
    assert set(kinds) == {"activity", "child", "event", "signal", "compensation"}
    everything = json.dumps([run.input_data, run.output_data, [s.input for s in steps],
                             [s.output for s in steps]])
    assert "secret" not in everything and "p-1" not in everything and "label" not in everything


@workflow(name="cd_fractions")
async def cd_fractions(ctx, share: Fraction) -> Fraction:
    return share * 2


async def test_a_codec_adds_a_type_of_its_own(client, db_url):
    async with TinyWorkflowClient(db_url, codec=WithFractions()) as typed:
        run_id = await typed.start_workflow(cd_fractions, share=Fraction(1, 3), wait=True)
        assert await typed.wait_for_result(run_id, type=Fraction) == Fraction(2, 3)
        run = await typed.get_workflow_status(run_id)
    assert run.input_data == {"share": "1/3"} and run.output_data == {"result": "2/3"}
    with pytest.raises(SerializationError, match=r"the input of workflow 'cd_fractions', "
                                                 r"declared Fraction: share: a Fraction"):
        await client.start_workflow(cd_fractions, share=Fraction(1, 3))  # the default codec


class Broken(Codec):
    def encode(self, value, type):
        raise KeyError("no key for this")


async def test_a_codec_that_fails_or_is_not_one(sqlite_url):
    with pytest.raises(TypeError, match="codec must have encode"):
        TinyWorkflowClient(sqlite_url, codec=json)
    async with TinyWorkflowClient(sqlite_url, codec=Broken()) as client:
        with pytest.raises(SerializationError, match="the input of workflow 'cd_fractions': "
                                                     "the codec Broken failed: KeyError"):
            await client.start_workflow(cd_fractions, share=Fraction(1))
        assert await client.count_workflow_executions() == 0


# ---- the command line and the web page, with --codec ------------------------------------

APP = '''
import base64, json, zlib
from decimal import Decimal
from tinyworkflow import Codec, workflow


class Compressed(Codec):
    def encode(self, value, type):
        text = json.dumps(super().encode(value, type))
        return {"zlib": base64.b64encode(zlib.compress(text.encode())).decode()}

    def decode(self, data, type):
        return super().decode(json.loads(zlib.decompress(base64.b64decode(data["zlib"]))),
                              type)


@workflow(name="cd_app")
async def cd_app(ctx, amount: Decimal) -> dict:
    note = await ctx.wait_for_signal("note")
    return {"double": str(amount * 2), "note": note}
'''


def cli(tmp: Path, db: str, *argv: str) -> tuple:
    done = subprocess.run(
        [sys.executable, "-m", "tinyworkflow", "--db", db, "--import-workflows", "cd_codec_app",
         "--codec", "cd_codec_app:Compressed", "--json", *argv],
        cwd=tmp, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=60)
    return done.returncode, done.stdout, done.stderr


def test_the_command_line_uses_the_codec_and_shows_the_stored_json(tmp_path):
    (tmp_path / "cd_codec_app.py").write_text(APP)
    db = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    code, out, err = cli(tmp_path, db, "start", "cd_app", "--input", '{"amount": "1.25"}')
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    assert cli(tmp_path, db, "recover")[0] == 0
    code, out, err = cli(tmp_path, db, "signal", run_id, "note", "--payload", '"hi"')
    assert code == 0, err
    assert cli(tmp_path, db, "recover")[0] == 0
    code, out, err = cli(tmp_path, db, "result", run_id)
    assert code == 0 and json.loads(out)["result"] == {"double": "2.50", "note": "hi"}, err
    code, out, err = cli(tmp_path, db, "status", run_id)
    shown = json.loads(out)
    assert code == 0 and hidden(shown["input_data"]["amount"]), shown
    assert hidden(shown["output_data"]["result"])
    code, out, err = cli(tmp_path, db, "--codec", "cd_codec_app:Nothing", "status", run_id)
    assert code == 2 and "module 'cd_codec_app' has no 'Nothing'" in err


def test_the_web_page_uses_the_codec_and_shows_the_stored_json(tmp_path):
    (tmp_path / "cd_codec_app.py").write_text(APP)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinyworkflow", "server", "--port", "0", "--json",
         "--db", f"sqlite+aiosqlite:///{tmp_path}/web.db", "--poll-interval", "0.1",
         "--import-workflows", "cd_codec_app", "--codec", "cd_codec_app:Compressed"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        started = json.loads(proc.stdout.readline())
        url, token = started["url"].rstrip("/"), started.get("token")

        def call(method: str, path: str, body=None):
            headers = {"Content-Type": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            request = urllib.request.Request(
                url + path, method=method, headers=headers,
                data=None if body is None else json.dumps(body).encode())
            with urllib.request.urlopen(request, timeout=30) as answer:
                return json.loads(answer.read())

        run_id = call("POST", "/api/runs", {"workflow": "cd_app",
                                            "input": {"amount": "0.5"}})["run_id"]
        deadline = time.monotonic() + 20
        while call("GET", f"/api/runs/{run_id}")["waiting_for_signal"] != "note":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        call("POST", f"/api/runs/{run_id}/signal", {"name": "note", "payload": "web"})
        while (data := call("GET", f"/api/runs/{run_id}"))["run"]["status"] != "completed":
            assert time.monotonic() < deadline, data["run"]
            time.sleep(0.05)
        assert hidden(data["run"]["input_data"]["amount"])
        assert hidden(data["run"]["output_data"]["result"])
        assert [hidden(s["output"]) for s in data["steps"]] == [True]
    finally:
        proc.terminate()
        proc.wait(15)
        stderr = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert "Traceback" not in stderr, stderr


class Salted(Codec):
    """Writes the same value differently each time, as an encrypting codec with a
    random nonce does."""

    def encode(self, value, type):
        return {"salt": os.urandom(4).hex(), "value": super().encode(value, type)}

    def decode(self, data, type):
        return super().decode(data["value"], type)


async def test_an_idempotent_start_compares_inputs_decoded(db_url):
    from tinyworkflow import IdempotencyError
    async with TinyWorkflowClient(db_url, codec=Salted()) as client:
        parcel = Parcel("p", Decimal("1.0"))
        first = await client.start_workflow(cd_child, parcel=parcel, idempotency_key="k")
        again = await client.start_workflow(cd_child, parcel=parcel, idempotency_key="k")
        assert again == first
        with pytest.raises(IdempotencyError, match="started with other input"):
            await client.start_workflow(cd_child, parcel=Parcel("q", Decimal(1)),
                                        idempotency_key="k")


class Flaky(Codec):
    """A codec whose key service is away now and then: reading fails, for a while."""

    away = 0

    def decode(self, data, type):
        if Flaky.away:
            Flaky.away -= 1
            raise TimeoutError("the key service is away")
        return super().decode(data, type)


@activity(name="cd_quote")
async def cd_quote() -> Decimal:
    calls.append("quote")
    return Decimal("1.5")


@workflow(name="cd_careful")
async def cd_careful(ctx) -> str:
    try:
        price = await cd_quote()
    except Exception as exc:  # the codec's trouble must not land here, on any replay
        return f"caught {type(exc).__name__}"
    await ctx.wait_for_signal("go")
    return repr(price)


async def test_a_codec_that_cannot_read_for_a_while_stops_the_execution_not_the_run(
        sqlite_url):
    calls.clear()
    with pytest.raises(TypeError, match=r"not its class: codec=Flaky\(\)"):
        TinyWorkflowClient(sqlite_url, codec=Flaky)
    async with TinyWorkflowClient(sqlite_url, codec=Flaky(), lease_seconds=0.3) as client:
        run_id = await client.start_workflow(cd_careful)
        await client.recover_workflows()  # the step, then parked at the wait
        await client.send_signal(run_id, "go")
        Flaky.away = 2  # the input, then the step's record: each once
        started = [e for e in await client.get_workflow_events(run_id)
                   if e.event_type == "workflow_resumed"]
        for _ in range(20):  # not given back at once: it resumes once its lease expires
            await client.recover_workflows()
            if (await client.get_workflow_status(run_id)).status == "completed":
                break
            await asyncio.sleep(0.2)
        assert await client.wait_for_result(run_id, timeout=10) == "Decimal('1.5')"
        resumed = [e for e in await client.get_workflow_events(run_id)
                   if e.event_type in ("workflow_resumed", "workflow_recovered")]
    assert calls == ["quote"] and Flaky.away == 0
    assert len(resumed) >= len(started) + 2, resumed


@workflow(name="cd_amount")
async def cd_amount(ctx) -> str:
    try:
        return repr(await ctx.wait_for_signal("amount", type=Decimal))
    except SerializationError as exc:
        return f"refused: {exc}"


async def test_a_payload_that_is_not_the_type_reaches_the_workflow_as_a_refusal(sqlite_url):
    async with TinyWorkflowClient(sqlite_url, codec=Compressed()) as client:
        run_id = await client.start_workflow(cd_amount)
        await client.recover_workflows()
        await client.send_signal(run_id, "amount", "twelve")
        await client.recover_workflows()
        result = await client.wait_for_result(run_id, timeout=10)
    assert result.startswith("refused: the recorded result of step 1 (amount)"), result
