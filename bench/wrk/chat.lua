-- Non-streaming chat completion (bench "chat" figure).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-0000000000000000"
wrk.body = '{"model": "openai/gpt-oss-120b", "messages": [{"role": "user", "content": "Hello, how are you?"}], "max_tokens": 16}'

dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")
