"""POST /v1/images/generations and GET /images/{id}.png.

Strategy. Validate per model as OpenAI does (n, size, quality, style, prompt length, gpt-image-1's
background / output_format), then render and PNG-encode the images (engine/images.py) in a worker
thread: numpy and zlib release the GIL, so the event loop keeps serving while a 1792x1024 picture
is painted. `url` answers put the PNG in the app's bounded, expiring store and point at
`/images/{id}.png` on the host the client called (its Host header); `b64_json` answers carry the
bytes. The JSON leaves after the model's TTFT like any answer (a Deferred of one step); gpt-image-1
reports usage with OpenAI's published image-token counts per quality and size.
"""
from __future__ import annotations

import asyncio
import base64
import re

import orjson

from fakeai.api import common as C
from fakeai.engine import images as I
from fakeai.server.response import JSON, ApiError, Response

SIZES = {"dall-e-2": ("256x256", "512x512", "1024x1024"),
         "dall-e-3": ("1024x1024", "1792x1024", "1024x1792"),
         "gpt-image-1": ("1024x1024", "1536x1024", "1024x1536", "auto")}
QUALITIES = {"dall-e-2": ("standard", "auto"), "dall-e-3": ("standard", "hd", "auto"),
             "gpt-image-1": ("low", "medium", "high", "auto")}
MAX_PROMPT = {"dall-e-2": 1000, "dall-e-3": 4000, "gpt-image-1": 32000}
# gpt-image-1 output image tokens by quality and size (OpenAI's pricing table); auto counts as medium.
IMAGE_TOKENS = {"low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
                "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
                "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208}}
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")


def _family(name: str) -> str:
    """The OpenAI model whose rules apply: dated snapshots and unknown image models follow the closest one."""
    low = name.lower()
    if "dall-e-3" in low:
        return "dall-e-3"
    if "gpt-image" in low:
        return "gpt-image-1"
    return "dall-e-2"


def base_url(app, req) -> str:
    host = (req.header(b"host") or b"").decode("latin-1")
    if not _HOST.fullmatch(host):
        host = f"{app.config.host}:{app.config.port}"
    scheme = "https" if req.header(b"x-forwarded-proto") == b"https" else "http"
    return f"{scheme}://{host}"


def generate(app, store, req):
    body = req.json()
    name = C.get_str(body, "model", default="dall-e-2")
    C.model_of_kind(app, name, "image", "image generation (use dall-e-2, dall-e-3 or gpt-image-1)")
    family = _family(name)
    prompt = C.get_str(body, "prompt", required=True)
    if not prompt:
        raise ApiError(400, "Invalid 'prompt': empty string. Expected a string with minimum length 1.",
                       param="prompt", code="string_below_min_length")
    if len(prompt) > MAX_PROMPT[family]:
        raise ApiError(400, f"Invalid 'prompt': string too long. Expected a string with maximum length "
                            f"{MAX_PROMPT[family]}, but got a string with length {len(prompt)} instead.",
                       param="prompt", code="string_above_max_length")
    n = C.get_int(body, "n", 1, 10, default=1)
    if family == "dall-e-3" and n != 1:
        raise ApiError(400, f"Invalid 'n': {name} supports only n=1, but got {n}.", param="n",
                       code="invalid_value")
    size = C.get_choice(body, "size", SIZES[family], "auto" if family == "gpt-image-1" else "1024x1024")
    if size == "auto":
        size = "1024x1024"
    quality = C.get_choice(body, "quality", QUALITIES[family], "auto")
    style = C.get_choice(body, "style", ("vivid", "natural"), "vivid")
    C.get_str(body, "user")
    transparent = False
    if family == "gpt-image-1":
        fmt = C.get_str(body, "response_format", default="b64_json")
        if fmt != "b64_json":
            raise ApiError(400, f"Invalid value: '{fmt}'. gpt-image-1 always returns b64_json.",
                           param="response_format", code="unsupported_value")
        out_fmt = C.get_choice(body, "output_format", ("png", "jpeg", "webp"), "png")
        if out_fmt != "png":
            raise ApiError(400, f"output_format '{out_fmt}' is not supported by this server (it needs an image "
                                f"codec it does not include); supported: png.", param="output_format",
                           code="unsupported_value")
        background = C.get_choice(body, "background", ("transparent", "opaque", "auto"), "auto")
        transparent = background == "transparent"
        C.get_choice(body, "moderation", ("low", "auto"), "auto")
    else:
        fmt = C.get_choice(body, "response_format", ("url", "b64_json"), "url")
    prompt_tokens = app.tokenizer.count(prompt, "o200k_base")
    plan, timing, _ = C.admit_check(app, req, body, name, prompt_tokens)
    width, height = (int(v) for v in size.split("x"))
    base = base_url(app, req) if fmt == "url" else ""

    def paint():
        return [I.png(I.render(prompt, width, height, i, transparent)) for i in range(n)]

    async def run():
        pngs = await asyncio.get_running_loop().run_in_executor(None, paint)
        data = []
        for blob in pngs:
            item = ({"url": f"{base}/images/{store.put(blob)}.png"} if fmt == "url"
                    else {"b64_json": base64.b64encode(blob).decode()})
            if family == "dall-e-3":
                item["revised_prompt"] = revised_prompt(prompt, style, quality)
            data.append(item)
        payload = {"created": C.now_s(), "data": data}
        if family == "gpt-image-1":
            out = IMAGE_TOKENS["medium" if quality == "auto" else quality][size] * n
            payload.update(background="transparent" if transparent else "opaque", output_format="png",
                           quality=quality, size=size)
            payload["usage"] = {"total_tokens": prompt_tokens + out, "input_tokens": prompt_tokens,
                                "output_tokens": out,
                                "input_tokens_details": {"text_tokens": prompt_tokens, "image_tokens": 0}}
        return C.deliver(app, req, Response(200, orjson.dumps(payload), JSON), plan, 1, timing)

    return run()


def revised_prompt(prompt: str, style: str, quality: str) -> str:
    """dall-e-3 rewrites prompts into a fuller description; ours is a fixed expansion of the prompt."""
    look = "vivid, dramatic" if style == "vivid" else "natural, understated"
    detail = "finely detailed" if quality == "hd" else "clearly composed"
    return f"{prompt.strip().rstrip('.')}. The scene is {detail}, with {look} colours and soft, even lighting."


def register(app):
    store = I.ImageStore(app.config.image_url_ttl_seconds, app.config.image_store_max_bytes)

    def download(req):
        blob = store.get(req.params["image_id"])
        if blob is None:
            raise ApiError(404, f"No image with id '{req.params['image_id']}' (unknown, or its URL expired).",
                           code="image_not_found")
        return Response(200, blob, b"image/png")

    app.router.add("POST", "/v1/images/generations", lambda req: generate(app, store, req))
    app.router.add("GET", "/images/{image_id}.png", download)
