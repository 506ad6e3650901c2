"""engine/rtaudio.py: G.711 against the stdlib's old audioop, WAV unwrapping, the VAD's offsets, Spoken's lengths."""
from __future__ import annotations

import io
import struct
import warnings
import wave

import numpy as np
import pytest

from fakeai.engine import audio as speech_engine
from fakeai.engine import rtaudio as A

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:  # Python 3.13 removed it
        audioop = None

ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)


@pytest.mark.skipif(audioop is None, reason="audioop is gone (Python >= 3.13)")
@pytest.mark.parametrize("fmt, enc, dec", [("g711_ulaw", "lin2ulaw", "ulaw2lin"),
                                           ("g711_alaw", "lin2alaw", "alaw2lin")])
def test_g711_is_bit_exact_with_audioop(fmt, enc, dec):
    raw = ALL_PCM.astype("<i2").tobytes()
    assert A.encode(ALL_PCM, fmt) == getattr(audioop, enc)(raw, 2)
    codes = bytes(range(256))
    ours = A.decode(codes, fmt)[::3]  # decoding also upsamples 8 -> 24 kHz by repetition
    assert ours.astype("<i2").tobytes() == getattr(audioop, dec)(codes, 2)


@pytest.mark.parametrize("fmt", ["g711_ulaw", "g711_alaw"])
def test_g711_round_trip_error_is_within_a_segment_step(fmt):
    back = A.decode(A.encode(ALL_PCM, fmt), fmt)[::3].astype(np.int32)
    err = np.abs(back - ALL_PCM.astype(np.int32))
    assert (err <= np.maximum(16, np.abs(ALL_PCM.astype(np.int32)) // 16 + 16)).all()


def _wav(samples: np.ndarray, rate: int, channels: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(samples, channels).astype("<i2").tobytes())
    return buf.getvalue()


def test_unwrap_wav_downmixes_and_resamples():
    one_second = (np.sin(np.arange(16000) / 16000 * 2 * np.pi * 200) * 10000).astype(np.int16)
    out = A.unwrap_wav(_wav(one_second, 16000, 2))
    assert out.dtype == np.int16 and len(out) == 24000
    assert abs(int(np.abs(out).max()) - 10000) < 50
    same = A.unwrap_wav(_wav(one_second, 24000, 1))
    assert (same == one_second).all()


@pytest.mark.parametrize("raw, why", [
    (b"RIFF\0\0\0\0WAVE", "fmt or data"),
    (b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0" + struct.pack("<HHIIHH", 3, 1, 24000, 96000, 4, 32) + b"data\0\0\0\0",
     "16-bit PCM"),
    (b"not a wav file", "RIFF"),
])
def test_unwrap_wav_refuses_what_it_cannot_read(raw, why):
    with pytest.raises(ValueError, match=why):
        A.unwrap_wav(raw)


def test_vad_offsets_are_frame_exact_whatever_the_chunking():
    loud = (np.sin(np.arange(24000) * 0.05) * 8000).astype(np.int16)
    quiet = np.zeros(24000, dtype=np.int16)
    signal = np.concatenate([quiet[:12000], loud[:7200], quiet[:14400], loud[:2400], quiet])
    whole = A.Vad(0.5, 500).feed(signal)
    assert whole == [("start", 12000), ("stop", 12000 + 7200 + 12000),
                     ("start", 12000 + 7200 + 14400), ("stop", 12000 + 7200 + 14400 + 2400 + 12000)]
    vad = A.Vad(0.5, 500)
    pieces = vad.feed(signal[:0])
    pos = 0
    for size in (1, 239, 241, 5000, 3333, 100_000):
        pieces += vad.feed(signal[pos:pos + size])
        pos += size
    assert pieces == whole
    # a VAD made mid-session counts from its starting position
    late = A.Vad(0.5, 500, pos=480_000)
    assert late.feed(signal)[0] == ("start", 480_000 + 12000)


def test_vad_threshold_maps_to_dbfs():
    level = lambda dbfs: np.full(2400, int(32768 * 10 ** (dbfs / 20)), dtype=np.int16)  # noqa: E731
    assert A.Vad(0.5, 100).feed(level(-39)) == [("start", 0)]
    assert A.Vad(0.5, 100).feed(level(-41)) == []
    assert A.Vad(0.9, 100).feed(level(-25)) == []
    assert A.Vad(0.9, 100).feed(level(-23)) == [("start", 0)]


@pytest.mark.parametrize("fmt, width", [("pcm16", 2), ("g711_ulaw", 1), ("g711_alaw", 1)])
def test_spoken_pieces_add_up_to_the_speech(fmt, width):
    pieces = ["Hello", " there", ",", " how", " are", " you", " today", "?"]
    text = "".join(pieces)
    spoken = A.Spoken(text, "verse", 1.0, fmt)
    out = [spoken.render(p) for p in pieces]
    rate = A.FORMAT_RATES[fmt]
    n = speech_engine.Speech(text, "verse", 1.0, rate).n_samples
    assert sum(len(o) for o in out) == n * width
    assert spoken.ms == n * 1000 // rate
    if fmt == "pcm16":
        whole = speech_engine.Speech(text, "verse", 1.0, rate).samples()
        assert b"".join(out) == whole.astype("<i2").tobytes()
