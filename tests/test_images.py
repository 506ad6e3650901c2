"""Images: the PNG encoder and picture engine, the URL store, /v1/images/generations, edits and variations
(uploads probed from their headers), and /images/{id}.png.

Every PNG is decoded here with zlib and the standard library only: signature, IHDR, each chunk's
CRC-32, the decompressed size, and the Sub filter undone to compare pixels.
"""
from __future__ import annotations

import base64
import json
import struct
import time
import urllib.error
import urllib.request
import zlib

import numpy as np
import openai
import pytest

from conftest import ServerProc, raw_request
from fakeai.engine import images as I


def read_png(data: bytes):
    """-> (width, height, channels, pixels) after checking signature, chunk CRCs, sizes; undoes filters 0-2."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    w, h, depth, color, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, comp, filt, interlace) == (8, 0, 0, 0) and color in (2, 6)
    c = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT"))
    assert len(raw) == h * (1 + w * c)
    rows = np.frombuffer(raw, np.uint8).reshape(h, 1 + w * c)
    out = np.empty((h, w * c), np.uint8)
    prev = np.zeros(w * c, np.uint8)
    for y in range(h):
        f, line = rows[y, 0], rows[y, 1:].astype(np.int64)
        if f == 1:  # Sub: cumulative sum per channel, modulo 256
            line = np.cumsum(line.reshape(w, c), axis=0).reshape(-1) % 256
        elif f == 2:
            line = (line + prev) % 256
        else:
            assert f == 0, f
        out[y] = line
        prev = out[y].astype(np.int64)
    return w, h, c, out.reshape(h, w, c)


# ------------------------------------------------------------------ engine

@pytest.mark.parametrize("transparent", [False, True])
def test_png_roundtrip(transparent):
    px = I.render("a lighthouse at dusk", 97, 61, transparent=transparent)
    w, h, c, back = read_png(I.png(px))
    assert (w, h, c) == (97, 61, 4 if transparent else 3)
    assert np.array_equal(back, px)
    if transparent:
        assert back[..., 3].min() == 0 and back[..., 3].max() == 255


def test_render_is_deterministic_per_prompt_and_index():
    a = I.render("a cat", 64, 64)
    assert np.array_equal(a, I.render("a cat", 64, 64))
    assert not np.array_equal(a, I.render("a dog", 64, 64))
    assert not np.array_equal(a, I.render("a cat", 64, 64, index=1))
    assert a.std() > 5  # a picture, not a flat fill


def test_store_expiry_and_byte_bound():
    now = [0.0]
    store = I.ImageStore(ttl=10, max_bytes=250, clock=lambda: now[0])
    a = store.put(b"a" * 100)
    b = store.put(b"b" * 100)
    assert store.get(a) == b"a" * 100 and store.get("img-nope") is None
    c = store.put(b"c" * 100)  # 300 bytes > 250: the oldest goes
    assert store.get(a) is None and store.get(b) and store.get(c) and store.bytes == 200
    now[0] = 10.5
    assert store.get(b) is None and store.get(c) is None and len(store) == 0 and store.bytes == 0


# ------------------------------------------------------------------ end to end

def _fetch(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.headers["content-type"] == "image/png"
        return r.read()


def test_dalle2_urls(client, server):
    r = client.images.generate(prompt="a red fox in the snow", n=3, size="256x256")
    assert len(r.data) == 3 and r.created > 0
    blobs = []
    for item in r.data:
        assert item.url.startswith(server.url + "/images/") and item.b64_json is None and item.revised_prompt is None
        blob = _fetch(item.url)
        assert read_png(blob)[:3] == (256, 256, 3)
        blobs.append(blob)
    assert len(set(blobs)) == 3  # n images differ


def test_b64_json_is_deterministic(client):
    kw = dict(prompt="a quiet harbour", size="512x512", response_format="b64_json")
    a, b = client.images.generate(**kw), client.images.generate(**kw)
    png = base64.b64decode(a.data[0].b64_json)
    assert read_png(png)[:3] == (512, 512, 3) and a.data[0].b64_json == b.data[0].b64_json
    c = client.images.generate(**{**kw, "prompt": "a busy harbour"})
    assert c.data[0].b64_json != a.data[0].b64_json


@pytest.mark.parametrize("size", ["1024x1024", "1792x1024", "1024x1792"])
def test_dalle3_sizes_and_revised_prompt(client, size):
    r = client.images.generate(model="dall-e-3", prompt="a robot reading a book", size=size, quality="hd",
                               style="natural", response_format="b64_json")
    w, h = map(int, size.split("x"))
    assert read_png(base64.b64decode(r.data[0].b64_json))[:2] == (w, h)
    assert r.data[0].revised_prompt.startswith("a robot reading a book")


def test_gpt_image_1(client):
    r = client.images.generate(model="gpt-image-1", prompt="a paper boat", quality="low", background="transparent")
    assert r.data[0].url is None
    w, h, c, px = read_png(base64.b64decode(r.data[0].b64_json))
    assert (w, h, c) == (1024, 1024, 4) and px[..., 3].min() == 0
    assert (r.size, r.quality, r.background, r.output_format) == ("1024x1024", "low", "transparent", "png")
    u = r.usage
    assert u.output_tokens == 272 and u.input_tokens == u.input_tokens_details.text_tokens > 0
    assert u.total_tokens == u.input_tokens + u.output_tokens
    r = client.images.generate(model="gpt-image-1", prompt="a paper boat", size="1536x1024", quality="high", n=2)
    assert len(r.data) == 2 and r.usage.output_tokens == 2 * 6208
    assert read_png(base64.b64decode(r.data[1].b64_json))[:3] == (1536, 1024, 3)


async def test_async_client(aclient):
    r = await aclient.images.generate(prompt="a lantern", size="256x256", response_format="b64_json")
    assert read_png(base64.b64decode(r.data[0].b64_json))[:2] == (256, 256)


def test_url_follows_host_header(server):
    body = b'{"prompt": "a kite", "size": "256x256"}'
    head = (f"POST /v1/images/generations HTTP/1.1\r\nHost: images.example.test:8443\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    out = raw_request(server.port, head + body)
    url = json.loads(out.split(b"\r\n\r\n", 1)[1])["data"][0]["url"]
    assert url.startswith("http://images.example.test:8443/images/img-") and url.endswith(".png")
    blob = _fetch(server.url + url[len("http://images.example.test:8443"):])
    assert read_png(blob)[:2] == (256, 256)


@pytest.mark.parametrize("kw,param", [
    (dict(prompt=123), "prompt"), (dict(prompt=""), "prompt"), (dict(prompt="x" * 1001), "prompt"),
    (dict(n="2"), "n"), (dict(n=0), "n"), (dict(n=11), "n"), (dict(model="dall-e-3", n=2), "n"),
    (dict(size="100x100"), "size"), (dict(size=512), "size"), (dict(model="dall-e-3", size="256x256"), "size"),
    (dict(quality="hd"), "quality"), (dict(style="comic"), "style"), (dict(response_format="png"), "response_format"),
    (dict(model="gpt-image-1", response_format="url"), "response_format"),
    (dict(model="gpt-image-1", output_format="jpeg"), "output_format"),
    (dict(model="gpt-image-1", background="glass"), "background"), (dict(model="gpt-4o"), "model"),
    (dict(model="tts-1"), "model"),
])
def test_bad_input(client, kw, param):
    args = dict(prompt="a tree")
    args.update(kw)
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(**args)
    assert e.value.body["param"] == param


def test_missing_prompt_and_bad_json(server):
    for payload in (b'{"model": "dall-e-2"}', b"{nope", b'"a tree"'):
        head = (f"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode()
        out = raw_request(server.port, head + payload)
        assert out.startswith(b"HTTP/1.1 400 ") and b'"error"' in out


def test_unknown_image_is_404_and_methods(server):
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server.url + "/images/img-000000000000000000000000.png", timeout=5)
    assert e.value.code == 404 and json.loads(e.value.read())["error"]["code"] == "image_not_found"
    out = raw_request(server.port, b"POST /images/img-x.png HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                                   b"Connection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 405 ")


def test_urls_expire():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--image-url-ttl-seconds", "1", "--no-access-log")
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0)
        url = c.images.generate(prompt="a snowman", size="256x256").data[0].url
        assert read_png(_fetch(url))[:2] == (256, 256)
        time.sleep(1.3)
        with pytest.raises(urllib.error.HTTPError) as e:
            _fetch(url)
        assert e.value.code == 404
    finally:
        assert s.stop() == 0
    assert "Traceback" not in s.log()


# ------------------------------------------------------------------ edits and variations

def _png(w, h, transparent):
    return I.png(I.render("upload", w, h, 0, transparent))


def _jpeg_header(w, h):
    """SOI, an APP0 segment, then a baseline frame header: what probe reads (no scan data follows)."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, h, w, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


