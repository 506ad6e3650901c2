"""Audio and image benchmark: engine speed, then the endpoints end to end.

Engine: speech synthesis + container encoding as a real-time factor (seconds of audio made per second
of CPU), FLAC's CRC-16 cost, picture render + PNG encode per size. End to end: a zero-latency server
(subprocess) and one keep-alive client issuing requests back to back; the figure is the mean wall time
per request (client included) and, for long speech, the body throughput.

    python bench/bench_media.py [--repeat 5]
"""
import argparse
import http.client
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fakeai.engine import audio as A  # noqa: E402
from fakeai.engine import images as I  # noqa: E402
from tests.conftest import ServerProc  # noqa: E402

TEXT = ("The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the clocks were "
        "striking thirteen. ") * 40  # 880 words: 352 s of speech at speed 1


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return min(times)


def engine(repeat):
    speech = A.Speech(TEXT, "alloy")
    print(f"speech: {len(TEXT.split())} words -> {speech.duration:.0f} s of audio")
    for fmt in ("pcm", "wav", "flac"):
        cpu = best(lambda: b"".join(A.encoded_pieces(speech, fmt)), repeat)
        print(f"  synthesize + {fmt:4s}: {cpu * 1e3:7.1f} ms CPU  = {speech.duration / cpu:6.0f}x real time")
    frame = os.urandom(8200)
    cpu = best(lambda: [A.crc16(frame) for _ in range(100)], repeat) / 100
    print(f"  crc16 of one 8 KiB FLAC frame: {cpu * 1e6:.0f} us")
    for w, h in ((256, 256), (1024, 1024), (1792, 1024)):
        r = best(lambda: I.render("a red fox in the snow", w, h), repeat)
        px = I.render("a red fox in the snow", w, h)
        e = best(lambda: I.png(px), repeat)
        print(f"image {w}x{h}: render {r * 1e3:6.1f} ms, PNG encode {e * 1e3:5.1f} ms CPU "
              f"({len(I.png(px)) / 1024:.0f} KiB)")


def _multipart(fields, file_name, data):
    b = "benchboundary"
    out = b"".join(f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                   for k, v in fields.items())
    out += (f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n\r\n'.encode() +
            data + f"\r\n--{b}--\r\n".encode())
    return out, f"multipart/form-data; boundary={b}"


def end_to_end(repeat):
    server = ServerProc("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log", "--log-level", "warning")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port)

        def post(path, body, ctype="application/json"):
            conn.request("POST", path, body, {"Content-Type": ctype})
            r = conn.getresponse()
            data = r.read()
            assert r.status == 200, data[:300]
            return data

        def timed(label, path, body, ctype="application/json", n=repeat * 4):
            post(path, body, ctype)  # warm
            t = time.perf_counter()
            for _ in range(n):
                size = len(post(path, body, ctype))
            dt = (time.perf_counter() - t) / n
            print(f"  {label}: {dt * 1e3:7.1f} ms/request, {size / dt / 1e6:7.1f} MB/s of body")

        print("end to end (one keep-alive client, zero latency):")
        short = json.dumps({"model": "tts-1", "voice": "alloy", "input": "Hello there, how are you today?",
                            "response_format": "wav"})
        timed("speech, 6 words wav", "/v1/audio/speech", short)
        long = json.dumps({"model": "tts-1", "voice": "alloy", "input": TEXT[:4000], "response_format": "flac"})
        timed("speech, 4000 chars flac", "/v1/audio/speech", long, n=repeat)
        wav = A.encode(A.synthesize(TEXT[:600], "alloy"), "wav")
        body, ctype = _multipart({"model": "whisper-1", "response_format": "verbose_json"}, "a.wav", wav)
        timed(f"transcription of {len(wav) / 48000:.0f} s wav, verbose_json", "/v1/audio/transcriptions", body, ctype)
        img = json.dumps({"prompt": "a red fox", "size": "1024x1024", "response_format": "b64_json"})
        timed("image 1024x1024 b64_json", "/v1/images/generations", img, n=repeat * 2)
        img = json.dumps({"prompt": "a red fox", "size": "256x256"})
        timed("image 256x256 url", "/v1/images/generations", img)
    finally:
        server.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    engine(args.repeat)
    end_to_end(args.repeat)


if __name__ == "__main__":
    main()
