"""/v1/files: upload (multipart), list, retrieve, delete, download the bytes.

Strategy: the upload is parsed by server/multipart.py (strict; 400 on a
malformed body, 413 past max_request_size) and kept by store/files.py. With
`files_dir` set, every call that touches bytes on disk runs in a worker
thread (the handler returns a coroutine), so a large upload's write and
fsync never stall the token timing of other streams; in memory the handlers
answer at once. Validation follows OpenAI: purpose in the uploadable set, a
non-empty file, `.jsonl` for purpose "batch", `expires_after` {anchor:
created_at, seconds: 3600..2592000} (batch files expire after 30 days by
default); unknown ids are a 404 in OpenAI's shape.
"""
from __future__ import annotations

import asyncio

from fakeai.api import common as C, listing
from fakeai.server.multipart import parse_form
from fakeai.server.response import ApiError, Response, json_response
from fakeai.store.files import PURPOSES

BATCH_FILE_TTL = 30 * 86400
OCTET = b"application/octet-stream"


def _run(app, fn, *args, wrap=json_response):
    """fn(*args) -> wrap(result): inline in memory, in a worker thread on disk."""
    if not app.files.persistent:
        return wrap(fn(*args))

    async def run():
        return wrap(await asyncio.to_thread(fn, *args))
    return run()


def _ttl(form, purpose: str) -> int | None:
    """Seconds from creation to expiry (None: never)."""
    anchor = form.text("expires_after[anchor]")
    seconds = form.text("expires_after[seconds]")
    if anchor is None and seconds is None:
        return BATCH_FILE_TTL if purpose == "batch" else None
    if anchor != "created_at":
        raise ApiError(400, f"Invalid value: '{anchor}'. Supported values are: 'created_at'.",
                       param="expires_after.anchor", code="invalid_value")
    try:
        secs = int(seconds or "")
    except ValueError:
        raise ApiError(400, "Invalid 'expires_after.seconds': expected an integer.", param="expires_after.seconds",
                       code="invalid_type") from None
    if not 3600 <= secs <= 2592000:
        raise ApiError(400, f"Invalid 'expires_after.seconds': expected a value from 3600 to 2592000, but got "
                            f"{secs} instead.", param="expires_after.seconds", code="invalid_value")
    return secs


def create(app, req):
    form = parse_form(req, app.config.max_request_size)
    purpose = form.text("purpose", required=True)
    if purpose not in PURPOSES:
        raise ApiError(400, f"Invalid value: '{purpose}'. Supported values are: "
                            + ", ".join(f"'{p}'" for p in PURPOSES) + ".", param="purpose", code="invalid_value")
    upload = form.file("file")
    if not upload.data:
        raise ApiError(400, "The uploaded file is empty.", param="file", code="empty_file")
    filename = upload.filename or "upload"
    if purpose == "batch" and not filename.endswith(".jsonl"):
        raise ApiError(400, "Invalid file format for Batch API. Must be .jsonl", param="file",
                       code="invalid_file_format")
    return _run(app, app.files.add, upload.data, filename, purpose, _ttl(form, purpose))


def list_files(app, req):
    args = listing.query(req)
    purpose = args.get("purpose") or None
    return json_response(listing.page(app.files.list(purpose), args, 10_000, 10_000))


def retrieve(app, req):
    file_id = req.params["file_id"]
    meta = app.files.get(file_id)
    if meta is None:
        raise listing.not_found("File", file_id)
    return json_response(meta)


def delete(app, req):
    file_id = req.params["file_id"]
    if app.files.get(file_id) is None:
        raise listing.not_found("File", file_id)

    def deleted(ok):
        if not ok:  # removed meanwhile
            raise listing.not_found("File", file_id)
        return json_response({"id": file_id, "object": "file", "deleted": True})
    return _run(app, app.files.delete, file_id, wrap=deleted)


def content(app, req):
    file_id = req.params["file_id"]
    if app.files.get(file_id) is None:
        raise listing.not_found("File", file_id)

    def body(data):
        if data is None:
            raise listing.not_found("File", file_id)
        return Response(200, data, OCTET)
    return _run(app, app.files.content, file_id, wrap=body)


def register(app):
    app.startup.append(lambda loop: app.files.reopen() if app.holds_state else None)
    for prefix in ("/v1", ""):
        for method, path, handler in (("POST", "/files", create), ("GET", "/files", list_files),
                                      ("GET", "/files/{file_id}", retrieve), ("DELETE", "/files/{file_id}", delete),
                                      ("GET", "/files/{file_id}/content", content)):
            app.router.add(method, prefix + path, C.where_state_lives(app, lambda req, h=handler: h(app, req)))
