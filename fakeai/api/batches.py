"""/v1/batches: create, retrieve, list, cancel; and the runner that works a batch through its endpoint.

States (OpenAI's), and what moves a batch between them:

    validating --input parses--> in_progress --all lines done--> finalizing --> completed
        |  \\--input malformed (errors.data + error file)--> failed
        |                            \\--past expires_at--> finalizing --> expired
        \\--cancel--> cancelling (lines in flight finish, none start) --> cancelled

Strategy: one asyncio task per unfinished batch. Validation parses the
input file (in a worker thread: it may be large) and checks every line
(JSON object, unique custom_id, POST, url = the batch's endpoint, a body
with one model for the whole file); any bad line fails the batch with
per-line errors. Then each line runs through the very handler the live
endpoint uses, looked up in app.router and called with a synthetic Request:
tokens, usage, KV cache, running slots and timing are those of a live
request. A handler's Deferred or TokenStream is driven by a _Sink standing
in for the connection. Lines start at `batch_lines_per_second` (0: as fast
as slots allow) with at most `batch_concurrency` in flight. request_counts
and usage move as lines finish. The output file (2xx answers) and the error
file (the others, and lines a batch expired before running) are written in
input order as purpose "batch_output" files. Policy checks are not repeated
per line: the create call passed them.

Persistence (`files_dir`, store/batches.py): the record is saved at every
state change and finished lines are appended to a progress log, so after a
restart an unfinished batch resumes where it was (validating again,
skipping lines already done, finishing a finalization or a cancellation);
a batch whose input file is gone by then fails. Without `files_dir` batches
live as long as the process.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time

import orjson

from fakeai.api import common as C, listing
from fakeai.engine.generation import now_ns
from fakeai.server.response import ApiError, Response, Stream, error_response, json_response
from fakeai.server.router import Request
from fakeai.store import public
from fakeai.store.batches import BatchStore

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
WINDOW = 86400  # "24h"
MAX_REQUESTS = 50_000
MAX_ERRORS_SHOWN = 1000
UNFINISHED = ("validating", "in_progress", "finalizing", "cancelling")
_HEADERS = [(b"content-type", b"application/json")]

log = logging.getLogger("fakeai")


class BadInput(Exception):
    """The input file failed validation: `errors` is errors.data."""

    def __init__(self, errors: list[dict]):
        super().__init__(errors[0]["message"])
        self.errors = errors


def parse_input(data: bytes | None, endpoint: str) -> tuple[list[tuple[int, str, dict]], str]:
    """-> ([(line number, custom_id, body)], model) or raise BadInput with per-line errors."""
    if data is None:
        raise BadInput([_err("input_file_missing", "The input file no longer exists.", None, None)])
    lines, errors, seen, models = [], [], set(), set()
    for n, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            errors.append(_err("invalid_json_line", f"Line {n} is not valid JSON.", None, n))
            continue
        if type(obj) is not dict:
            errors.append(_err("invalid_json_line", f"Line {n} is not a JSON object.", None, n))
            continue
        cid, body = obj.get("custom_id"), obj.get("body")
        if type(cid) is not str or not cid:
            errors.append(_err("missing_custom_id", f"Line {n}: 'custom_id' must be a non-empty string.",
                               "custom_id", n))
        elif cid in seen:
            errors.append(_err("duplicate_custom_id", f"Line {n}: custom_id '{cid}' is used more than once; "
                                                      f"custom_id values must be unique.", "custom_id", n))
        elif obj.get("method") != "POST":
            errors.append(_err("invalid_method", f"Line {n}: 'method' must be 'POST'.", "method", n))
        elif obj.get("url") != endpoint:
            errors.append(_err("mismatched_url", f"Line {n}: 'url' {obj.get('url')!r} does not match the batch's "
                                                 f"endpoint '{endpoint}'.", "url", n))
        elif type(body) is not dict:
            errors.append(_err("invalid_body", f"Line {n}: 'body' must be a JSON object.", "body", n))
        elif type(body.get("model")) is not str or not body["model"]:
            errors.append(_err("missing_model", f"Line {n}: 'body.model' must be a non-empty string.",
                               "body.model", n))
        else:
            seen.add(cid)
            models.add(body["model"])
            if len(models) > 1:
                errors.append(_err("mismatched_model", f"Line {n}: every line of a batch must use the same model "
                                                       f"({sorted(models)[0]!r} and {body['model']!r} found).",
                                   "body.model", n))
                models.discard(body["model"])
                continue
            lines.append((n, cid, body))
    if not errors and not lines:
        errors.append(_err("empty_file", "The input file has no requests.", None, None))
    if len(lines) > MAX_REQUESTS:
        errors.append(_err("too_many_requests", f"The input file has {len(lines)} requests; a batch holds at most "
                                                f"{MAX_REQUESTS}.", None, None))
    if errors:
        raise BadInput(errors)
    return lines, next(iter(models))


def _err(code, message, param, line) -> dict:
    return {"code": code, "message": message, "param": param, "line": line}


def _usage_of(body) -> tuple[int, int, int, int]:
    """(input, cached, output, reasoning) tokens of a response body: chat/completions/embeddings or Responses."""
    u = body.get("usage") if type(body) is dict else None
    if type(u) is not dict:
        return 0, 0, 0, 0
    if "input_tokens" in u:
        return (u.get("input_tokens") or 0, (u.get("input_tokens_details") or {}).get("cached_tokens") or 0,
                u.get("output_tokens") or 0, (u.get("output_tokens_details") or {}).get("reasoning_tokens") or 0)
    return (u.get("prompt_tokens") or 0, (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
            u.get("completion_tokens") or 0, (u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)


class _Sink:
    """Stands in for a connection: a Stream (Deferred or TokenStream) writes here, a future gets the Response."""

    __slots__ = ("loop", "write_paused", "parts", "future", "content_type")

    def __init__(self, loop, content_type):
        self.loop = loop
        self.write_paused = False
        self.parts: list[bytes] = []
        self.future = loop.create_future()
        self.content_type = content_type

    def stream_send(self, data: bytes) -> None:
        self.parts.append(data)

    def stream_end(self, data: bytes = b"", status: int = 200) -> None:
        self.parts.append(data)
        self.deliver_later(None, Response(status, b"".join(self.parts), self.content_type))

    def deliver_later(self, _req, result) -> None:
        if not self.future.done():
            self.future.set_result(result)


class _Run:
    """What the runner of one batch needs besides its record."""

    __slots__ = ("task", "cancel", "results", "save_lock")

    def __init__(self):
        self.task = None  # a strong reference: the loop holds tasks weakly
        self.cancel = asyncio.Event()
        self.results: dict[int, dict] = {}  # line number -> output line
        self.save_lock = asyncio.Lock()


class Batches:
    def __init__(self, app):
        self.app = app
        self.store = BatchStore(app.config.files_dir)
        self.records: dict[str, dict] = {r["id"]: r for r in self.store.load()}
        self.loaded_by = os.getpid()
        self.runs: dict[str, _Run] = {}

    def start(self, loop) -> None:
        """The serving loop is up: in the process that holds the state, read the records again if another
        process loaded them (a forked worker 0), then resume the batches left unfinished."""
        if not self.app.holds_state:
            return
        if self.store.persistent and self.loaded_by != os.getpid():
            self.records = {r["id"]: r for r in self.store.load()}
            self.loaded_by = os.getpid()
        for rec in self.records.values():
            if rec["status"] in UNFINISHED:
                log.info("resuming batch %s (%s)", rec["id"], rec["status"])
                self._launch(rec, loop)

    def _launch(self, rec, loop=None) -> None:
        run = self.runs[rec["id"]] = _Run()
        if rec["status"] == "cancelling":
            run.cancel.set()
        run.task = (loop or asyncio.get_running_loop()).create_task(self._run(rec, run))

    # ------------------------------------------------------------------ state
    async def _save(self, rec, run) -> None:
        if not self.store.persistent:
            return
        async with run.save_lock:  # saves of one batch land in order; each writes the state current then
            await asyncio.to_thread(self.store.save, orjson.dumps(rec), rec["id"])

    async def _move(self, rec, run, status) -> None:
        rec["status"] = status
        rec[f"{status}_at"] = int(time.time())
        await self._save(rec, run)

    # ------------------------------------------------------------------ the runner
    async def _run(self, rec, run) -> None:
        """From whatever unfinished state the record is in to a final one. If the server stops meanwhile
        (CancelledError) the record stays as last saved and a restart resumes it."""
        bid = rec["id"]
        try:
            data = await asyncio.to_thread(self.app.files.content, rec["input_file_id"])
            try:
                lines, model = await asyncio.to_thread(parse_input, data, rec["endpoint"])
            except BadInput as bad:
                await self._fail(rec, run, bad.errors)
                return
            rec["model"] = model
            for entry in await asyncio.to_thread(self.store.progress, bid):
                run.results[entry["line"]] = entry["out"]
            self._recount(rec, run)
            if rec["status"] == "validating" and not run.cancel.is_set():
                rec["request_counts"]["total"] = len(lines)
                await self._move(rec, run, "in_progress")
            if rec["status"] == "in_progress":
                await self._execute(rec, run, [ln for ln in lines if ln[0] not in run.results])
            await self._finish(rec, run, lines)
        except Exception:
            log.exception("batch %s failed", bid)
            await self._fail(rec, run, [_err("server_error", "The server had an error while processing the "
                                                             "batch.", None, None)])
        finally:
            self.store.close(bid, drop=rec["status"] not in UNFINISHED)
            self.runs.pop(bid, None)

    async def _execute(self, rec, run, todo) -> None:
        cfg = self.app.config
        loop = asyncio.get_running_loop()
        rate = cfg.batch_lines_per_second
        slots = asyncio.Semaphore(cfg.batch_concurrency)
        inflight: set[asyncio.Task] = set()
        t0 = loop.time()
        try:
            for k, line in enumerate(todo):
                if rate:
                    wait = t0 + k / rate - loop.time()
                    if wait > 0:
                        try:
                            await asyncio.wait_for(run.cancel.wait(), wait)
                        except asyncio.TimeoutError:
                            pass
                await slots.acquire()
                if run.cancel.is_set() or time.time() >= rec["expires_at"]:
                    slots.release()
                    break
                task = loop.create_task(self._line(rec, run, line))
                inflight.add(task)
                task.add_done_callback(lambda t: (inflight.discard(t), slots.release()))
            if inflight:
                await asyncio.gather(*inflight)
        except asyncio.CancelledError:
            for t in inflight:
                t.cancel()
            raise

    async def _line(self, rec, run, line) -> None:
        n, cid, body = line
        rid = f"req_{secrets.token_hex(16)}"
        if body.get("stream") is True:
            resp = error_response(400, "Streaming is not supported in the Batch API.", param="stream",
                                  code="invalid_value")
        else:
            resp = await self._call(Request("POST", rec["endpoint"], "", list(_HEADERS), orjson.dumps(body),
                                            ("batch", 0), rid, now_ns()))
        try:
            answer = orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            answer = resp.body.decode("utf-8", "replace")
        out = {"id": f"batch_req_{secrets.token_hex(16)}", "custom_id": cid,
               "response": {"status_code": resp.status, "request_id": rid, "body": answer}, "error": None}
        run.results[n] = out
        self.store.append(rec["id"], {"line": n, "out": out})
        self._count(rec, out)

    async def _call(self, req) -> Response:
        """The live endpoint's handler on a synthetic request, driven to its Response."""
        try:
            handler, params = self.app.router.resolve(req.method, req.path)
            req.params = params or {}
            result = handler(req)
            if asyncio.iscoroutine(result):
                result = await result
            if isinstance(result, Stream):
                sink = _Sink(asyncio.get_running_loop(), result.content_type)
                result.start(sink)
                try:
                    result = await sink.future
                except asyncio.CancelledError:
                    result.cancel()
                    raise
            return result
        except ApiError as exc:
            return exc.response()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batch line %s failed (request id %s)", req.path, req.request_id)
            return error_response(500, "The server had an error while processing your request.", "server_error",
                                  code="server_error")

    # ------------------------------------------------------------------ counts and endings
    def _count(self, rec, out) -> None:
        counts = rec["request_counts"]
        resp = out["response"]
        if resp is not None and 200 <= resp["status_code"] < 300:
            counts["completed"] += 1
            i, c, o, r = _usage_of(resp["body"])
            u = rec["usage"]
            u["input_tokens"] += i
            u["input_tokens_details"]["cached_tokens"] += c
            u["output_tokens"] += o
            u["output_tokens_details"]["reasoning_tokens"] += r
            u["total_tokens"] += i + o
        else:
            counts["failed"] += 1

    def _recount(self, rec, run) -> None:
        rec["request_counts"].update(completed=0, failed=0)
        rec["usage"] = _zero_usage()
        for out in run.results.values():
            self._count(rec, out)

    async def _fail(self, rec, run, errors) -> None:
        rec["errors"] = {"object": "list", "data": errors[:MAX_ERRORS_SHOWN]}
        lines = [{"id": f"batch_req_{secrets.token_hex(16)}", "custom_id": None, "response": None,
                  "error": {"code": e["code"], "message": e["message"]}} for e in errors]
        rec["error_file_id"] = await self._write_file(rec, "error", lines)
        await self._move(rec, run, "failed")

    async def _finish(self, rec, run, lines) -> None:
        """Write the output and error files, then land in completed, cancelled or expired."""
        cancelled = run.cancel.is_set()
        expired = not cancelled and len(run.results) < len(lines)
        if cancelled and rec["status"] != "cancelling":
            await self._move(rec, run, "cancelling")
        if rec["status"] == "in_progress":
            await self._move(rec, run, "finalizing")
        ok, bad = [], []
        for n, cid, _ in lines:
            out = run.results.get(n)
            if out is None:
                if expired:
                    bad.append({"id": f"batch_req_{secrets.token_hex(16)}", "custom_id": cid, "response": None,
                                "error": {"code": "batch_expired", "message": "This request could not be executed "
                                                                              "before the completion window "
                                                                              "expired."}})
                    rec["request_counts"]["failed"] += 1
            elif 200 <= out["response"]["status_code"] < 300:
                ok.append(out)
            else:
                bad.append(out)
        rec["output_file_id"] = await self._write_file(rec, "output", ok)
        rec["error_file_id"] = await self._write_file(rec, "error", bad)
        await self._move(rec, run, "cancelled" if cancelled else "expired" if expired else "completed")

    async def _write_file(self, rec, kind, lines) -> str | None:
        if not lines:
            return None
        data = b"".join(orjson.dumps(x) + b"\n" for x in lines)
        meta = await asyncio.to_thread(self.app.files.add, data, f"batch_{rec['id']}_{kind}.jsonl", "batch_output")
        return meta["id"]

    # ------------------------------------------------------------------ HTTP handlers
    def create(self, req):
        body = req.json()
        file_id = body.get("input_file_id")
        if type(file_id) is not str or not file_id:
            raise ApiError(400, "Missing required parameter: 'input_file_id'.", param="input_file_id",
                           code="missing_required_parameter")
        endpoint = body.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise ApiError(400, f"Invalid value: {endpoint!r}. Supported values are: "
                                + ", ".join(f"'{e}'" for e in ENDPOINTS) + ".", param="endpoint",
                           code="invalid_value")
        window = body.get("completion_window")
        if window != "24h":
            raise ApiError(400, f"Invalid value: {window!r}. Supported values are: '24h'.",
                           param="completion_window", code="invalid_value")
        metadata = _metadata(body.get("metadata"))
        meta = self.app.files.get(file_id)
        if meta is None:
            raise listing.not_found("File", file_id, "input_file_id")
        if meta["purpose"] != "batch":
            raise ApiError(400, f"File '{file_id}' has purpose '{meta['purpose']}'; a batch input file must be "
                                f"uploaded with purpose 'batch'.", param="input_file_id", code="invalid_value")
        ns = time.time_ns()
        created = ns // 1_000_000_000
        rec = {"id": f"batch_{secrets.token_hex(16)}", "object": "batch", "endpoint": endpoint, "errors": None,
               "input_file_id": file_id, "completion_window": "24h", "status": "validating",
               "output_file_id": None, "error_file_id": None, "created_at": created, "in_progress_at": None,
               "expires_at": created + WINDOW, "finalizing_at": None, "completed_at": None, "failed_at": None,
               "expired_at": None, "cancelling_at": None, "cancelled_at": None,
               "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": metadata, "model": None,
               "usage": _zero_usage(), "_created_ns": ns}
        self.records[rec["id"]] = rec
        self._launch(rec)
        return self._saved(rec)

    def _saved(self, rec):
        """The record as a response, once it is on disk (at once in memory mode)."""
        resp = json_response(public(rec))  # the state now, whatever the runner does meanwhile
        if not self.store.persistent:
            return resp

        async def reply():
            run = self.runs.get(rec["id"])
            if run is not None:
                await self._save(rec, run)
            return resp
        return reply()

    def _get(self, req) -> dict:
        bid = req.params["batch_id"]
        rec = self.records.get(bid)
        if rec is None:
            raise listing.not_found("Batch", bid)
        return rec

    def retrieve(self, req):
        return json_response(public(self._get(req)))

    def list_batches(self, req):
        items = [public(r) for r in self.records.values()]
        return json_response(listing.page(items, listing.query(req), 20, 100, with_order=False))

    def cancel(self, req):
        rec = self._get(req)
        status = rec["status"]
        if status in ("cancelling", "cancelled"):  # idempotent
            return json_response(public(rec))
        if status not in ("validating", "in_progress"):
            raise ApiError(400, f"Cannot cancel a batch with status '{status}'.", param="batch_id",
                           code="invalid_state")
        rec["status"] = "cancelling"
        rec["cancelling_at"] = int(time.time())
        self.runs[rec["id"]].cancel.set()
        return self._saved(rec)


