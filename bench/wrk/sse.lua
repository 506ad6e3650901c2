-- Streaming (SSE) chat completion, 256 tokens per stream (bench "sse" figure).
-- wrk counts a request as complete when the chunked body's terminating
-- zero-length chunk arrives, i.e. when the server finishes the stream.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-0000000000000000"
wrk.body = '{"model": "openai/gpt-oss-120b", "messages": [{"role": "user", "content": "Hello, how are you?"}], "max_tokens": 256, "stream": true, "ignore_eos": true}'

dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")