def _webp_vp8x(w, h, alpha):
    chunk = bytes([0x10 if alpha else 0, 0, 0, 0]) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(chunk)) + chunk
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_probe_reads_headers_only():
    assert (lambda p: (p.format, p.width, p.height, p.alpha))(I.probe(_png(40, 30, True))) == ("png", 40, 30, True)
    assert (lambda p: (p.format, p.width, p.height, p.alpha))(I.probe(_jpeg_header(640, 480))) == \
        ("jpeg", 640, 480, False)
    assert (lambda p: (p.format, p.width, p.height, p.alpha))(I.probe(_webp_vp8x(300, 200, True))) == \
        ("webp", 300, 200, True)
    broken = bytearray(_png(8, 8, False))
    broken[20] ^= 1  # inside IHDR: its CRC no longer matches
    for bad in (b"GIF89a....", bytes(broken), b"\xff\xd8\xff\xe0\x00"):
        with pytest.raises(ValueError):
            I.probe(bad)


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK marks variations deprecated
def test_dalle2_edit_and_variation(client):
    image = _png(64, 64, True)
    r = client.images.edit(model="dall-e-2", image=("in.png", image), prompt="Add a red boat", n=2, size="256x256",
                           response_format="b64_json")
    outs = [read_png(base64.b64decode(d.b64_json)) for d in r.data]
    assert len(outs) == 2 and all(o[:2] == (256, 256) for o in outs)
    again = client.images.edit(model="dall-e-2", image=("in.png", image), prompt="Add a red boat", n=1,
                               size="256x256", response_format="b64_json")
    other = client.images.edit(model="dall-e-2", image=("in.png", _png(32, 32, True)), prompt="Add a red boat", n=1,
                               size="256x256", response_format="b64_json")
    assert again.data[0].b64_json == r.data[0].b64_json != other.data[0].b64_json
    mask = _png(64, 64, True)
    url = client.images.edit(image=("in.png", _png(64, 64, False)), mask=("mask.png", mask), prompt="Sky").data[0].url
    assert read_png(_fetch(url))[:2] == (1024, 1024)
    v = client.images.create_variation(image=("in.png", image), n=3, size="512x512", response_format="b64_json")
    assert [read_png(base64.b64decode(d.b64_json))[:2] for d in v.data] == [(512, 512)] * 3


