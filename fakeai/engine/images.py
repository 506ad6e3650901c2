"""Images: a deterministic picture per prompt, real PNG bytes (zlib + numpy), a bounded store behind URLs.

Strategy. `render` paints a small landscape-like scene whose every parameter (sky and ground colours,
the horizon's waves, a sun, a few translucent blobs) is drawn from a generator seeded by the prompt's
CRC and the image's index, so the same request gives the same picture and different prompts differ.
It works on whole float32 planes (no per-pixel Python). `png` writes the RGB(A) pixels as one IDAT
with the Sub filter on every row (smooth gradients become runs of near-zero bytes, so zlib level 6 is
fast and small), each chunk with its CRC-32. `ImageStore` keeps generated PNGs for their URLs: in
insertion order, which is also expiry order (one TTL for all), bounded in bytes by dropping the oldest.
"""
from __future__ import annotations

import os
import struct
import threading
import time
import zlib
from collections import OrderedDict

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def render(prompt: str, width: int, height: int, index: int = 0, transparent: bool = False) -> np.ndarray:
    """(height, width, 3) uint8 RGB, or RGBA with a transparent sky when `transparent`."""
    rng = np.random.default_rng([zlib.crc32(prompt.encode()), index])
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)
    aspect = width / height
    top, bottom, ground, sun = rng.random((4, 3), dtype=np.float32)
    img = np.empty((height, width, 3), np.float32)
    img[:] = (top + (bottom - top) * ys[:, None])[:, None, :]  # sky gradient
    alpha = np.zeros((height, width), np.float32) if transparent else None

    def paint(x0, x1, y0, y1, cover_fn, colour):
        """Blend `colour` over the box [x0, x1) x [y0, y1) (fractions) where cover_fn(x, y) says (0..1)."""
        r0, r1 = max(0, int(y0 * height)), min(height, int(y1 * height) + 1)
        c0, c1 = max(0, int(x0 * width)), min(width, int(x1 * width) + 1)
        if r0 >= r1 or c0 >= c1:
            return
        cover = cover_fn(xs[None, c0:c1], ys[r0:r1, None])
        box = img[r0:r1, c0:c1]
        box += (colour - box) * cover[..., None]
        if alpha is not None:
            np.maximum(alpha[r0:r1, c0:c1], cover, out=alpha[r0:r1, c0:c1])

    cx, cy, r = rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.4), rng.uniform(0.05, 0.14)
    paint(cx - r / aspect, cx + r / aspect, cy - r, cy + r,  # the sun: bright, soft-edged
          lambda x, y: np.clip((r - np.sqrt(((x - cx) * aspect) ** 2 + (y - cy) ** 2)) * 200, 0, 1),
          sun * 0.4 + 0.6)
    for _ in range(int(rng.integers(3, 7))):  # translucent blobs
        bx, by = rng.uniform(0, 1, 2)
        rx, ry = rng.uniform(0.05, 0.25, 2)
        strength = rng.uniform(0.35, 0.8)
        paint(bx - rx / aspect, bx + rx / aspect, by - ry, by + ry,
              lambda x, y, bx=bx, by=by, rx=rx, ry=ry, k=strength:
              np.clip((1 - ((x - bx) * aspect / rx) ** 2 - ((y - by) / ry) ** 2) * 4, 0, 1) * k,
              rng.random(3, dtype=np.float32))
    level, amp, freq, phase = rng.uniform(0.55, 0.75), rng.uniform(0.02, 0.06), rng.uniform(2, 9), rng.uniform(0, 6.3)
    horizon = level + amp * np.sin(xs * freq * 2 * np.pi + phase)
    r0 = int((level - amp) * height)  # ground, ~3 px anti-aliased edge, darker towards the bottom
    cover = np.clip((ys[r0:, None] - horizon) * height / 3, 0, 1)[..., None]
    box = img[r0:]
    box += (ground * (0.6 + 0.4 * (1 - ys[r0:, None, None])) - box) * cover
    if alpha is not None:
        np.maximum(alpha[r0:], cover[..., 0], out=alpha[r0:])
    rgb = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    if alpha is None:
        return rgb
    return np.dstack([rgb, np.clip(alpha * 255 + 0.5, 0, 255).astype(np.uint8)])


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def png(pixels: np.ndarray, level: int = 6) -> bytes:
    """A PNG file of (h, w, 3) RGB or (h, w, 4) RGBA uint8 pixels: 8-bit, not interlaced, Sub-filtered rows."""
    h, w, c = pixels.shape
    rows = pixels.reshape(h, w * c)
    filtered = np.empty((h, w * c + 1), np.uint8)
    filtered[:, 0] = 1  # filter type Sub: each byte minus the same channel of the pixel to its left
    filtered[:, 1:c + 1] = rows[:, :c]
    np.subtract(rows[:, c:], rows[:, :-c], out=filtered[:, c + 1:])  # uint8: modulo 256, as PNG wants
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 6 if c == 4 else 2, 0, 0, 0)
    return (PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(filtered.tobytes(), level)) +
            _chunk(b"IEND", b""))


