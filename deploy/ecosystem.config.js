// PM2: `pm2 start deploy/ecosystem.config.js`. Fork mode (PM2's cluster mode is for Node.js programs
// only): every instance is its own fakeai process, and --reuse-port lets them all bind port 8000
// (SO_REUSEPORT: the kernel spreads connections over them). PM2 stops with SIGINT, which fakeai
// treats like SIGTERM (drain up to FAKEAI_SHUTDOWN_TIMEOUT, then exit 0); kill_timeout gives it
// that time before PM2's SIGKILL. Each instance keeps its own /metrics (scrape each, or run one
// process with `--workers N`, whose /metrics covers every worker).
module.exports = {
  apps: [{
    name: "fakeai",
    script: "fakeai",
    args: "server --host 0.0.0.0 --port 8000 --reuse-port",
    interpreter: "none",
    exec_mode: "fork",
    instances: 4,
    kill_timeout: 25000,
    listen_timeout: 30000,
    autorestart: true,
    max_memory_restart: "1G",
    env: {
      FAKEAI_SHUTDOWN_TIMEOUT: "20",
      FAKEAI_TTFT_MS: "20",
      FAKEAI_ITL_MS: "5",
      FAKEAI_LOG_FORMAT: "json",
      FAKEAI_KV_CACHE_ENABLED: "true",
    },
    error_file: "./logs/fakeai-error.log",
    out_file: "./logs/fakeai-out.log",
    merge_logs: true,
    log_date_format: "YYYY-MM-DD HH:mm:ss Z",
  }],
};
