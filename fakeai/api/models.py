"""GET /v1/models and GET /v1/models/{id}: the catalogue (engine/catalog.py).

Strategy: the list body is encoded once and reused until a model is added
(unknown ids are created on first use and listed from then on), so the
endpoint costs a dict lookup and one write.
"""
from __future__ import annotations

import orjson

from fakeai.server.response import JSON, Response, json_response


def register(app):
    cache = {"n": -1, "body": b""}

    def list_models(req):
        catalog = app.catalog
        if cache["n"] != len(catalog):
            cache["body"] = orjson.dumps(catalog.list_payload())
            cache["n"] = len(catalog)
        return Response(200, cache["body"], JSON)

    def get_model(req):
        return json_response(app.catalog.get_or_create(req.params["model_id"]).to_openai())

    for prefix in ("/v1", ""):
        app.router.add("GET", f"{prefix}/models", list_models)
        app.router.add("GET", prefix + "/models/{model_id:path}", get_model)
