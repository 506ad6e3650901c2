"""Speech-like audio: PCM16 synthesis whose duration follows the text; WAV, raw PCM and FLAC containers;
and the other direction, the duration of an uploaded audio file.

Strategy. Speech runs at a fixed rate, WORDS_PER_MINUTE at speed 1.0: a text of n words (whitespace
separated) lasts exactly n * 60 / WORDS_PER_MINUTE / speed seconds, rounded to a sample. That time is
shared among the words by weight (longer words take longer; a pause follows , ; : and a longer one
. ! ?). Each word is one voiced syllable: a wavetable (a harmonic series at the voice's pitch shaped by
two vowel formants, the vowel picked by a hash of the word) read at a pitch that glides a little over
the word, under an attack/release envelope, after a short consonant-like noise burst. Every sample is a
pure function of its index (the noise is an integer hash of the index, no RNG state), so `Speech.render`
makes any block on demand: a streamed body equals the whole buffer, and nothing long is held in memory.

Containers: WAV (RIFF, PCM16 mono), raw PCM (s16le, no header) and FLAC (STREAMINFO + fixed-size
frames with VERBATIM subframes: a valid FLAC stream that every decoder plays, only uncompressed).
mp3, opus and aac need real psychoacoustic codecs that neither the standard library nor numpy offers,
so `check_format` refuses them with UnsupportedFormat naming what is supported.

Audio tokens follow OpenAI's published rates for gpt-4o audio: 1 token per 100 ms of input audio,
1 token per 50 ms of output audio (`audio_tokens`).
"""
from __future__ import annotations

import functools
import math
import struct
import zlib
from collections.abc import Iterator

import numpy as np

from fakeai.config import CODECS_MISSING

SAMPLE_RATE = 24000  # OpenAI's speech output rate
WORDS_PER_MINUTE = 150  # at speed 1.0
MIN_SPEED, MAX_SPEED = 0.25, 4.0

# Voice -> fundamental pitch (Hz). OpenAI's voice names.
VOICES = {"alloy": 175, "ash": 118, "ballad": 128, "coral": 212, "echo": 108, "fable": 152, "onyx": 92,
          "nova": 222, "sage": 196, "shimmer": 232, "verse": 134, "marin": 204, "cedar": 112}

CONTENT_TYPES = {"wav": b"audio/wav", "pcm": b"audio/pcm", "flac": b"audio/flac"}
ALIASES = {"pcm16": "pcm"}  # chat's name for raw PCM
UNSUPPORTED = CODECS_MISSING  # mp3, opus, aac

FLAC_BLOCK = 4096  # samples per FLAC frame
STREAM_BLOCK = 6 * FLAC_BLOCK  # samples per streamed piece (~1 s at 24 kHz); a multiple of FLAC_BLOCK

_VOWELS = ((730, 1090), (530, 1840), (270, 2290), (570, 840), (300, 870))  # (F1, F2) of a e i o u
_TABLE = 2048
_AMPLITUDE = 0.35 * 32767
_BURST_S = 0.025  # consonant noise at a word's start
_ATTACK_S, _RELEASE_S = 0.02, 0.05


class UnsupportedFormat(ValueError):
    """An audio format we cannot produce for real."""


def check_format(fmt: str) -> str:
    """The canonical format name ("pcm16" -> "pcm"), or UnsupportedFormat naming the supported ones."""
    fmt = ALIASES.get(fmt, fmt)
    if fmt not in CONTENT_TYPES:
        why = " (it needs a real codec this server does not include)" if fmt in UNSUPPORTED else ""
        raise UnsupportedFormat(f"Audio format '{fmt}' is not supported by this server{why}; "
                                f"supported formats: {', '.join(CONTENT_TYPES)}.")
    return fmt


def duration_for(text: str, speed: float = 1.0) -> float:
    """Seconds of speech for `text` at `speed` (before rounding to a sample)."""
    return len(text.split()) * 60.0 / WORDS_PER_MINUTE / speed


def audio_tokens(seconds: float, output: bool = False) -> int:
    """gpt-4o audio tokens: 10 per second of input audio, 20 per second of output audio (at least 1)."""
    return max(1, math.ceil(seconds * (20 if output else 10)))


