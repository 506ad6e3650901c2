"""Configuration: precedence, validation, files, CLI and entry points."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fakeai import config as C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, env=None, **kw):
    e = {k: v for k, v in os.environ.items() if not k.startswith("FAKEAI_")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "fakeai", *args], env=e, capture_output=True, text=True,
                          timeout=60, cwd=ROOT, **kw)


def effective(*args, env=None):
    r = run("server", *args, "--print-config", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_defaults():
    cfg = C.AppConfig()
    assert (cfg.host, cfg.port, cfg.ttft_ms, cfg.itl_ms) == ("127.0.0.1", 8000, 20.0, 5.0)


def test_precedence_default_file_env_cli(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('itl_ms = 7\nttft_ms = 7\nport = 7777\n[response]\ndelay = 0.25\n')
    assert effective()["itl_ms"] == 5.0
    cfg = effective("--config", str(f))
    assert (cfg["itl_ms"], cfg["ttft_ms"], cfg["port"], cfg["response_delay"]) == (7.0, 7.0, 7777, 0.25)
    cfg = effective("--config", str(f), env={"FAKEAI_ITL_MS": "8", "FAKEAI_TTFT_MS": "8"})
    assert (cfg["itl_ms"], cfg["ttft_ms"], cfg["port"]) == (8.0, 8.0, 7777)
    cfg = effective("--config", str(f), "--itl-ms", "9", env={"FAKEAI_ITL_MS": "8", "FAKEAI_TTFT_MS": "8"})
    assert (cfg["itl_ms"], cfg["ttft_ms"]) == (9.0, 8.0)
    cfg = effective(env={"FAKEAI_CONFIG": str(f)})
    assert cfg["port"] == 7777


def test_yaml_and_json_sections(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("server:\n  host: 0.0.0.0\n  port: 9001\n  debug: false\nresponse:\n  delay: 0.5\n"
                 "  random_delay: true\n  max_variance: 0.2\n")
    cfg = effective("--config", str(y))
    assert (cfg["host"], cfg["port"], cfg["response_delay"], cfg["random_delay"], cfg["max_variance"]) == \
        ("0.0.0.0", 9001, 0.5, True, 0.2)
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"server": {"port": 9002}, "itl_ms": 1}))
    cfg = effective("--config", str(j))
    assert (cfg["port"], cfg["itl_ms"]) == (9002, 1.0)


def test_bool_flags_and_aliases():
    cfg = effective("--no-access-log", "--ttft", "3", "--itl", "4", "--random-delay")
    assert (cfg["access_log"], cfg["ttft_ms"], cfg["itl_ms"], cfg["random_delay"]) == (False, 3.0, 4.0, True)
    cfg = effective(env={"FAKEAI_ACCESS_LOG": "off", "FAKEAI_DEBUG": "yes"})
    assert (cfg["access_log"], cfg["debug"]) == (False, True)
    cfg = effective("--timeout-keep-alive", "60", "--timeout-graceful-shutdown", "30")  # the guide's uvicorn names
    assert (cfg["keepalive_timeout"], cfg["shutdown_timeout"]) == (60.0, 30.0)


@pytest.mark.parametrize("args,env,needle", [
    (["--itl-ms", "abc"], {}, "itl_ms"),
    (["--itl-ms", "-1"], {}, "itl_ms"),
    ([], {"FAKEAI_TTFT_MS": "fast"}, "ttft_ms"),
    ([], {"FAKEAI_PORT": "70000"}, "port"),
    ([], {"FAKEAI_DEBUG": "maybe"}, "debug"),
    (["--ttft-variance-pct", "150"], {}, "ttft_variance_pct"),
    (["--max-request-size", "1.5"], {}, "max_request_size"),
])
def test_bad_values_exit_2_naming_option(args, env, needle):
    r = run("server", *args, env=env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr and "expected" in r.stderr


def test_bad_log_level_exits_2():
    r = run("server", "--log-level", "loud")
    assert r.returncode == 2 and "log-level" in r.stderr


@pytest.mark.parametrize("text,suffix,needle", [
    ("bogus_option = 1\n", ".toml", "bogus_option"),
    ("[server]\nflavour = 'x'\n", ".toml", "server.flavour"),
    ("itl_ms = 'slow'\n", ".toml", "itl_ms"),
    ("not: [valid", ".yaml", "does not parse"),
    ("{}", ".ini", "unknown format"),
])
def test_bad_config_files_exit_2(tmp_path, text, suffix, needle):
    f = tmp_path / ("c" + suffix)
    f.write_text(text)
    r = run("server", "--config", str(f))
    assert r.returncode == 2 and needle in r.stderr, r.stderr


def test_missing_config_file_exits_2(tmp_path):
    r = run("server", "--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "cannot read" in r.stderr


def test_version():
    r = run("--version")
    assert r.returncode == 0
    assert r.stdout.startswith("fakeai 0.") and "Python 3." in r.stdout and "httpparse" in r.stdout


def test_help_lists_env_names_and_defaults():
    r = run("server", "--help")
    assert r.returncode == 0
    for o in C.OPTIONS:
        assert "--" + o.name.replace("_", "-") in r.stdout
        assert f"FAKEAI_{o.name.upper()}" in r.stdout.replace("\n", "").replace(" ", "")


def test_serve_alias_and_port_in_use():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run("serve", "--port", str(port))
        assert r.returncode == 1 and "cannot bind" in r.stderr


def test_python_api_config():
    cfg = C.AppConfig(ttft_ms=1, itl_ms="2")
    assert cfg.itl_ms == 2.0
    with pytest.raises(C.ConfigError):
        C.AppConfig(itl_ms=-5)


def test_no_extensions_forces_pure_twins():
    r = run("--version", env={"FAKEAI_NO_EXTENSIONS": "1"})
    assert "httpparse: pure" in r.stdout and "scheduler: pure" in r.stdout
    r = run("--version")
    assert "httpparse: compiled" in r.stdout and "scheduler: compiled" in r.stdout, \
        "the Cython speedups are not built: pip install -e . must build them"


def test_pure_twins_serve_end_to_end():
    import openai
    from conftest import ServerProc
    s = ServerProc("--ttft-ms", "1", "--itl-ms", "1", "--no-access-log", env={"FAKEAI_NO_EXTENSIONS": "1"})
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0)
        chunks = list(c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}],
                                                max_tokens=50, stream=True, extra_body={"ignore_eos": True}))
        assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) == 50
        assert c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}],
                                         max_tokens=3).usage.completion_tokens <= 3
    finally:
        assert s.stop() == 0


def test_legacy_env_name_and_unknown_names_warned():
    env = {"FAKEAI_REQUESTS_PER_MINUTE": "77", "FAKEAI_ITL_MSS": "3", "FAKEAI_GENERATE_ACTUAL_IMAGES": "false",
           "FAKEAI_CONFIG": "", "FAKEAI_NO_EXTENSIONS": "1", "FAKEAI_ITL_MS": "4"}
    assert C.build(environ=env).rate_limit_rpm == 77
    assert C.build(environ={**env, "FAKEAI_RATE_LIMIT_RPM": "9"}).rate_limit_rpm == 9  # today's name wins
    warned = C.unknown_env(env)
    assert warned == ["FAKEAI_GENERATE_ACTUAL_IMAGES is ignored: generated images are always real PNGs",
                      "FAKEAI_ITL_MSS is ignored: not an option of this server; did you mean FAKEAI_ITL_MS?"]
    assert C.unknown_env({"FAKEAI_TTFT_MS": "1", "PATH": "/bin"}) == []


def test_unknown_env_warned_in_the_server_log():
    from conftest import ServerProc
    s = ServerProc("--no-access-log", env={"FAKEAI_ENABLE_AUDIO": "true", "FAKEAI_USE_SEMANTIC_EMBEDDINGS": "true",
                                           "FAKEAI_MAX_TOKENZ": "5"})
    try:
        pass
    finally:
        assert s.stop() == 0
    log = s.log()
    assert "FAKEAI_USE_SEMANTIC_EMBEDDINGS is ignored: embeddings are always hashed word features" in log
    assert "FAKEAI_MAX_TOKENZ is ignored: not an option of this server" in log
    assert "FAKEAI_ENABLE_AUDIO" not in log


def test_voices_match_the_engine():
    from fakeai.engine.audio import VOICES
    assert C.VOICES == tuple(VOICES)


def test_guides_default_audio_format_mp3_is_served_as_wav():
    """The guides export FAKEAI_DEFAULT_AUDIO_FORMAT=mp3: accepted, said once at start-up, answered as wav."""
    import httpx

    from conftest import ServerProc
    s = ServerProc("--no-access-log", "--ttft-ms", "0", env={"FAKEAI_DEFAULT_AUDIO_FORMAT": "mp3"})
    try:
        r = httpx.post(s.url + "/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "Hello."})
        assert r.status_code == 200 and r.content[:4] == b"RIFF" and r.headers["content-type"] == "audio/wav"
        r = httpx.post(s.url + "/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "Hello.",
                                                         "response_format": "mp3"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    finally:
        assert s.stop() == 0
    assert "default_audio_format 'mp3' needs a codec this server does not include" in s.log()
