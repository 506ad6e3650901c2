"""POST /v1/images/generations, /v1/images/edits, /v1/images/variations and GET /images/{id}.png.

Strategy. Validate per model as OpenAI does (n, size, quality, style, prompt length, gpt-image-1's
background / output_format), then render and PNG-encode the images (engine/images.py) in a worker
thread: numpy and zlib release the GIL, so the event loop keeps serving while a 1792x1024 picture
is painted. `url` answers put the PNG in the app's bounded, expiring store and point at
`/images/{id}.png` on the host the client called (its Host header); `b64_json` answers carry the
bytes. The JSON leaves after the model's TTFT like any answer (a Deferred of one step); gpt-image-1
reports usage with OpenAI's published image-token counts per quality and size.

Edits and variations take multipart uploads, checked as OpenAI checks them (dall-e-2: one square PNG
under 4 MB, transparent unless a mask is given, the mask a PNG with alpha of the same size; gpt-image-1:
up to 16 PNG/JPEG/WebP images, their vision tokens in the usage). Only headers are read (engine/images.py
`probe`): the answer is a picture painted like a generation's, seeded by the prompt and the uploads'
CRCs, so another upload gives another result and the same request the same one.
"""
from __future__ import annotations

import asyncio
import base64
import math
import re
import zlib

import orjson

from fakeai.api import common as C
from fakeai.engine import images as I
from fakeai.server.multipart import parse_form
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
    name, family = _model(app, body, "image generation (use dall-e-2, dall-e-3 or gpt-image-1)")
    prompt = _prompt(body, family)
    return _answer(app, store, req, body, name, family, prompt, prompt)


def _model(app, body, what: str):
    name = C.get_str(body, "model", default="dall-e-2")
    C.model_of_kind(app, name, "image", what)
    return name, _family(name)


def _prompt(body, family: str) -> str:
    prompt = C.get_str(body, "prompt", required=True)
    if not prompt:
        raise ApiError(400, "Invalid 'prompt': empty string. Expected a string with minimum length 1.",
                       param="prompt", code="string_below_min_length")
    if len(prompt) > MAX_PROMPT[family]:
        raise ApiError(400, f"Invalid 'prompt': string too long. Expected a string with maximum length "
                            f"{MAX_PROMPT[family]}, but got a string with length {len(prompt)} instead.",
                       param="prompt", code="string_above_max_length")
    return prompt


def _answer(app, store, req, body, name, family, prompt, seed: str, input_images=()):
    """Validate the output options, then paint (seeded by `seed`), encode, store or inline, and answer."""
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
    image_tokens = sum(input_image_tokens(im) for im in input_images) if family == "gpt-image-1" else 0
    plan, timing, _ = C.admit_check(app, req, body, name, prompt_tokens + image_tokens)
    width, height = (int(v) for v in size.split("x"))
    base = base_url(app, req) if fmt == "url" else ""

    def paint():
        return [I.png(I.render(seed, width, height, i, transparent)) for i in range(n)]

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
            payload["usage"] = {"total_tokens": prompt_tokens + image_tokens + out,
                                "input_tokens": prompt_tokens + image_tokens, "output_tokens": out,
                                "input_tokens_details": {"text_tokens": prompt_tokens, "image_tokens": image_tokens}}
        return C.deliver(app, req, Response(200, orjson.dumps(payload), JSON), plan, 1, timing)

    return run()