@functools.lru_cache(maxsize=64)
def _tables(f0: float) -> np.ndarray:
    """One period per vowel (shape 5 x _TABLE, peak 1): harmonics of f0 weighted by two formants."""
    x = np.arange(_TABLE) * (2 * np.pi / _TABLE)
    out = np.zeros((len(_VOWELS), _TABLE))
    for v, (f1, f2) in enumerate(_VOWELS):
        for k in range(1, int(3800 // f0) + 1):
            fk = k * f0
            a = math.exp(-0.5 * ((fk - f1) / 110) ** 2) + 0.6 * math.exp(-0.5 * ((fk - f2) / 160) ** 2) + 0.2 / k
            out[v] += a * np.sin(k * x)
        out[v] /= np.abs(out[v]).max()
    return out


class Speech:
    """The audio of one text. Its length is known before any sample is made (`n_samples`, `duration`)."""

    def __init__(self, text: str, voice: str, speed: float = 1.0, sample_rate: int = SAMPLE_RATE):
        self.sample_rate = sample_rate
        words = text.split()
        self.n_samples = round(duration_for(text, speed) * sample_rate)
        self.duration = self.n_samples / sample_rate
        self.f0 = VOICES.get(voice) or 90 + zlib.crc32(voice.encode()) % 150
        self._table = _tables(self.f0)
        n = len(words)
        voiced = np.empty(n)
        pause = np.empty(n)
        vowel = np.empty(n, dtype=np.intp)
        pitch = np.empty(n)
        glide = np.empty(n)
        loud = np.empty(n)
        for i, w in enumerate(words):
            h = zlib.crc32(w.lower().encode())
            letters = sum(c.isalnum() for c in w)
            voiced[i] = 0.55 + 0.07 * min(letters, 12)
            end = w[-1]
            pause[i] = 0.12 + (0.8 if end in ".!?" else 0.35 if end in ",;:" else 0.0)
            vowel[i] = h % len(_VOWELS)
            pitch[i] = self.f0 * (0.94 + 0.12 * ((h >> 8) & 255) / 255)
            glide[i] = -0.15 if end in ".!?" else 0.2 * ((h >> 16) & 255) / 255 - 0.1
            loud[i] = 0.7 + 0.3 * ((h >> 24) & 255) / 255
        weights = voiced + pause
        bounds = np.concatenate(([0.0], np.cumsum(weights)))
        total = bounds[-1] if n else 1.0
        self._start = np.rint(bounds * (self.n_samples / total)).astype(np.int64)  # n + 1 word boundaries
        slot = np.diff(self._start) / sample_rate
        self._voiced_s = slot * voiced / weights if n else slot
        self._vowel, self._pitch, self._glide, self._loud = vowel, pitch, glide, loud

    def render(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) as int16: the same values whatever the block boundaries."""
        stop = min(stop, self.n_samples)
        if stop <= start:
            return np.zeros(0, dtype=np.int16)
        t = np.arange(start, stop, dtype=np.int64)
        w = np.searchsorted(self._start, t, side="right") - 1
        tau = (t - self._start[w]) / self.sample_rate  # seconds into the word
        tv = self._voiced_s[w]
        # the pitch glides by `glide` (relative) across the voiced part; cycles = integral of the pitch
        cycles = self._pitch[w] * (tau + self._glide[w] * (tau * tau / (2 * tv) - tau / 2))
        idx = ((cycles - np.floor(cycles)) * _TABLE).astype(np.intp) % _TABLE
        env = np.clip(np.minimum(tau / _ATTACK_S, (tv - tau) / _RELEASE_S), 0.0, 1.0)
        out = self._table[self._vowel[w], idx] * env * self._loud[w]
        x = t.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)  # integer hash of the index: the noise
        x ^= x >> np.uint64(29)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(32)
        noise = (x & np.uint64(0xFFFF)).astype(np.float64) / 32768.0 - 1.0
        out += noise * 0.3 * np.clip(1.0 - tau / _BURST_S, 0.0, 1.0)
        return np.clip(out * _AMPLITUDE, -32768, 32767).astype(np.int16)

    def samples(self) -> np.ndarray:
        return self.render(0, self.n_samples)


def synthesize(text: str, voice: str, speed: float = 1.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The whole speech for `text` as a mono int16 array at `sample_rate`."""
    return Speech(text, voice, speed, sample_rate).samples()


# ---------------------------------------------------------------- containers

def container_head(fmt: str, n_samples: int, sample_rate: int = SAMPLE_RATE) -> bytes:
    """What precedes the first sample (nothing for raw PCM)."""
    if fmt == "wav":
        size = n_samples * 2
        return (b"RIFF" + struct.pack("<I", 36 + size) + b"WAVE" +
                b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16) +
                b"data" + struct.pack("<I", size))
    if fmt == "flac":
        info = (struct.pack(">HH", FLAC_BLOCK, FLAC_BLOCK) + bytes(6) +  # frame sizes 0: unknown
                ((sample_rate << 44) | (0 << 41) | (15 << 36) | n_samples).to_bytes(8, "big") +
                bytes(16))  # MD5 0: unset (the stream may be produced before its last sample exists)
        return b"fLaC" + bytes([0x80, 0, 0, len(info)]) + info  # last metadata block, STREAMINFO
    return b""


def container_body(fmt: str, samples: np.ndarray, first: int, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Encoded samples. `first` is the index of samples[0] in the stream; for FLAC a multiple of FLAC_BLOCK
    (each piece but the last must be a multiple of FLAC_BLOCK long)."""
    if fmt != "flac":
        return samples.astype("<i2").tobytes()
    return b"".join(_flac_frame(samples[i:i + FLAC_BLOCK], (first + i) // FLAC_BLOCK, sample_rate)
                    for i in range(0, len(samples), FLAC_BLOCK))


def encode(samples: np.ndarray, fmt: str, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A whole file of `fmt` (wav, pcm/pcm16, flac) holding `samples` (mono int16)."""
    fmt = check_format(fmt)
    return container_head(fmt, len(samples), sample_rate) + container_body(fmt, samples, 0, sample_rate)


def encoded_pieces(speech: Speech, fmt: str, block: int = STREAM_BLOCK) -> Iterator[bytes]:
    """The file of `fmt` in pieces (head first, then `block` samples each), synthesized as it goes."""
    fmt = check_format(fmt)
    head = container_head(fmt, speech.n_samples, speech.sample_rate)
    if head:
        yield head
    for i in range(0, speech.n_samples, block):
        yield container_body(fmt, speech.render(i, i + block), i, speech.sample_rate)


# FLAC frame header sample-rate codes; other rates go as a 16-bit value in Hz (code 13).
_FLAC_RATES = {88200: 1, 176400: 2, 192000: 3, 8000: 4, 16000: 5, 22050: 6, 24000: 7, 32000: 8, 44100: 9,
               48000: 10, 96000: 11}


def _flac_frame(block: np.ndarray, number: int, sample_rate: int) -> bytes:
    n = len(block)
    rate = _FLAC_RATES.get(sample_rate, 13)
    size_code = 12 if n == FLAC_BLOCK else 7  # 12: 4096; 7: 16-bit (n - 1) after the frame number
    head = bytes([0xFF, 0xF8, size_code << 4 | rate, 0x08]) + _utf8_int(number)  # 0x08: mono, 16 bits
    if size_code == 7:
        head += struct.pack(">H", n - 1)
    if rate == 13:
        head += struct.pack(">H", sample_rate)
    head += bytes([_crc8(head)])
    frame = head + b"\x02" + block.astype(">i2").tobytes()  # subframe: VERBATIM, no wasted bits
    return frame + struct.pack(">H", crc16(frame))


def _utf8_int(n: int) -> bytes:
    """FLAC's frame number coding: UTF-8's scheme extended to 36 bits."""
    if n < 0x80:
        return bytes([n])
    k = 2
    while n >= 1 << (5 * k + 1):
        k += 1
    tail = [0x80 | (n >> 6 * j) & 0x3F for j in range(k - 2, -1, -1)]
    return bytes([(0xFF00 >> k) & 0xFF | n >> 6 * (k - 1)] + tail)


def _crc8(data: bytes) -> int:
    crc = 0
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


@functools.lru_cache(maxsize=1)
def _crc16_table() -> np.ndarray:
    """T[k, b]: the CRC-16 of byte b followed by k zero bytes, for k up to the largest frame (4 MiB, built once)."""
    n = FLAC_BLOCK * 2 + 32
    bit = np.empty(8 * n, dtype=np.uint16)  # bit[j] = x^(j + 16) mod P, P = x^16 + x^15 + x^2 + 1
    r = 0x8005  # x^16 mod P
    for j in range(8 * n):
        bit[j] = r
        r = ((r << 1) ^ 0x8005) & 0xFFFF if r & 0x8000 else r << 1
    bit = bit.reshape(n, 8)
    table = np.zeros((n, 256), dtype=np.uint16)
    for b in range(1, 256):
        low = b & -b
        table[:, b] = table[:, b ^ low] ^ bit[:, low.bit_length() - 1]
    return table


def crc16(data: bytes) -> int:
    """FLAC's frame CRC-16 (poly 0x8005, init 0, MSB first). A CRC is linear over GF(2): the CRC of a
    message is the XOR of each byte's CRC shifted by the bytes after it, so one table gather and one XOR
    reduction in numpy replace a Python loop over 8 KiB (~30x faster)."""
    if not data:
        return 0
    table = _crc16_table()
    return int(np.bitwise_xor.reduce(table[np.arange(len(data) - 1, -1, -1), np.frombuffer(data, np.uint8)]))


# ---------------------------------------------------------------- reading uploads

# OpenAI's accepted upload formats, as its error message lists them.
UPLOAD_FORMATS = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm")
_NOMINAL_BPS = {"ogg": 96_000, "webm": 96_000, "mp4": 128_000}  # when the container gives no duration cheaply
_MP3_KBPS = {  # (MPEG-1?, layer) -> bitrate index 1..14 in kbit/s
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}


def probe(data: bytes) -> tuple[str, float]:
    """(container, seconds) of an audio file, recognised by its content. WAV and FLAC: exact, from their
    headers and the data present; MP3: size / the first frame's bitrate; Ogg, WebM, MP4: size / a nominal
    bitrate. ValueError when the bytes are no audio file we know, or a WAV/FLAC header is broken."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav", _wav_seconds(data)
    if data[:4] == b"fLaC":
        if len(data) < 42 or data[4] & 0x7F != 0:
            raise ValueError("FLAC file without STREAMINFO")
        info = int.from_bytes(data[18:26], "big")
        rate, total = info >> 44, info & ((1 << 36) - 1)
        if not rate:
            raise ValueError("FLAC STREAMINFO has sample rate 0")
        return "flac", total / rate
    if data[:4] == b"OggS":
        return "ogg", len(data) * 8 / _NOMINAL_BPS["ogg"]
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "webm", len(data) * 8 / _NOMINAL_BPS["webm"]
    if data[4:8] == b"ftyp":
        return "mp4", len(data) * 8 / _NOMINAL_BPS["mp4"]
    body = data
    if data[:3] == b"ID3" and len(data) >= 10:  # skip the ID3v2 tag (its size is 4 x 7 bits)
        body = data[10 + (data[6] << 21 | data[7] << 14 | data[8] << 7 | data[9]):]
    if len(body) >= 4 and body[0] == 0xFF and body[1] & 0xE0 == 0xE0:
        version, layer, rate_i = (body[1] >> 3) & 3, 4 - ((body[1] >> 1) & 3), body[2] >> 4
        if version != 1 and layer != 4 and 1 <= rate_i <= 14:
            table = _MP3_KBPS[(True, layer)] if version == 3 else _MP3_KBPS[(False, 1 if layer == 1 else 2)]
            return "mp3", len(body) * 8 / (table[rate_i - 1] * 1000)
    raise ValueError("unrecognised audio content")


def _wav_seconds(data: bytes) -> float:
    """Walk the RIFF chunks: fmt gives the byte rate, data its size (what is present, if truncated)."""
    pos, byte_rate = 12, 0
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if cid == b"fmt ":
            if size < 16 or pos + 24 > len(data):
                raise ValueError("WAV fmt chunk too short")
            channels, rate, byte_rate, align = struct.unpack("<HIIH", data[pos + 10:pos + 22])
            if not (channels and rate and byte_rate and align):
                raise ValueError("WAV fmt chunk with zero channels, rate or block size")
        elif cid == b"data":
            if not byte_rate:
                raise ValueError("WAV data chunk before its fmt chunk")
            return min(size, len(data) - pos - 8) / byte_rate
        pos += 8 + size + (size & 1)
    raise ValueError("WAV file without a data chunk")
