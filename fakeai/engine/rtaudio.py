"""Audio for the Realtime API: PCM16 and G.711 codecs, an energy VAD, speech by the token.

Strategy. Input audio is PCM16 mono at 24 kHz (the Realtime API's rate) in numpy int16
arrays. G.711 input (8 kHz, u-law `g711_ulaw` / a-law `g711_alaw`) is decoded through
256-entry tables and brought to 24 kHz by repeating each sample three times; a whole WAV
file appended as-is (what the migration guide's example does) is unwrapped, downmixed
and resampled by linear interpolation. G.711 is Sun's g711.c arithmetic, vectorised
(the very bytes of the old stdlib audioop, which Python 3.13 removed).

VAD (`turn_detection: server_vad`). The signal is cut into 10 ms frames; a frame's speech
probability is its RMS level mapped linearly from -60 dBFS (0.0) to -20 dBFS (1.0), so
the default threshold 0.5 means -40 dBFS. Speech starts on the first frame at or above
the threshold and stops once `silence_duration_ms` of frames below it followed; positions
are samples since the session's first sample. (The caller applies `prefix_padding_ms`
and reports `audio_end_ms` at the end of that silence, as OpenAI does.)

Output speech is engine/audio.py's synthesis (a fixed speaking rate, so its length
follows the transcript), rendered at the output format's rate and handed out per token
by `Spoken`.
"""
from __future__ import annotations

import struct

import numpy as np

from fakeai.engine import audio as speech_engine

RATE = 24000
FORMAT_RATES = {"pcm16": RATE, "g711_ulaw": 8000, "g711_alaw": 8000}
FRAME = RATE // 100  # 10 ms


# --------------------------------------------------------------------------- G.711, bit-exact with audioop

