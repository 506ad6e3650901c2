-- Streaming Responses API call, 256 tokens (bench_responses.py), the same request as sse.lua.
-- wrk counts a request as complete when the chunked body ends (after response.completed).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-0000000000000000"
wrk.body = '{"model": "openai/gpt-oss-120b", "input": "Hello, how are you?", "max_output_tokens": 256, "stream": true, "ignore_eos": true, "store": false}'

dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")
