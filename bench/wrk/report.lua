-- Shared by the bench/wrk/*.lua scripts: print wrk's end-of-run summary as
-- one machine-readable line ("BENCHJSON {...}") that bench/wrkrun.py parses.
-- summary.errors.status counts responses whose status was not 2xx/3xx
-- (wrk's "Non-2xx or 3xx responses"); the harness subtracts them from the
-- throughput so that a server answering errors quickly cannot look fast.

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCHJSON {"duration_us":%d,"requests":%d,"bytes":%d,' ..
      '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
      '"lat_mean_us":%.1f,"lat_stdev_us":%.1f,"lat_max_us":%d,' ..
      '"p50_us":%d,"p75_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency.stdev, latency.max,
      latency:percentile(50), latency:percentile(75), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9)))
end
