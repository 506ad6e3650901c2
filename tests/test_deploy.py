"""deploy/: the PM2, supervisor, Docker, Compose and Kubernetes files parse and agree with the server.

Containers and clusters cannot run here, so the files are checked for what
matters: they parse (YAML, INI, JavaScript through node when installed), every
FAKEAI_* variable and every `fakeai server` flag they use exists, and their
stop timeouts leave the drain (shutdown_timeout) its time.
"""
from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT
from fakeai import config

DEPLOY = ROOT / "deploy"
ENV_NAMES = {config.ENV_PREFIX + o.name.upper() for o in config.OPTIONS} | {"FAKEAI_CONFIG", "WEB_CONCURRENCY"}


def server_flags() -> set[str]:
    from fakeai.cli import _parser

    sub = next(a for a in _parser()._actions if a.dest == "command").choices["server"]
    return {flag for action in sub._actions for flag in action.option_strings}


def check_command(cmd: str) -> None:
    """`fakeai server ...`: every flag is one the server knows."""
    words = shlex.split(cmd)
    assert words[:2] == ["fakeai", "server"], cmd
    flags = server_flags()
    for w in words[2:]:
        if w.startswith("--"):
            assert w.split("=")[0] in flags, w


def check_env(names) -> None:
    unknown = [n for n in names if n.startswith(("FAKEAI_", "WEB_")) and n not in ENV_NAMES]
    assert not unknown, unknown


def test_pm2_ecosystem():
    text = (DEPLOY / "ecosystem.config.js").read_text()
    node = shutil.which("node")
    if node:
        out = subprocess.run([node, "-e", f"console.log(JSON.stringify(require({json.dumps(str(DEPLOY / 'ecosystem.config.js'))})))"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        app = json.loads(out)["apps"][0]
    else:  # no node here: the values the checks need, read from the source
        app = {k: json.loads(v) for k, v in re.findall(r'^\s*(\w+): ("[^"]*"|\d+),?$', text, re.M)}
        app["env"] = dict(re.findall(r'^\s*(FAKEAI_\w+): "([^"]*)"', text, re.M))
    assert app["exec_mode"] == "fork" and app["interpreter"] == "none" and app["instances"] > 1
    check_command(f"{app['script']} {app['args']}")
    assert "--reuse-port" in app["args"]
    check_env(app["env"])
    drain = float(app["env"]["FAKEAI_SHUTDOWN_TIMEOUT"])
    assert app["kill_timeout"] / 1000 > drain  # PM2's SIGKILL comes after the drain


@pytest.mark.parametrize("name", ["fakeai.conf", "fakeai-fcgi.conf"])
def test_supervisor_conf(name):
    cp = configparser.RawConfigParser()
    cp.read_string((DEPLOY / "supervisor" / name).read_text())
    (section,) = cp.sections()
    prog = cp[section]
    check_command(prog["command"])
    assert int(prog["numprocs"]) > 1 and "%(process_num)" in prog["process_name"]
    assert prog["stopsignal"] == "TERM"
    env = dict(kv.split("=", 1) for kv in prog["environment"].split(","))
    check_env(env)
    assert int(prog["stopwaitsecs"]) > float(env["FAKEAI_SHUTDOWN_TIMEOUT"].strip('"'))
    if section.startswith("fcgi-program:"):  # one socket bound by supervisord, handed over as fd 0
        assert "--fd 0" in prog["command"] and prog["socket"].startswith("tcp://")
    else:  # independent processes on one port
        assert "--reuse-port" in prog["command"]


def test_dockerfile():
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    cmd = [line for line in lines if line.startswith("CMD ")][-1]  # the image's (the other is HEALTHCHECK's)
    exec_form = json.loads(cmd[4:])  # exec form: fakeai is PID 1 and gets docker stop's SIGTERM
    check_command(" ".join(exec_form))
    assert "STOPSIGNAL SIGTERM" in lines and any(line.startswith("EXPOSE 8000") for line in lines)
    health = " ".join(lines[lines.index(next(x for x in lines if x.startswith("HEALTHCHECK"))):][:2])
    assert '"fakeai", "status"' in health
    check_env(re.findall(r"\b((?:FAKEAI|WEB)_\w+)=", (DEPLOY / "Dockerfile").read_text()))


def test_docker_compose():
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    svc = doc["services"]["fakeai"]
    env = dict(item.split("=", 1) for item in svc["environment"])
    check_env(env)
    assert svc["ports"] == ["8000:8000"] and svc["build"]["dockerfile"] == "deploy/Dockerfile"
    assert svc["healthcheck"]["test"][:3] == ["CMD", "fakeai", "status"]
    assert int(svc["stop_grace_period"].rstrip("s")) > float(env["FAKEAI_SHUTDOWN_TIMEOUT"])
    for name, value in env.items():  # every value is one the server accepts
        if name in ("FAKEAI_CONFIG", "WEB_CONCURRENCY"):
            continue
        config.coerce(config.OPTION_BY_NAME[name[len(config.ENV_PREFIX):].lower()], value)


def kube() -> dict[str, dict]:
    out = {}
    for f in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            assert doc["apiVersion"] and doc["metadata"]["name"]
            out[doc["kind"]] = doc
    return out


def test_kubernetes_manifests():
    k = kube()
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "Secret"} <= set(k)
    spec = k["Deployment"]["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
    assert k["Service"]["spec"]["selector"] == k["Deployment"]["spec"]["selector"]["matchLabels"]
    assert k["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == k["Deployment"]["metadata"]["name"]
    data = {**k["ConfigMap"]["data"], **k["Secret"]["stringData"]}
    check_env(data)
    for name, value in data.items():
        config.coerce(config.OPTION_BY_NAME[name[len(config.ENV_PREFIX):].lower()], value)
    prestop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > prestop + float(data["FAKEAI_SHUTDOWN_TIMEOUT"])
    refs = {r.get("configMapRef", r.get("secretRef"))["name"] for r in c["envFrom"]}
    assert refs == {k["ConfigMap"]["metadata"]["name"], k["Secret"]["metadata"]["name"]}


def test_logrotate_reloads():
    text = (DEPLOY / "logrotate.conf").read_text()
    assert "postrotate" in text and "systemctl reload fakeai" in text
