"""POST /v1/moderations: OpenAI's 13 categories, scored by the policy layer's lexicon.

Strategy: validate the input as OpenAI does (a string, an array of strings: one result each, or
an array of multimodal parts {"type": "text"} / {"type": "image_url"}: one result for all of
them; images only for the omni models), score each input with policy/moderation.py
(deterministic, so the same text always gets the same scores) and flag every category at or above
`moderation_threshold`. `category_applied_input_types` lists, per category, the input types it
was scored on: "text" when the input has text, "image" for the image-capable categories when it
has images. `enable_moderation = false` turns the endpoint off (404).
"""
from __future__ import annotations

from fakeai.api import common as C
from fakeai.policy.moderation import CATEGORIES, IMAGE_CATEGORIES, scores
from fakeai.server.response import ApiError, json_response

MODELS = ("omni-moderation-latest", "omni-moderation-2024-09-26", "text-moderation-latest",
          "text-moderation-stable", "text-moderation-007")


def _inputs(body, omni: bool) -> list[tuple[list[str], int]]:
    """-> per result: (its text parts, its number of images)."""
    v = body.get("input")
    if v is None:
        raise ApiError(400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    if type(v) is str:
        return [([v], 0)]
    if type(v) is not list or not v:
        if type(v) is list:
            raise ApiError(400, "Invalid 'input': empty array. Expected an array with minimum length 1, but got an "
                                "empty array instead.", param="input", code="empty_array")
        raise ApiError(400, "Invalid type for 'input': expected a string, an array of strings or an array of "
                            "multimodal inputs.", param="input", code="invalid_type")
    if all(type(x) is str for x in v):
        return [([x], 0) for x in v]
    texts, images = [], 0
    for i, part in enumerate(v):
        p = f"input[{i}]"
        kind = part.get("type") if type(part) is dict else None
        if kind == "text" and type(part.get("text")) is str:
            texts.append(part["text"])
        elif kind == "image_url" and type(part.get("image_url")) is dict and type(part["image_url"].get("url")) is str:
            if not omni:
                raise ApiError(400, f"Invalid '{p}': image inputs are supported by the omni-moderation models only.",
                               param=p, code="invalid_value")
            images += 1
        else:
            raise ApiError(400, f"Invalid '{p}': expected a string, {{\"type\": \"text\", \"text\": ...}} or "
                                f"{{\"type\": \"image_url\", \"image_url\": {{\"url\": ...}}}}.", param=p,
                           code="invalid_value")
    return [(texts, images)]


def _result(texts: list[str], images: int, threshold: float) -> dict:
    s = scores(texts)
    categories = {c: s[c] >= threshold for c in CATEGORIES}
    text = ["text"] if texts else []
    return {
        "flagged": any(categories.values()),
        "categories": categories,
        "category_scores": s,
        "category_applied_input_types": {c: text + (["image"] if images and c in IMAGE_CATEGORIES else [])
                                         for c in CATEGORIES},
    }


def create(app, req):
    policy = app.policy
    if not policy.moderation:
        raise ApiError(404, "The moderation endpoint is disabled on this server (enable_moderation is off).",
                       code="unknown_url")
    body = req.json()
    model = C.get_str(body, "model", default="omni-moderation-latest")
    if model not in MODELS:
        raise ApiError(400, f"Invalid value for 'model': {model!r}. Supported values are: {', '.join(MODELS)}.",
                       param="model", code="invalid_value")
    results = [_result(texts, images, policy.threshold)
               for texts, images in _inputs(body, model.startswith("omni"))]
    return json_response({"id": C.new_id("modr"), "model": model, "results": results})


def register(app):
    app.router.add("POST", "/v1/moderations", lambda req: create(app, req))
    app.router.add("POST", "/moderations", lambda req: create(app, req))
