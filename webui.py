"""The tinyworkflow web page: a dashboard, runs, schedules, approvals and a JSON API,
served by ``tinyworkflow server`` beside a worker.

Standard library only (``http.server``): the page is plain HTML, CSS and JavaScript held
in this file, no build step, no CDN. The HTTP server runs in threads of its own; each
request calls the public API of the process's ``TinyWorkflowClient`` on the event loop
the worker runs on.

Safe by default: it binds 127.0.0.1 and answers only requests addressed to that host
(a DNS-rebinding page cannot read it); with a token (``--token`` or
``TINYWORKFLOW_UI_TOKEN``) every request must carry it; state changes are POSTs with a
JSON body from the page's own origin; the page builds its elements with ``textContent``
(nothing from the database becomes markup) under a Content-Security-Policy that allows
no inline script; bodies are limited in size; errors are short JSON messages.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import html
import http.server
import ipaddress
import json
import logging
import re
import socket
import threading
import urllib.parse
from datetime import datetime
from typing import Any, Optional

import tinyworkflow

MAX_BODY = 256 * 1024  # bytes of a request body: starting a run with a large input is for code
PAGE_SIZE, PAGE_LIMIT = 50, 200
EVENT_LIMIT = 1000  # of a run's audit trail, the oldest events its page shows
_COOKIE = "tinyworkflow_token"
log = logging.getLogger("tinyworkflow.webui")

_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class HTTPError(Exception):
    """An answer other than 200: its status and a short message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Encoder(json.JSONEncoder):
    """Records as objects, times as ISO 8601 (statuses are strings already)."""

    def default(self, o: Any) -> Any:
        if isinstance(o, datetime):
            return o.isoformat()
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            data = {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
            if isinstance(o, tinyworkflow.StepRecord):
                data["duration"] = o.duration
            return data
        return super().default(o)


def _summary(run: tinyworkflow.WorkflowExecution) -> dict:
    """What a list shows of a run (not its input and output, which may be large)."""
    return {"run_id": run.run_id, "workflow_name": run.workflow_name,
            "workflow_id": run.workflow_id, "status": run.status, "retry_count": run.retry_count,
            "created_at": run.created_at, "started_at": run.started_at,
            "completed_at": run.completed_at, "approval_required": run.approval_required,
            "error": None if run.error is None else run.error[:300]}


def _number(query: dict, name: str, default: int, high: int) -> int:
    text = query.get(name, [str(default)])[-1]
    if not text.isdigit() or int(text) > high:
        raise HTTPError(400, f"{name} must be a whole number from 0 to {high}")
    return int(text)


def _text(body: dict, name: str, required: bool = True) -> Optional[str]:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise HTTPError(400, f"{name} must be a non-empty string")
    return value


class WebUI:
    """The page and its API over ``client``, served from threads while the event loop
    that ``start`` is awaited on runs."""

    def __init__(self, client: tinyworkflow.TinyWorkflowClient, host: str = "127.0.0.1",
                 port: int = 8080, token: Optional[str] = None):
        self.client, self.host, self.port, self.token = client, host, port, token or None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self._server: Optional[http.server.ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self) -> None:
        """Bind (OSError if the port is taken) and serve in a thread."""
        self.loop = asyncio.get_running_loop()
        ui = self

        class Handler(_Handler):
            pass
        Handler.ui = ui
        server_class = http.server.ThreadingHTTPServer
        if ":" in self.host:
            server_class = type("Server6", (server_class,), {"address_family": socket.AF_INET6})
        self._server = server_class((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="tinyworkflow-webui", daemon=True)
        self._thread.start()
        if not is_loopback(self.host) and self.token is None:
            log.warning("the web page listens on %s WITHOUT A TOKEN: anyone who can reach "
                        "this address can start, cancel and approve runs; set --token or "
                        "TINYWORKFLOW_UI_TOKEN", self.url)

    async def stop(self) -> None:
        if self._server is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._server.shutdown)
            self._server.server_close()
            self._server = None

    def call(self, coro: Any) -> Any:
        """Run a client call on the event loop and wait for it (from a request thread)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout=60)
        except TimeoutError:
            future.cancel()
            raise HTTPError(503, "the database did not answer within 60 s") from None

    # ---- the API: (method, path pattern, handler(match, query, body)) ----------------

    def routes(self) -> list:
        return [
            ("GET", r"/api/stats", self.stats),
            ("GET", r"/api/runs", self.runs),
            ("POST", r"/api/runs", self.start_run),
            ("GET", r"/api/runs/([^/]+)", self.run),
            ("POST", r"/api/runs/([^/]+)/(cancel|resume)", self.change_run),
            ("POST", r"/api/runs/([^/]+)/approve", self.approve),
            ("POST", r"/api/runs/([^/]+)/signal", self.signal),
            ("GET", r"/api/approvals", self.approvals),
            ("GET", r"/api/workflows", self.workflows),
            ("GET", r"/api/schedules", self.schedules),
            ("POST", r"/api/schedules", self.add_schedule),
            ("POST", r"/api/schedules/([^/]+)/(pause|resume|delete)", self.change_schedule),
            ("GET", r"/api/queues", self.queues),
        ]

    def stats(self, ids, query, body) -> dict:
        client = self.client

        async def gather() -> dict:
            stats = await client.get_statistics(60)
            stats["workers"] = len(await client.list_workers())
            stats["recent"] = [_summary(r) for r in await client.list_workflow_executions(
                limit=10)]
            return stats
        return self.call(gather())

    def runs(self, ids, query, body) -> dict:
        limit = _number(query, "limit", PAGE_SIZE, PAGE_LIMIT)
        offset = _number(query, "offset", 0, 10 ** 9)
        filters = {"status": query.get("status", [None])[-1] or None,
                   "workflow_name": query.get("workflow", [None])[-1] or None,
                   "run_id_prefix": (query.get("q", [""])[-1]).strip() or None}
        client = self.client

        async def gather() -> dict:
            runs = await client.list_workflow_executions(limit=limit, offset=offset, **filters)
            total = await client.count_workflow_executions(**filters)
            return {"runs": [_summary(r) for r in runs], "total": total, "limit": limit,
                    "offset": offset}
        return self.call(gather())

    def run(self, ids, query, body) -> dict:
        run_id, client = ids[0], self.client

        async def gather() -> dict:
            run = await client.get_workflow_status(run_id)
            if run is None:
                raise HTTPError(404, f"no run with id {run_id!r}")
            events = await client.get_workflow_events(run_id, limit=EVENT_LIMIT + 1)
            more, events = len(events) > EVENT_LIMIT, events[:EVENT_LIMIT]
            waiting = None  # known from the latest event, when the trail is all here
            if not more and events and events[-1].event_type == "signal_waiting" \
                    and run.status in ("running", "pending", "retrying"):
                waiting = (events[-1].event_data or {}).get("name")
            return {"run": run, "steps": await client.get_workflow_steps(run_id),
                    "events": events, "more_events": more, "waiting_for_signal": waiting,
                    "children": [_summary(r) for r in await client.list_workflow_executions(
                        parent_run_id=run_id, limit=100)]}
        return self.call(gather())

    def start_run(self, ids, query, body) -> tuple:
        name = _text(body, "workflow")
        workflow_id = _text(body, "workflow_id", required=False)
        run_id = self.call(self.client.start_workflow(name, body.get("input"),
                                                      workflow_id=workflow_id))
        return 201, {"run_id": run_id}

    def change_run(self, ids, query, body) -> dict:
        run_id, action = ids
        if action == "cancel":
            return {"run_id": run_id, "cancelled": self.call(self.client.cancel_workflow(run_id))}
        self.call(self.client.resume_workflow(run_id))
        return {"run_id": run_id, "resumed": True}

    def approve(self, ids, query, body) -> dict:
        decision = body.get("approve")
        if not isinstance(decision, bool):
            raise HTTPError(400, "approve must be true or false")
        key = _text(body, "key", required=False)
        decide = self.client.approve_workflow if decision else self.client.reject_workflow
        self.call(decide(ids[0], key=key))
        return {"run_id": ids[0], "decision": "approved" if decision else "rejected"}

    def signal(self, ids, query, body) -> dict:
        name = _text(body, "name")
        self.call(self.client.send_signal(ids[0], name, body.get("payload")))
        return {"run_id": ids[0], "signal": name}

    def approvals(self, ids, query, body) -> dict:
        return {"runs": [_summary(r) for r in self.call(self.client.get_pending_approvals())]}

    def workflows(self, ids, query, body) -> dict:
        workers = self.call(self.client.list_workers())
        served = sorted({name for w in workers for name in w.workflows})
        return {"workflows": self.client.list_registered_workflows(),
                "activities": self.client.list_registered_activities(),
                "served_by_workers": served, "workers": workers}

    def schedules(self, ids, query, body) -> dict:
        return {"schedules": self.call(self.client.list_schedules())}

    def add_schedule(self, ids, query, body) -> tuple:
        every = body.get("every")
        if every is not None and (isinstance(every, bool) or not isinstance(every, (int, float))):
            raise HTTPError(400, "every must be a number of seconds")
        schedule_id = self.call(self.client.schedule_workflow(
            _text(body, "workflow"), _text(body, "cron", required=False), body.get("input"),
            every=every, timezone=_text(body, "timezone", required=False)))
        return 201, {"schedule": self.call(self.client.get_schedule(schedule_id))}

    def change_schedule(self, ids, query, body) -> dict:
        schedule_id, action = ids
        if action == "delete":
            self.call(self.client.delete_schedule(schedule_id))
            return {"schedule_id": schedule_id, "deleted": True}
        change = self.client.pause_schedule if action == "pause" else self.client.resume_schedule
        return {"schedule": self.call(change(schedule_id))}

    def queues(self, ids, query, body) -> dict:
        return {"queues": self.call(self.client.list_queues())}


_PAGES = re.compile(r"/(|runs|runs/[^/]+|start|schedules|approvals|workflows|queues)\Z")


class _Handler(http.server.BaseHTTPRequestHandler):
    ui: WebUI

    def version_string(self) -> str:
        return "tinyworkflow"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    timeout = 30  # seconds a connection may stay silent (idle keep-alive, a short body)

    def do_GET(self) -> None:
        self._answer("GET")

    def do_HEAD(self) -> None:
        self._answer("GET")  # _send leaves the body out

    def do_OPTIONS(self) -> None:
        self._answer("OPTIONS")

    def do_PATCH(self) -> None:
        self._answer("PATCH")

    def do_POST(self) -> None:
        self._answer("POST")

    def do_PUT(self) -> None:
        self._answer("PUT")

    def do_DELETE(self) -> None:
        self._answer("DELETE")

    def _answer(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        path, query = url.path, urllib.parse.parse_qs(url.query)
        api = path.startswith("/api/")
        try:
            self._check_host()
            if self._token_in_query(method, path, query):
                return
            self._check_token()
            if api:
                self._api(method, path, query)
            elif method != "GET":
                raise HTTPError(405, "method not allowed")
            elif path in _ASSETS:
                kind, text = _ASSETS[path]
                self._send(200, text.encode(), kind)
            elif _PAGES.match(path):
                self._send(200, _INDEX.encode(), "text/html; charset=utf-8")
            else:
                raise HTTPError(404, "no such page")
        except Exception as exc:
            if not isinstance(exc, HTTPError):
                log.exception("%s %s failed", method, path)
                exc = HTTPError(500, "internal error: see the server's log")
            # A body this request did not read would be taken for the next request on
            # the connection (and pass its checks): the connection ends with the answer.
            self.close_connection = True
            if api or method != "GET":
                self._json(exc.status, {"error": str(exc)})
            else:
                self._send(exc.status, _error_page(exc.status, str(exc)).encode(),
                           "text/html; charset=utf-8")

    # ---- checks ------------------------------------------------------------------------

    def _check_host(self) -> None:
        """A page of another site that points its own name at 127.0.0.1 (DNS rebinding)
        sends its name as Host: only the names of this machine are answered."""
        host = self.headers.get("Host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if is_loopback(self.ui.host) and not is_loopback(name.strip("[]")):
            raise HTTPError(403, "this server answers requests for localhost only")

    def _token_in_query(self, method: str, path: str, query: dict) -> bool:
        """Opening a page as /?token=... stores the token in a cookie for the next
        requests and sends the browser on without it in the address bar."""
        given = query.get("token", [None])[-1]
        if self.ui.token is None or given is None or method != "GET" or path.startswith("/api/"):
            return False
        if not hmac.compare_digest(given.encode(), self.ui.token.encode()):
            raise HTTPError(401, "wrong token")
        self.send_response(303)
        self.send_header("Location", "/" + path.lstrip("/\\"))
        self.send_header("Set-Cookie", f"{_COOKIE}={urllib.parse.quote(given)}; Path=/; "
                                       "HttpOnly; SameSite=Strict")
        self.send_header("Content-Length", "0")
        for name, value in _HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        return True

    def _check_token(self) -> None:
        if self.ui.token is None:
            return
        given = ""
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth[7:].strip()
        else:
            for part in self.headers.get("Cookie", "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == _COOKIE:
                    given = urllib.parse.unquote(value)
        if not hmac.compare_digest(given.encode(), self.ui.token.encode()):
            raise HTTPError(401, "a token is required: open the page as /?token=TOKEN, or "
                                 "send 'Authorization: Bearer TOKEN'")

    def _check_same_origin(self) -> None:
        """A write must come from this page: browsers say where a request comes from
        (Sec-Fetch-Site, Origin); a form of another site cannot send JSON either."""
        site = self.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            raise HTTPError(403, "cross-site request refused")
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"http://{self.headers.get('Host', '')}":
            raise HTTPError(403, "cross-site request refused")
        kind = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise HTTPError(415, "send the body as application/json")

    def _body(self) -> dict:
        if self.headers.get("Transfer-Encoding"):
            raise HTTPError(411, "send a Content-Length")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise HTTPError(400, "bad Content-Length") from None
        if length > MAX_BODY:
            self.close_connection = True  # the body is not read
            raise HTTPError(413, f"the body is larger than {MAX_BODY} bytes")
        if length <= 0:
            return {}
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw, parse_constant=_not_json)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise HTTPError(400, f"malformed JSON: {exc}") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "the body must be a JSON object")
        return body

    # ---- the API -----------------------------------------------------------------------

    def _api(self, method: str, path: str, query: dict) -> None:
        allowed = []
        for route_method, pattern, handler in self.ui.routes():
            match = re.fullmatch(pattern, path)
            if match is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            if method == "POST":
                self._check_same_origin()
                body = self._body()
            else:
                body = {}
            status, answer = 200, None
            try:
                answer = handler([urllib.parse.unquote(g) for g in match.groups()], query,
                                 body)
            except HTTPError:
                raise
            except (tinyworkflow.RunStateError, tinyworkflow.IdempotencyError) as exc:
                raise HTTPError(409, str(exc)) from None
            except (tinyworkflow.RunNotFoundError, tinyworkflow.ScheduleNotFoundError,
                    tinyworkflow.QueueNotFoundError) as exc:
                raise HTTPError(404, str(exc)) from None
            except (ValueError, TypeError) as exc:  # the library refused a value
                raise HTTPError(400, str(exc)) from None
            if isinstance(answer, tuple):
                status, answer = answer
            self._json(status, answer)
            return
        if allowed:
            raise HTTPError(405, f"method not allowed; use {' or '.join(sorted(set(allowed)))}")
        raise HTTPError(404, "no such API path")

    # ---- answers -----------------------------------------------------------------------

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value, cls=_Encoder, ensure_ascii=False).encode(),
                   "application/json; charset=utf-8")

    def _send(self, status: int, data: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        for name, value in _HEADERS.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def _error_page(status: int, message: str) -> str:
    return (f"<!doctype html><meta charset=utf-8><title>{status}</title>"
            f"<link rel=stylesheet href=/static/app.css><main><h1>{status}</h1>"
            f"<p>{html.escape(message)}</p><p><a href=/>tinyworkflow</a></p></main>")


async def serve(client: tinyworkflow.TinyWorkflowClient, host: str = "127.0.0.1",
                port: int = 8080, token: Optional[str] = None) -> WebUI:
    """Start serving the page for ``client`` (opened) on this event loop; returns the
    ``WebUI`` (``.url``, ``await .stop()``)."""
    ui = WebUI(client, host, port, token)
    await ui.start()
    return ui


_INDEX = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tinyworkflow</title>
<link rel="stylesheet" href="/static/app.css">
<link rel="icon" href="data:,">
<script src="/static/app.js" defer></script>
</head>
<body>
<header>
  <a class="brand" href="/">tinyworkflow</a>
  <nav>
    <a href="/">Dashboard</a><a href="/runs">Runs</a><a href="/start">Start</a>
    <a href="/approvals">Approvals</a><a href="/schedules">Schedules</a>
    <a href="/queues">Queues</a><a href="/workflows">Workflows</a>
  </nav>
</header>
<main id="main"><p class="muted">Loading...</p></main>
<div id="toast" role="status" aria-live="polite"></div>
</body>
</html>
"""

_CSS = """
:root { --fg: #1d2430; --muted: #6b7585; --line: #e2e6ec; --bg: #f6f8fa; --accent: #2f6feb;
  --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; --wait: #8250df; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--fg); background: var(--bg); }
header { display: flex; gap: 24px; align-items: center; padding: 10px 24px; background: #fff;
  border-bottom: 1px solid var(--line); }
header .brand { font-weight: 700; color: var(--fg); text-decoration: none; }
nav a { margin-right: 16px; color: var(--muted); text-decoration: none; }
nav a:hover, nav a.here { color: var(--accent); }
main { padding: 20px 24px; max-width: 1200px; }
h1 { font-size: 20px; margin: 0 0 16px; } h2 { font-size: 15px; margin: 24px 0 8px; }
a { color: var(--accent); }
.muted { color: var(--muted); }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px;
  min-width: 110px; text-decoration: none; color: var(--fg); }
.card b { display: block; font-size: 22px; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: 12px; text-transform: uppercase; }
td.mono, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12.5px; }
pre { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 10px;
  overflow: auto; max-height: 320px; margin: 0; white-space: pre-wrap; word-break: break-word; }
.status { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
  background: #eef1f5; }
.status.completed { background: #dafbe1; color: var(--ok); }
.status.failed, .status.compensated { background: #ffebe9; color: var(--bad); }
.status.running, .status.compensating { background: #ddf4ff; color: var(--accent); }
.status.paused, .status.retrying { background: #fff8c5; color: var(--warn); }
.status.cancelled, .status.continued { background: #eef1f5; color: var(--muted); }
.status.pending { background: #fbefff; color: var(--wait); }
form, .panel { background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 12px 14px; margin: 8px 0; }
form.inline { display: flex; gap: 8px; flex-wrap: wrap; align-items: center; }
label { display: block; font-weight: 600; margin: 6px 0 4px; }
input, select, textarea { font: inherit; padding: 5px 8px; border: 1px solid #c9d1d9;
  border-radius: 6px; background: #fff; }
textarea { width: 100%; min-height: 110px; font-family: ui-monospace, monospace; }
button { font: inherit; padding: 5px 12px; border-radius: 6px; border: 1px solid #c9d1d9;
  background: #f3f4f6; cursor: pointer; }
button.primary { background: var(--accent); color: #fff; border-color: var(--accent); }
button.danger { color: var(--bad); }
button:disabled { opacity: .5; cursor: default; }
.error { color: var(--bad); }
.grid { display: grid; grid-template-columns: 140px 1fr; gap: 4px 12px; }
.timeline { display: grid; grid-template-columns: 40px 220px 1fr 90px 70px; gap: 4px 10px;
  align-items: center; background: #fff; border: 1px solid var(--line); padding: 8px;
  border-radius: 8px; }
.bar { height: 12px; border-radius: 3px; background: var(--ok); min-width: 2px; }
.bar.failed { background: var(--bad); } .bar.running { background: var(--accent); }
.chart { display: flex; align-items: flex-end; gap: 2px; height: 70px; background: #fff;
  border: 1px solid var(--line); border-radius: 8px; padding: 6px; }
.chart div { flex: 1; background: var(--accent); min-height: 1px; opacity: .75; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
.pager { display: flex; gap: 10px; align-items: center; margin: 8px 0; }
#toast { position: fixed; bottom: 16px; right: 16px; background: var(--fg); color: #fff;
  padding: 8px 14px; border-radius: 6px; display: none; }
#toast.show { display: block; }
"""

_JS = r"""
"use strict";
// Every value from the server becomes text (textContent), never markup.
const main = document.getElementById("main");
const STATUSES = ["pending", "running", "paused", "retrying", "compensating", "completed",
  "failed", "cancelled", "compensated", "continued"];
let timer = null;

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function api(path, body) {
  const init = body === undefined ? {} : {method: "POST", body: JSON.stringify(body),
    headers: {"Content-Type": "application/json"}};
  const r = await fetch("/api/" + path, Object.assign({credentials: "same-origin"}, init));
  const data = await r.json().catch(() => ({error: r.statusText}));
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

function toast(text) {
  const t = document.getElementById("toast");
  t.textContent = text; t.className = "show";
  setTimeout(() => { t.className = ""; }, 3000);
}

function ago(iso) {
  if (!iso) return "-";
  const s = (Date.now() - Date.parse(iso)) / 1000, a = Math.abs(s);
  if (a < 1) return "just now";
  const [n, u] = a >= 86400 ? [a / 86400, "d"] : a >= 3600 ? [a / 3600, "h"] :
    a >= 60 ? [a / 60, "m"] : [a, "s"];
  return s < 0 ? `in ${Math.floor(n)}${u}` : `${Math.floor(n)}${u} ago`;
}
function when(iso) { return iso ? h("span", {title: iso}, ago(iso)) : "-"; }
function seconds(v) { return v === null || v === undefined ? "-" :
  v < 1 ? `${(v * 1000).toPrecision(3)} ms` : `${v.toFixed(2)} s`; }
function short(id) {
  return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(id) ?
    id.slice(0, 8) : id;
}
const enc = encodeURIComponent;
function status(s) { return h("span", {class: "status " + s}, s); }
function runLink(id) { return h("a", {class: "mono", href: "/runs/" + encodeURIComponent(id)},
  short(id)); }
function pretty(v) { return h("pre", {}, v === undefined ? "-" : JSON.stringify(v, null, 2)); }

function table(headers, rows, empty) {
  if (!rows.length) return h("p", {class: "muted"}, empty || "nothing here");
  return h("table", {}, h("thead", {}, h("tr", {}, headers.map(x => h("th", {}, x)))),
    h("tbody", {}, rows.map(r => h("tr", {}, r.map(c => h("td", {}, c))))));
}

// Put nodes (nested arrays of them; null and false skipped) in place of el's children.
function fill(el, ...nodes) {
  el.replaceChildren(...nodes.flat(Infinity).filter(n => n !== null && n !== undefined &&
    n !== false).map(n => n instanceof Node ? n : document.createTextNode(String(n))));
}
function render(...nodes) { fill(main, ...nodes); }

// Pages that show running work fetch again every two seconds while they are visible.
function live(load) {
  const tick = async () => {
    try { if (document.visibilityState === "visible") await load(); }
    catch (e) { toast("Could not refresh: " + e.message); }
    timer = setTimeout(tick, 2000);
  };
  tick();
}

function runsTable(runs) {
  return table(["Run", "Workflow", "Status", "Retries", "Created", "Finished", "Error"],
    runs.map(r => [runLink(r.run_id), r.workflow_name, status(r.status), r.retry_count,
      when(r.created_at), when(r.completed_at), h("span", {class: "error"}, r.error || "")]),
    "no runs");
}

async function dashboard() {
  live(async () => {
    const s = await api("stats");
    const most = Math.max(1, ...s.created_per_minute);
    render(h("h1", {}, "Dashboard"),
      h("div", {class: "cards"},
        h("a", {class: "card", href: "/runs"}, h("b", {}, s.total), "runs"),
        STATUSES.filter(x => s.by_status[x]).map(x => h("a", {class: "card",
          href: "/runs?status=" + x}, h("b", {}, s.by_status[x]), x)),
        h("div", {class: "card"}, h("b", {}, s.workers), "live workers")),
      h("h2", {}, "Runs started per minute, last hour"),
      h("div", {class: "chart", title: "runs created per minute"},
        s.created_per_minute.map(n => h("div", {style: null, "data-n": n,
          title: `${n} runs`}))),
      h("h2", {}, "Recent runs"), runsTable(s.recent));
    main.querySelectorAll(".chart div").forEach(d => {
      d.style.height = (100 * Number(d.dataset.n) / most) + "%"; });
  });
}

async function runsPage() {
  const q = new URLSearchParams(location.search);
  const wf = (await api("workflows")).workflows;
  const state = {status: q.get("status") || "", workflow: q.get("workflow") || "",
    q: q.get("q") || "", offset: Number(q.get("offset") || 0)};
  const form = h("form", {class: "inline", onsubmit: e => {
      e.preventDefault(); const f = new FormData(form);
      const p = new URLSearchParams();
      for (const k of ["status", "workflow", "q"]) if (f.get(k)) p.set(k, f.get(k));
      location.search = p.toString(); }},
    h("select", {name: "status"}, h("option", {value: ""}, "any status"),
      STATUSES.map(s => h("option", {value: s, selected: s === state.status}, s))),
    h("input", {name: "workflow", list: "wfs", placeholder: "workflow name",
      value: state.workflow}),
    h("datalist", {id: "wfs"}, wf.map(w => h("option", {value: w}))),
    h("input", {name: "q", placeholder: "run id starts with", value: state.q}),
    h("button", {class: "primary"}, "Filter"));
  const list = h("div", {});
  render(h("h1", {}, "Runs"), form, list);
  live(async () => {
    const p = new URLSearchParams();
    for (const k of ["status", "workflow", "q"]) if (state[k]) p.set(k, state[k]);
    p.set("offset", state.offset); p.set("limit", 50);
    const d = await api("runs?" + p);
    const go = off => { const u = new URLSearchParams(location.search);
      u.set("offset", off); location.search = u.toString(); };
    fill(list,
      h("div", {class: "pager"},
        h("span", {class: "muted"}, d.total ? `${d.offset + 1}-${d.offset + d.runs.length}` +
          ` of ${d.total}` : "0 runs"),
        h("button", {disabled: d.offset === 0, onclick: () => go(Math.max(0, d.offset - 50))},
          "Newer"),
        h("button", {disabled: d.offset + d.runs.length >= d.total,
          onclick: () => go(d.offset + 50)}, "Older")),
      runsTable(d.runs));
  });
}

async function act(path, body, done) {
  try { await api(path, body); toast(done); } catch (e) { toast("Error: " + e.message); }
}

function jsonField(name, placeholder) {
  const area = h("textarea", {name, placeholder, spellcheck: "false"});
  const note = h("div", {class: "error"});
  const parse = () => {
    const text = area.value.trim();
    if (!text) { note.textContent = ""; return {ok: true, value: null}; }
    try { const value = JSON.parse(text); note.textContent = ""; return {ok: true, value}; }
    catch (e) { note.textContent = "Not valid JSON: " + e.message; return {ok: false}; }
  };
  area.addEventListener("input", parse);
  return {area, note, parse};
}

async function runPage(id) {
  const actions = h("div", {});
  const body = h("div", {});
  render(h("h1", {}, "Run ", h("span", {class: "mono"}, id)), actions, body);
  let shown = null;
  live(async () => {
    const d = await api("runs/" + encodeURIComponent(id));
    const r = d.run;
    const key = r.status + "|" + r.approval_required + "|" + d.waiting_for_signal;
    if (key !== shown) { shown = key; fill(actions, ...runActions(r, d)); }
    // The timeline: each step's bar starts and ends where it did within the run.
    const t = iso => iso ? Date.parse(iso) : Date.now();
    const t0 = Math.min(t(r.started_at || r.created_at), ...d.steps.map(s => t(s.started_at)));
    const span = Math.max(1, Math.max(...d.steps.map(s => t(s.completed_at))) - t0);
    fill(body,
      h("div", {class: "grid panel"},
        h("b", {}, "Workflow"), h("span", {}, r.workflow_name),
        h("b", {}, "Status"), h("span", {}, status(r.status)),
        h("b", {}, "Workflow id"), h("span", {}, r.workflow_id),
        h("b", {}, "Created"), when(r.created_at),
        h("b", {}, "Started"), when(r.started_at),
        h("b", {}, "Finished"), when(r.completed_at),
        h("b", {}, "Retries"), h("span", {}, `${r.retry_count} of ${r.max_retries}`),
        r.parent_run_id ? [h("b", {}, "Parent"), runLink(r.parent_run_id)] : [],
        r.queue_name ? [h("b", {}, "Queue"), h("span", {}, r.queue_name)] : [],
        r.approval_required ? [h("b", {}, "Waiting for"),
          h("span", {}, "approval " + r.approval_required)] : [],
        d.waiting_for_signal ? [h("b", {}, "Waiting for"),
          h("span", {}, "signal " + d.waiting_for_signal)] : []),
      r.error ? [h("h2", {}, "Error"), h("pre", {class: "error"}, r.error)] : [],
      h("h2", {}, `Steps (${d.steps.length})`),
      d.steps.length ? h("div", {class: "timeline", id: "steps"},
        d.steps.map(s => [h("span", {class: "muted"}, s.step),
          h("span", {class: "mono"}, s.name + (s.kind !== "activity" ? ` (${s.kind})` : "")),
          h("div", {}, h("div", {class: "bar " + s.status, title: s.status,
            "data-x": (t(s.started_at) - t0) / span,
            "data-w": (t(s.completed_at) - t(s.started_at)) / span})),
          h("span", {}, seconds(s.duration)),
          h("span", {class: "muted"}, s.attempts + (s.attempts === 1 ? " try" : " tries"))]))
        : h("p", {class: "muted"}, "no steps recorded yet"),
      h("div", {class: "pair"}, h("div", {}, h("h2", {}, "Input"), pretty(r.input_data)),
        h("div", {}, h("h2", {}, "Output"), pretty(r.output_data))),
      d.children.length ? [h("h2", {}, "Child runs"), runsTable(d.children)] : [],
      h("h2", {}, "Audit trail" + (d.more_events ? " (the first 1000 events)" : "")),
      table(["#", "Time", "Event", "Data"], d.events.map(e => [e.id,
        when(e.timestamp), e.event_type, h("span", {class: "mono"},
          e.event_data && Object.keys(e.event_data).length ? JSON.stringify(e.event_data) :
          "")])));
    body.querySelectorAll(".bar").forEach(b => {
      b.style.marginLeft = (100 * Number(b.dataset.x)) + "%";
      b.style.width = Math.max(0.5, 100 * Number(b.dataset.w)) + "%"; });
  });
}

function runActions(r, d) {
  const id = r.run_id, out = [];
  const finished = ["completed", "failed", "cancelled", "compensated", "continued"]
    .includes(r.status);
  if (r.approval_required) {
    out.push(h("div", {class: "panel"}, h("b", {}, `Approval "${r.approval_required}": `),
      h("button", {class: "primary", onclick: () => act(`runs/${enc(id)}/approve`,
        {approve: true}, "Approved")}, "Approve"), " ",
      h("button", {class: "danger", onclick: () => act(`runs/${enc(id)}/approve`,
        {approve: false}, "Rejected")}, "Reject")));
  }
  if (!finished) {
    const payload = jsonField("payload", "payload as JSON (optional)");
    const name = h("input", {name: "name", placeholder: "signal name", required: true,
      value: d.waiting_for_signal || ""});
    out.push(h("form", {onsubmit: e => { e.preventDefault(); const p = payload.parse();
        if (p.ok) act(`runs/${enc(id)}/signal`, {name: name.value, payload: p.value},
          "Signal sent"); }},
      h("b", {}, "Send a signal "), name, payload.area, payload.note,
      h("button", {class: "primary"}, "Send")));
    out.push(h("button", {class: "danger", onclick: () => {
      if (confirm("Cancel this run?")) act(`runs/${enc(id)}/cancel`, {}, "Cancelled"); }},
      "Cancel run"));
  }
  if (r.status === "failed" || r.status === "cancelled") {
    out.push(h("button", {class: "primary", onclick: () => act(`runs/${enc(id)}/resume`, {},
      "Resumed: a worker executes it")}, "Resume from the failure point"));
  }
  return out;
}

async function startPage() {
  const wf = await api("workflows");
  const names = [...new Set([...wf.workflows, ...wf.served_by_workers])].sort();
  const input = jsonField("input", '{"key": "value"}');
  const select = h("select", {name: "workflow", required: true},
    names.map(n => h("option", {value: n}, n)));
  const button = h("button", {class: "primary", type: "submit"}, "Start");
  input.area.addEventListener("input", () => { button.disabled = !input.parse().ok; });
  const form = h("form", {id: "start", onsubmit: async e => {
      e.preventDefault();
      const p = input.parse();
      if (!p.ok) return;
      try {
        const d = await api("runs", {workflow: select.value, input: p.value});
        location.href = "/runs/" + encodeURIComponent(d.run_id);
      } catch (err) { input.note.textContent = err.message; }
    }},
    h("label", {}, "Workflow"), select,
    h("label", {}, "Input (JSON)"), input.area, input.note, h("p", {}, button));
  render(h("h1", {}, "Start a run"), names.length ? form :
    h("p", {class: "muted"}, "No workflow is registered: start the server with " +
      "--import-workflows MODULE."));
}

async function approvalsPage() {
  render(h("h1", {}, "Waiting for approval"), h("div", {id: "list"}));
  live(async () => {
    const d = await api("approvals");
    fill(document.getElementById("list"), table(
      ["Run", "Workflow", "Approval", "Waiting since", ""],
      d.runs.map(r => [runLink(r.run_id), r.workflow_name, r.approval_required,
        when(r.created_at), h("span", {},
          h("button", {class: "primary", onclick: () => act(`runs/${enc(r.run_id)}/approve`,
            {approve: true}, "Approved")}, "Approve"), " ",
          h("button", {class: "danger", onclick: () => act(`runs/${enc(r.run_id)}/approve`,
            {approve: false}, "Rejected")}, "Reject"))]),
      "no run is waiting for an approval"));
  });
}

async function schedulesPage() {
  const wf = await api("workflows");
  const names = [...new Set([...wf.workflows, ...wf.served_by_workers])].sort();
  const input = jsonField("input", "input as JSON (optional)");
  const form = h("form", {id: "schedule", onsubmit: async e => {
      e.preventDefault(); const f = new FormData(form), p = input.parse();
      if (!p.ok) return;
      const body = {workflow: f.get("workflow"), input: p.value};
      if (f.get("every")) body.every = Number(f.get("every")); else body.cron = f.get("cron");
      if (f.get("timezone")) body.timezone = f.get("timezone");
      try { await api("schedules", body); toast("Scheduled"); form.reset(); }
      catch (err) { input.note.textContent = err.message; }
    }},
    h("b", {}, "New schedule "),
    h("select", {name: "workflow"}, names.map(n => h("option", {value: n}, n))), " ",
    h("input", {name: "cron", placeholder: "cron, e.g. 0 2 * * *"}), " or every ",
    h("input", {name: "every", type: "number", min: "1", placeholder: "seconds"}), " ",
    h("input", {name: "timezone", placeholder: "timezone (UTC)"}),
    input.area, input.note, h("button", {class: "primary"}, "Schedule"));
  const list = h("div", {});
  render(h("h1", {}, "Schedules"), form, list);
  live(async () => {
    const d = await api("schedules");
    fill(list, table(["Id", "Workflow", "Timing", "State", "Next run", "Last run",
      ""], d.schedules.map(s => [h("span", {class: "mono"}, short(s.schedule_id)),
        s.workflow_name, s.cron_expression ? `${s.cron_expression} (${s.timezone})` :
          `every ${s.every} s`, s.paused ? "paused" : "active",
        s.next_run_at ? h("span", {title: s.next_run_at}, ago(s.next_run_at)) : "-",
        s.last_run_id ? runLink(s.last_run_id) : "-",
        h("span", {}, h("button", {onclick: () => act(`schedules/${enc(s.schedule_id)}/` +
          (s.paused ? "resume" : "pause"), {}, s.paused ? "Resumed" : "Paused")},
          s.paused ? "Resume" : "Pause"), " ",
          h("button", {class: "danger", onclick: () => { if (confirm("Delete it?"))
            act(`schedules/${enc(s.schedule_id)}/delete`, {}, "Deleted"); }}, "Delete"))]),
      "no schedules"));
  });
}

async function queuesPage() {
  render(h("h1", {}, "Queues"), h("div", {id: "list"}));
  live(async () => {
    const d = await api("queues");
    const limit = v => v === null ? "-" : v;
    fill(document.getElementById("list"), table(["Queue", "Waiting", "Running",
      "Concurrency", "Per worker", "Per key", "Rate"], d.queues.map(q => [q.name, q.waiting,
        q.running, limit(q.concurrency), limit(q.worker_concurrency),
        limit(q.key_concurrency), q.rate_limit ? `${q.rate_limit[0]} per ${q.rate_limit[1]} s`
          : "-"]), "no queues"));
  });
}

async function workflowsPage() {
  const d = await api("workflows");
  render(h("h1", {}, "Workflows and activities"),
    h("h2", {}, "Workflows registered here"), table(["Name"], d.workflows.map(n => [n]),
      "none: start the server with --import-workflows MODULE"),
    h("h2", {}, "Activities registered here"), table(["Name"], d.activities.map(n => [n])),
    h("h2", {}, "Live workers"), table(["Worker", "Host", "Pid", "Heartbeat", "Workflows"],
      d.workers.map(w => [h("span", {class: "mono"}, w.worker_id), w.host, w.pid,
        when(w.heartbeat_at), w.workflows.join(", ")]), "none"));
}

const path = location.pathname;
document.querySelectorAll("nav a").forEach(a => {
  if (a.getAttribute("href") === path) a.className = "here"; });
const pages = {"/": dashboard, "/runs": runsPage, "/start": startPage,
  "/approvals": approvalsPage, "/schedules": schedulesPage, "/queues": queuesPage,
  "/workflows": workflowsPage};
const page = path.startsWith("/runs/") ?
  async () => runPage(decodeURIComponent(path.slice(6))) : pages[path];
page().catch(e => render(h("p", {class: "error"}, e.message)));
"""

_ASSETS = {"/static/app.js": ("text/javascript; charset=utf-8", _JS),
           "/static/app.css": ("text/css; charset=utf-8", _CSS)}