def input_image_tokens(im: I.Probed) -> int:
    """An input image's tokens as OpenAI counts vision input at high detail: scaled to fit 2048x2048, then its
    shortest side to 768, then 170 per 512-px tile plus 85."""
    w, h = im.width, im.height
    scale = min(1.0, 2048 / max(w, h))
    w, h = w * scale, h * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def _uploads(form, family: str, param: str = "image") -> list:
    """The uploaded image(s), checked as OpenAI checks them: dall-e-2 one square PNG under 4 MB; gpt-image-1 up
    to 16 PNG, JPEG or WebP images under 50 MB each (sent as `image` or `image[]`)."""
    parts = [p for p in form.parts if p.name in (param, param + "[]")]
    if not parts:
        raise ApiError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    limit, count = (50 << 20, 16) if family == "gpt-image-1" else (4 << 20, 1)
    if len(parts) > count:
        raise ApiError(400, f"Invalid '{param}': {family} takes at most {count} image(s), got {len(parts)}.",
                       param=param, code="invalid_value")
    out = []
    for p in parts:
        if p.filename is None:
            raise ApiError(400, f"Invalid '{param}': expected a file upload.", param=param, code="invalid_value")
        try:
            im = I.probe(p.data)
        except ValueError as exc:
            raise ApiError(400, f"Invalid input image '{p.filename}': {exc}.", param=param,
                           code="invalid_image_format") from None
        if family != "gpt-image-1":
            if im.format != "png" or len(p.data) >= limit:
                raise ApiError(400, "Uploaded image must be a PNG and less than 4 MB.", param=param,
                               code="invalid_image_format")
            if im.width != im.height:
                raise ApiError(400, f"Invalid input image: it must be square, got {im.width}x{im.height}.",
                               param=param, code="invalid_image_size")
        elif len(p.data) >= limit:
            raise ApiError(400, f"Invalid input image '{p.filename}': larger than 50 MB.", param=param,
                           code="invalid_image_size")
        out.append((p, im))
    return out


def _form_body(form) -> dict:
    """The plain fields of a multipart form as a JSON body would carry them (`n` as a number)."""
    body = {p.name: p.text() for p in form.parts if p.filename is None}
    if "n" in body:
        n = body["n"].strip()
        body["n"] = int(n) if n.isdigit() else n
    return body


def edit(app, store, req):
    form = parse_form(req, app.config.max_request_size)
    body = _form_body(form)
    name, family = _model(app, body, "image edits (use dall-e-2 or gpt-image-1)")
    if family == "dall-e-3":
        raise ApiError(400, f"The model '{name}' does not support image edits; use dall-e-2 or gpt-image-1.",
                       param="model", code="invalid_value")
    images = _uploads(form, family)
    mask = form.file("mask", required=False)
    first = images[0][1]
    if mask is not None:
        try:
            m = I.probe(mask.data)
        except ValueError as exc:
            raise ApiError(400, f"Invalid mask image: {exc}.", param="mask", code="invalid_image_format") from None
        if m.format != "png" or not m.alpha:
            raise ApiError(400, "Invalid mask image: it must be a PNG with an alpha channel (its transparent areas "
                                "show where to edit).", param="mask", code="invalid_image_format")
        if (m.width, m.height) != (first.width, first.height):
            raise ApiError(400, f"Invalid mask image: its size {m.width}x{m.height} differs from the image's "
                                f"{first.width}x{first.height}.", param="mask", code="invalid_image_size")
    elif family == "dall-e-2" and not first.alpha:
        raise ApiError(400, "Invalid input image: without a mask it must have transparency (RGBA, LA or a tRNS "
                            "chunk), whose transparent areas show where to edit.", param="image",
                       code="invalid_image_format")
    prompt = _prompt(body, family)
    seed = prompt + "".join("\0%08x" % zlib.crc32(p.data) for p, _ in images)  # another picture, another result
    return _answer(app, store, req, body, name, family, prompt, seed, [im for _, im in images])


def variation(app, store, req):
    form = parse_form(req, app.config.max_request_size)
    body = _form_body(form)
    name, family = _model(app, body, "image variations (use dall-e-2)")
    if family != "dall-e-2":
        raise ApiError(400, f"The model '{name}' does not support image variations; use dall-e-2.", param="model",
                       code="invalid_value")
    (part, _), = _uploads(form, family)
    return _answer(app, store, req, body, name, family, "", "variation\0%08x" % zlib.crc32(part.data))


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
    app.router.add("POST", "/v1/images/edits", lambda req: edit(app, store, req))
    app.router.add("POST", "/v1/images/variations", lambda req: variation(app, store, req))
    app.router.add("GET", "/images/{image_id}.png", download)
