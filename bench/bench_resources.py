"""Embeddings, rerankers, multipart uploads and batches: engine speed, then the endpoints end to end.

Engine: text features + projection per input (short and long texts, 1536 and 3072 dims), a rerank pair,
the multipart parser's throughput fed whole and in 64 KiB pieces. End to end: zero-latency servers
(subprocesses; in memory and with --files-dir) and one keep-alive client issuing requests back to back;
the figure is the mean wall time per request (client included); a 1000-line chat batch at unlimited pace
gives lines per second from create to completed.

    python bench/bench_resources.py [--repeat 5]
"""
import argparse
import http.client
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fakeai.engine.embedding import Embedder  # noqa: E402
from fakeai.server.multipart import MultipartParser  # noqa: E402
from tests.conftest import ServerProc  # noqa: E402

SHORT = "The quick brown fox jumps over the lazy dog near the river bank."
LONG = ("It was a bright cold day in April, and the clocks were striking thirteen. Winston Smith, his chin "
        "nuzzled into his breast in an effort to escape the vile wind, slipped quickly through the glass doors. ") * 170


def best(fn, repeat, inner=1):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t) / inner)
    return min(times)


def engine(repeat):
    e = Embedder()
    e.vectors([e.features(SHORT)], 3072)  # projection built once
    for label, text in (("short (13 words)", SHORT), (f"long ({len(LONG.split())} words)", LONG)):
        cold = best(lambda: (e._memo.clear(), e.features(text)), repeat, 20 if text is SHORT else 3)
        for dims in (1536, 3072):
            f = e.features(text)
            proj = best(lambda: e.vectors([f], dims), repeat, 50)
            print(f"embedding {label:18s} dims {dims}: features {cold * 1e6:7.0f} us + projection "
                  f"{proj * 1e6:5.0f} us")
    q, p = e.features("What is the capital of France?"), e.features("Paris is the capital of France.")
    print(f"rerank pair cosine (features memoised): {best(lambda: q.cosine(p), repeat, 1000) * 1e6:.1f} us")
    boundary = b"benchboundary0123456789"
    data = os.urandom(10 * 1024 * 1024)
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="x.bin"\r\n\r\n' + data +
            b"\r\n--" + boundary + b"--\r\n")

    def whole():
        p = MultipartParser(boundary, 1 << 30)
        p.feed(body)
        p.close()

    def pieces():
        p = MultipartParser(boundary, 1 << 30)
        for i in range(0, len(body), 65536):
            p.feed(body[i:i + 65536])
        p.close()
    for label, fn in (("whole", whole), ("64 KiB pieces", pieces)):
        t = best(fn, repeat)
        print(f"multipart parse of a 10 MiB upload, {label}: {t * 1e3:6.1f} ms = {len(body) / t / 2**20:6.0f} MiB/s")


def _conn(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)

    def call(method, path, body=None, ctype="application/json"):
        conn.request(method, path, body, {"Content-Type": ctype} if body is not None else {})
        r = conn.getresponse()
        data = r.read()
        assert r.status == 200, data[:300]
        return data
    return call


def _upload_body(data, purpose="user_data", name="x.bin"):
    b = "benchboundary"
    body = (f'--{b}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
            f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n').encode()
    return body + data + f"\r\n--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def end_to_end(repeat):
    tmp = tempfile.mkdtemp(prefix="fakeai-bench-")
    base = ("--ttft-ms", "0", "--itl-ms", "0", "--no-access-log", "--log-level", "warning",
            "--max-request-size", str(64 << 20))
    for label, extra in (("memory", ()), ("files_dir", ("--files-dir", tmp))):
        server = ServerProc(*base, *extra, "--batch-lines-per-second", "0", "--batch-concurrency", "64")
        try:
            call = _conn(server)

            def timed(what, method, path, body=None, ctype="application/json", n=repeat * 10):
                call(method, path, body, ctype)
                t = time.perf_counter()
                for _ in range(n):
                    call(method, path, body, ctype)
                dt = (time.perf_counter() - t) / n
                print(f"[{label}] {what:44s} {dt * 1e3:8.2f} ms/request")
            if label == "memory":
                one = json.dumps({"model": "text-embedding-3-small", "input": SHORT})
                many = json.dumps({"model": "text-embedding-3-large", "input": [f"{SHORT} {i}" for i in range(32)]})
                b64 = json.dumps({"model": "text-embedding-3-large", "encoding_format": "base64",
                                  "input": [f"{SHORT} {i}" for i in range(32)]})
                rerank = json.dumps({"model": "BAAI/bge-reranker-v2-m3", "query": "capital of France",
                                     "documents": [f"{SHORT} {i} France" for i in range(20)]})
                timed("embeddings, 1 input, 1536 float", "POST", "/v1/embeddings", one)
                timed("embeddings, 32 inputs, 3072 float", "POST", "/v1/embeddings", many)
                timed("embeddings, 32 inputs, 3072 base64", "POST", "/v1/embeddings", b64)
                timed("rerank, 20 documents", "POST", "/v2/rerank", rerank)
            for size in (1 << 20, 10 << 20):
                body, ctype = _upload_body(os.urandom(size))
                timed(f"upload {size >> 20} MiB", "POST", "/v1/files", body, ctype, n=repeat * 2)
                fid = json.loads(call("POST", "/v1/files", body, ctype))["id"]
                timed(f"download {size >> 20} MiB", "GET", f"/v1/files/{fid}/content", n=repeat * 2)
            lines = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                        "body": {"model": "openai/gpt-oss-120b", "max_tokens": 16,
                                                 "messages": [{"role": "user", "content": f"hi {i}"}]}}) + "\n"
                            for i in range(1000)).encode()
            body, ctype = _upload_body(lines, "batch", "in.jsonl")
            fid = json.loads(call("POST", "/v1/files", body, ctype))["id"]
            t = time.perf_counter()
            bid = json.loads(call("POST", "/v1/batches", json.dumps({"input_file_id": fid, "completion_window": "24h",
                                                                    "endpoint": "/v1/chat/completions"})))["id"]
            while json.loads(call("GET", f"/v1/batches/{bid}"))["status"] != "completed":
                time.sleep(0.01)
            dt = time.perf_counter() - t
            print(f"[{label}] batch of 1000 chat lines (16 tokens each):   {dt:6.2f} s = {1000 / dt:6.0f} lines/s")
        finally:
            server.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    engine(args.repeat)
    end_to_end(args.repeat)


if __name__ == "__main__":
    main()
