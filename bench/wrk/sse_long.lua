-- Streaming chat, 256 tokens, with a prompt that FakeAI 0.3.2 answers at
-- length (~85 content chunks instead of ~13 for "Hello"): a second, less
-- overhead-dominated view of its per-token streaming cost ("sse_long").
-- wrk counts a request as complete when the chunked body's terminating
-- zero-length chunk arrives, i.e. when the server finishes the stream.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-0000000000000000"
wrk.body = '{"model": "openai/gpt-oss-120b", "messages": [{"role": "user", "content": "Tell me about the history of computing, transistors, compilers, operating systems and networks."}], "max_tokens": 256, "stream": true, "ignore_eos": true}'

dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")
