-- Non-streaming Responses API call (bench_responses.py), the same prompt and length as chat.lua.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-0000000000000000"
wrk.body = '{"model": "openai/gpt-oss-120b", "input": "Hello, how are you?", "max_output_tokens": 16, "ignore_eos": true, "store": false}'

dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")
