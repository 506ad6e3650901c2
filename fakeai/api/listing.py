"""Stored objects (files, batches) as OpenAI lists and looks them up: cursor pages and 404s.

Strategy: a resource hands over its objects oldest first; `page` validates
`after` / `limit` / `order` in OpenAI's words, orders, skips past the
`after` id and cuts `limit` objects into {object: list, data, first_id,
last_id, has_more}. An `after` id that is not in the list is a 400 (the
cursor cannot be placed). An unknown id is `not_found`: a 404 in OpenAI's
shape ("No such File object: file-...").
"""
from __future__ import annotations

from urllib.parse import parse_qsl

from fakeai.server.response import ApiError


def query(req) -> dict[str, str]:
    """The query string as a dict (the last value of a repeated name wins)."""
    try:
        return dict(parse_qsl(req.query_string, keep_blank_values=True, strict_parsing=False,
                              max_num_fields=100))
    except ValueError:
        raise ApiError(400, "Too many query parameters.", code="invalid_value") from None


def page(items: list[dict], args: dict[str, str], default_limit: int, max_limit: int, with_order: bool = True,
         default_order: str = "desc") -> dict:
    raw = args.get("limit")
    limit = default_limit
    if raw is not None:
        try:
            limit = int(raw)
        except ValueError:
            raise ApiError(400, f"Invalid 'limit': expected an integer, but got {raw!r} instead.", param="limit",
                           code="invalid_type") from None
        if not 1 <= limit <= max_limit:
            raise ApiError(400, f"Invalid 'limit': expected a value from 1 to {max_limit}, but got {limit} instead.",
                           param="limit", code="invalid_value")
    order = args.get("order", default_order) if with_order else default_order
    if order not in ("asc", "desc"):
        raise ApiError(400, f"Invalid value: '{order}'. Supported values are: 'asc' and 'desc'.", param="order",
                       code="invalid_value")
    seq = items if order == "asc" else items[::-1]
    start = 0
    after = args.get("after")
    if after:
        for i, obj in enumerate(seq):
            if obj["id"] == after:
                start = i + 1
                break
        else:
            raise ApiError(400, f"Invalid 'after': no object with id '{after}' in this list.", param="after",
                           code="invalid_value")
    data = seq[start:start + limit]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(seq) > start + limit}


def not_found(kind: str, object_id: str, param: str = "id") -> ApiError:
    return ApiError(404, f"No such {kind} object: {object_id}", param=param, code="not_found")