def _ulaw_decode(u: np.ndarray) -> np.ndarray:
    u = ~u.astype(np.int32) & 0xFF
    exponent = (u >> 4) & 7
    magnitude = ((((u & 0x0F) << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_decode(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.int32) ^ 0x55
    exponent = (a >> 4) & 7
    mantissa = (a & 0x0F) << 4
    magnitude = np.where(exponent == 0, mantissa + 8, (mantissa + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


_SEG_U_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_SEG_A_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def ulaw_encode(pcm: np.ndarray) -> np.ndarray:
    """Sun's g711.c linear2ulaw on the 14-bit sample (x >> 2), as audioop.lin2ulaw."""
    v = pcm.astype(np.int32) >> 2
    mask = np.where(v < 0, 0x7F, 0xFF)
    v = np.minimum(np.abs(v), 8159) + 33
    seg = np.searchsorted(_SEG_U_END, v)
    code = (seg << 4) | ((v >> (seg + 1)) & 0x0F)
    return ((np.where(seg >= 8, 0x7F, code) ^ mask) & 0xFF).astype(np.uint8)


def alaw_encode(pcm: np.ndarray) -> np.ndarray:
    """Sun's g711.c linear2alaw on the 13-bit sample (x >> 3), as audioop.lin2alaw."""
    v = pcm.astype(np.int32) >> 3
    mask = np.where(v >= 0, 0xD5, 0x55)
    v = np.where(v >= 0, v, -v - 1)
    seg = np.searchsorted(_SEG_A_END, v)
    code = (seg << 4) | ((v >> np.where(seg < 2, 1, seg)) & 0x0F)
    return ((np.where(seg >= 8, 0x7F, code) ^ mask) & 0xFF).astype(np.uint8)


_ULAW = _ulaw_decode(np.arange(256))
_ALAW = _alaw_decode(np.arange(256))


# --------------------------------------------------------------------------- decoding / encoding

def unwrap_wav(raw: bytes) -> np.ndarray:
    """A RIFF/WAVE file with 16-bit PCM -> int16 mono 24 kHz. ValueError if it is not one."""
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos, fmt, data = 12, None, None
    while pos + 8 <= len(raw):
        cid, size = raw[pos:pos + 4], struct.unpack_from("<I", raw, pos + 4)[0]
        body = raw[pos + 8:pos + 8 + size]
        if cid == b"fmt " and size >= 16:
            fmt = struct.unpack_from("<HHIIHH", body)
        elif cid == b"data":
            data = body
            break
        pos += 8 + size + (size & 1)
    if fmt is None or data is None:
        raise ValueError("WAV file without a fmt or data chunk")
    tag, channels, rate, _, _, bits = fmt
    if tag not in (1, 0xFFFE) or bits != 16 or not channels or not rate:
        raise ValueError(f"WAV file is not 16-bit PCM (format {tag}, {bits} bits)")
    usable = len(data) - len(data) % (2 * channels)
    x = np.frombuffer(data[:usable], dtype="<i2").reshape(-1, channels)
    mono = x[:, 0] if channels == 1 else x.mean(axis=1)
    if rate != RATE and len(mono):
        n = int(round(len(mono) * RATE / rate))
        mono = np.interp(np.arange(n) * (rate / RATE), np.arange(len(mono)), mono)
    return np.asarray(np.round(mono) if mono.dtype != np.int16 else mono).astype(np.int16)


def decode(raw: bytes, fmt: str) -> np.ndarray:
    """Bytes in a session audio format (whole samples) -> int16 mono 24 kHz."""
    if fmt == "pcm16":
        return np.frombuffer(raw, dtype="<i2").astype(np.int16)
    table = _ULAW if fmt == "g711_ulaw" else _ALAW
    return np.repeat(table[np.frombuffer(raw, dtype=np.uint8)], 3)


def encode(pcm: np.ndarray, fmt: str) -> bytes:
    """int16 mono at the format's rate (FORMAT_RATES) -> bytes in a session audio format."""
    if fmt == "pcm16":
        return pcm.astype("<i2").tobytes()
    return (ulaw_encode(pcm) if fmt == "g711_ulaw" else alaw_encode(pcm)).tobytes()


def ms(samples: int) -> int:
    """Whole milliseconds of `samples` at 24 kHz."""
    return samples * 1000 // RATE


# --------------------------------------------------------------------------- VAD

class Vad:
    """Energy voice-activity detection over a 24 kHz stream.

    feed(samples) -> [("start" | "stop", sample position)], positions counted from the
    session's first sample (`pos` is where the next sample fed sits)."""

    __slots__ = ("level_db", "silence_frames", "pending", "pos", "speaking", "silent")

    def __init__(self, threshold: float, silence_duration_ms: int, pos: int = 0):
        self.level_db = -60.0 + 40.0 * threshold
        self.silence_frames = max(1, -(-silence_duration_ms // 10))
        self.pending = np.empty(0, dtype=np.int16)
        self.pos = pos  # session position of the first sample of `pending`
        self.speaking = False
        self.silent = 0  # consecutive frames under the threshold while speaking

    def feed(self, samples: np.ndarray) -> list[tuple[str, int]]:
        x = np.concatenate((self.pending, samples)) if len(self.pending) else samples
        n = len(x) // FRAME
        self.pending = x[n * FRAME:].copy()
        if not n:
            return []
        frames = x[:n * FRAME].reshape(n, FRAME).astype(np.float32)
        rms = np.sqrt(np.mean(frames * frames, axis=1))
        speech = (20.0 * np.log10(np.maximum(rms, 1e-3) / 32768.0) >= self.level_db).tolist()
        events = []
        base = self.pos
        for i, s in enumerate(speech):
            if not self.speaking:
                if s:
                    self.speaking = True
                    self.silent = 0
                    events.append(("start", base + i * FRAME))
            elif s:
                self.silent = 0
            else:
                self.silent += 1
                if self.silent >= self.silence_frames:
                    self.speaking = False
                    events.append(("stop", base + (i + 1) * FRAME))
        self.pos += n * FRAME
        return events

    def reset(self) -> None:
        """After a manual commit or clear: the next speech frame starts a new turn."""
        self.speaking = False
        self.silent = 0


# --------------------------------------------------------------------------- output

class Spoken:
    """A response transcript's speech (engine/audio.py's Speech) handed out token by token.

    The whole transcript is known when a response starts; piece i gets the samples up
    to its share of the characters, so the audio sent always adds up to exactly the
    speech of the text sent, and the whole to the Speech's duration."""

    __slots__ = ("speech", "fmt", "rate", "total", "chars", "samples")

    def __init__(self, text: str, voice: str, speed: float, fmt: str):
        self.rate = FORMAT_RATES[fmt]
        self.speech = speech_engine.Speech(text, voice, speed, self.rate)
        self.fmt = fmt
        self.total = len(text)
        self.chars = 0
        self.samples = 0  # handed out so far, at the format's rate

    def render(self, piece: str) -> bytes:
        self.chars += len(piece)
        n = self.speech.n_samples
        end = n if self.chars >= self.total else n * self.chars // self.total
        block = self.speech.render(self.samples, end)
        self.samples = end
        return encode(block, self.fmt)

    @property
    def ms(self) -> int:
        return self.samples * 1000 // self.rate
