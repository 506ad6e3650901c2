-- GET /v1/models (bench "models" figure).
wrk.method = "GET"
wrk.headers["Authorization"] = "Bearer sk-bench-0000000000000000"

dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")