def test_gpt_image_1_edit_takes_several_images(client):
    images = [("a.png", _png(1024, 1024, False)), ("b.jpg", _jpeg_header(2048, 1024)),
              ("c.webp", _webp_vp8x(512, 512, False))]
    r = client.images.edit(model="gpt-image-1", image=images, prompt="Put them together", quality="low")
    assert r.data[0].b64_json and r.usage.input_tokens_details.image_tokens == 765 + 1105 + 255
    assert r.usage.output_tokens == 272
    assert read_png(base64.b64decode(r.data[0].b64_json))[:2] == (1024, 1024)


@pytest.mark.parametrize("kw, param, code", [
    ({"image": ("in.png", b"not an image")}, "image", "invalid_image_format"),
    ({"image": ("in.png", _png(64, 32, True))}, "image", "invalid_image_size"),  # dall-e-2: square only
    ({"image": ("in.png", _png(64, 64, False))}, "image", "invalid_image_format"),  # no alpha, no mask
    ({"image": ("in.jpg", _jpeg_header(64, 64))}, "image", "invalid_image_format"),  # dall-e-2: PNG only
    ({"image": ("in.png", _png(64, 64, False)), "mask": ("m.png", _png(32, 32, True))}, "mask", "invalid_image_size"),
    ({"image": ("in.png", _png(64, 64, False)), "mask": ("m.png", _png(64, 64, False))}, "mask",
     "invalid_image_format"),
    ({"image": [("a.png", _png(64, 64, True)), ("b.png", _png(64, 64, True))]}, "image", "invalid_value"),
    ({"image": ("in.png", _png(64, 64, True)), "model": "dall-e-3"}, "model", "invalid_value"),
    ({"image": ("in.png", _png(64, 64, True)), "size": "1792x1024"}, "size", "invalid_value"),
])
def test_edit_bad_input(client, kw, param, code):
    with pytest.raises(openai.BadRequestError) as e:
        client.images.edit(prompt="x", **kw)
    assert (e.value.body["param"], e.value.body["code"]) == (param, code)


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_variation_bad_input(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.images.create_variation(image=("in.png", _png(64, 64, True)), model="gpt-image-1")
    assert e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as e:
        client.images.create_variation(image=("in.png", _png(64, 64, True)), n=11)
    assert e.value.body["param"] == "n"
    out = raw_request(server.port, b"POST /v1/images/variations HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                   b"application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    assert out.startswith(b"HTTP/1.1 400 ") and b"multipart/form-data" in out