def _zero_usage() -> dict:
    return {"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 0,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 0}


def _metadata(v):
    if v is None:
        return None
    if type(v) is not dict:
        raise ApiError(400, "Invalid type for 'metadata': expected an object.", param="metadata", code="invalid_type")
    if len(v) > 16:
        raise ApiError(400, f"Invalid 'metadata': too many keys ({len(v)}); at most 16.", param="metadata",
                       code="invalid_value")
    for k, x in v.items():
        if len(k) > 64:
            raise ApiError(400, f"Invalid 'metadata': key {k[:70]!r}... longer than 64 characters.",
                           param="metadata", code="invalid_value")
        if type(x) is not str or len(x) > 512:
            raise ApiError(400, f"Invalid 'metadata.{k}': expected a string of at most 512 characters.",
                           param=f"metadata.{k}", code="invalid_value")
    return v


def register(app):
    app.batches = b = Batches(app)
    app.startup.append(b.start)
    for prefix in ("/v1", ""):
        app.router.add("POST", prefix + "/batches", C.where_state_lives(app, b.create))
        app.router.add("GET", prefix + "/batches", C.where_state_lives(app, b.list_batches))
        app.router.add("GET", prefix + "/batches/{batch_id}", C.where_state_lives(app, b.retrieve))
        app.router.add("POST", prefix + "/batches/{batch_id}/cancel", C.where_state_lives(app, b.cancel))