class Probed:
    """What an uploaded image's header says: format ("png", "jpeg", "webp"), size, transparency."""

    __slots__ = ("format", "width", "height", "alpha")

    def __init__(self, fmt: str, width: int, height: int, alpha: bool):
        self.format, self.width, self.height, self.alpha = fmt, width, height, alpha


def probe(data: bytes) -> Probed:
    """Read an image's format, dimensions and whether it has an alpha channel from its header (no pixel is
    decoded: edits and variations need only these); ValueError when the bytes are no PNG, JPEG or WebP."""
    if data[:8] == PNG_SIGNATURE:
        if len(data) < 33 or data[12:16] != b"IHDR" or struct.unpack(">I", data[8:12])[0] != 13:
            raise ValueError("a PNG without its IHDR header")
        if zlib.crc32(data[12:29]) != struct.unpack(">I", data[29:33])[0]:
            raise ValueError("a PNG whose IHDR checksum is wrong")
        w, h, _, ctype = struct.unpack(">IIBB", data[16:26])
        alpha = ctype in (4, 6)
        pos = 33
        while not alpha and pos + 8 <= len(data):  # a tRNS chunk before the pixels also makes it transparent
            size, kind = struct.unpack(">I", data[pos:pos + 4])[0], data[pos + 4:pos + 8]
            if kind in (b"IDAT", b"IEND"):
                break
            alpha = kind == b"tRNS"
            pos += 12 + size
        return Probed("png", w, h, alpha)
    if data[:3] == b"\xff\xd8\xff":
        pos = 2
        while pos + 9 <= len(data):
            if data[pos] != 0xFF:
                raise ValueError("a JPEG whose markers are broken")
            marker, size = data[pos + 1], struct.unpack(">H", data[pos + 2:pos + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame: the size
                h, w = struct.unpack(">HH", data[pos + 5:pos + 9])
                return Probed("jpeg", w, h, False)
            pos += 2 + size
        raise ValueError("a JPEG without a frame header")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        kind = data[12:16]
        if kind == b"VP8X":
            return Probed("webp", 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little"),
                          bool(data[20] & 0x10))
        if kind == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return Probed("webp", 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF), bool(bits >> 28 & 1))
        if kind == b"VP8 ":
            w, h = struct.unpack("<HH", data[26:30])
            return Probed("webp", w & 0x3FFF, h & 0x3FFF, False)
    raise ValueError("not a PNG, JPEG or WebP image")


class ImageStore:
    """id -> PNG bytes for `ttl` seconds, at most `max_bytes` in all (oldest dropped first). Thread-safe:
    images are encoded in worker threads."""

    def __init__(self, ttl: float, max_bytes: int, clock=time.monotonic):
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.clock = clock
        self.bytes = 0
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, data: bytes) -> str:
        image_id = "img-" + os.urandom(12).hex()
        with self._lock:
            self._expire()
            self._items[image_id] = (self.clock() + self.ttl, data)
            self.bytes += len(data)
            while self.bytes > self.max_bytes and len(self._items) > 1:
                self._drop_oldest()
        return image_id

    def get(self, image_id: str) -> bytes | None:
        with self._lock:
            self._expire()
            item = self._items.get(image_id)
        return item[1] if item else None

    def __len__(self) -> int:
        return len(self._items)

    def _expire(self):
        now = self.clock()
        while self._items and next(iter(self._items.values()))[0] <= now:
            self._drop_oldest()

    def _drop_oldest(self):
        _, (_, data) = self._items.popitem(last=False)
        self.bytes -= len(data)
