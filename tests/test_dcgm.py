"""Simulated DCGM GPUs: dcgm-exporter's field names and labels, the guide's dcgm_* gauges, options, and values that
follow the simulated load (not noise)."""
from __future__ import annotations

import shutil
import subprocess
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ServerProc
from fakeai.metrics.dcgm import FIELDS, PARTS

PROMTOOL = shutil.which("promtool")
LABELS = {"gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION"}
# dcgm-exporter's own naming, which promtool lints: camelCase labels (modelName, UUID), counters without _total,
# DCGM_FI_DEV_PCIE_REPLAY_COUNTER's name
DCGM_LINTS = ("label names should be written in 'snake_case' not 'camelCase'",
              'counter metrics should have "_total" suffix', "metric name should not include type 'counter'")
LONG = "The quick brown fox jumps over the lazy dog. " * 40  # ~400 tokens: eligible for the KV cache below


def fields(url) -> list[dict]:
    return [g["fields"] for g in httpx.get(url + "/dcgm/metrics/json").json()["gpus"]]


def test_fields_labels_and_options():
    s = ServerProc("--dcgm-gpu-count", "4", "--dcgm-gpu-model", "b200", "--no-access-log")
    try:
        r = httpx.get(s.url + "/dcgm/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
        fams = {f.name: f for f in text_string_to_metric_families(r.text)}
        for name, kind, _ in FIELDS:
            fam = fams[name]
            assert fam.type == kind
            assert [x.labels["gpu"] for x in fam.samples] == ["0", "1", "2", "3"]
            for x in fam.samples:
                assert set(x.labels) == LABELS
                assert x.labels["modelName"] == "NVIDIA B200" and x.labels["device"] == f"nvidia{x.labels['gpu']}"
                assert x.labels["UUID"].startswith("GPU-")
        uuids = {x.labels["UUID"] for x in fams["DCGM_FI_DEV_GPU_UTIL"].samples}
        assert len(uuids) == 4
        assert [x.labels for x in fams["dcgm_gpu_utilization"].samples] == [{"gpu": str(i)} for i in range(4)]
        used = [x.value for x in fams["DCGM_FI_DEV_FB_USED"].samples]
        free = [x.value for x in fams["DCGM_FI_DEV_FB_FREE"].samples]
        assert all(u + f == PARTS["b200"].fb_mib for u, f in zip(used, free))
        assert [x.value for x in fams["dcgm_memory_used"].samples] == [u * 1048576 for u in used]
        j = httpx.get(s.url + "/dcgm/metrics/json").json()
        assert j["gpu_count"] == 4 and j["gpu_model"] == "NVIDIA B200"
        assert [g["uuid"] for g in j["gpus"]] == [x.labels["UUID"] for x in fams["DCGM_FI_DEV_GPU_UTIL"].samples]
        assert set(j["gpus"][0]["fields"]) == {f for f, _, _ in FIELDS}
        if PROMTOOL:
            p = subprocess.run([PROMTOOL, "check", "metrics"], input=r.text, capture_output=True, text=True, timeout=30)
            problems = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip() and
                        not any(lint in ln for lint in DCGM_LINTS)]
            assert problems == []
    finally:
        assert s.stop() == 0, s.log()


def test_uuids_stable_across_restarts():
    uuids = []
    for _ in range(2):
        s = ServerProc("--dcgm-gpu-count", "2", "--no-access-log")
        try:
            uuids.append([g["uuid"] for g in httpx.get(s.url + "/dcgm/metrics/json").json()["gpus"]])
        finally:
            assert s.stop() == 0
    assert uuids[0] == uuids[1]


def test_values_follow_load():
    s = ServerProc("--ttft-ms", "0", "--itl-ms", "40", "--min-tokens-for-cache", "16", "--dcgm-gpu-count", "2",
                   "--no-access-log")
    try:
        idle = fields(s.url)
        for g in idle:
            assert g["DCGM_FI_DEV_GPU_UTIL"] == 0 and g["DCGM_FI_PROF_GR_ENGINE_ACTIVE"] == 0
            assert g["DCGM_FI_DEV_POWER_USAGE"] == pytest.approx(PARTS["h100"].idle_w)
            assert g["DCGM_FI_DEV_SM_CLOCK"] == PARTS["h100"].sm_clock_idle
        started = threading.Barrier(9)

        def stream(i):
            body = {"model": "gpt-4o", "stream": True, "max_tokens": 60, "ignore_eos": True,
                    "messages": [{"role": "user", "content": f"{i} {LONG}"}]}
            with httpx.stream("POST", s.url + "/v1/chat/completions", json=body, timeout=60) as r:
                it = r.iter_bytes()
                next(it)
                started.wait(20)
                for _ in it:
                    pass

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        started.wait(20)  # 8 streams running
        busy = fields(s.url)
        time.sleep(0.5)
        later = fields(s.url)
        for t in threads:
            t.join()
        for i, g in enumerate(busy):
            assert g["DCGM_FI_DEV_GPU_UTIL"] > idle[i]["DCGM_FI_DEV_GPU_UTIL"]
            assert g["DCGM_FI_DEV_FB_USED"] > idle[i]["DCGM_FI_DEV_FB_USED"]  # KV blocks and activations
            assert g["DCGM_FI_DEV_SM_CLOCK"] == PARTS["h100"].sm_clock_max
            assert g["DCGM_FI_PROF_DRAM_ACTIVE"] > 0 and g["DCGM_FI_PROF_SM_OCCUPANCY"] > 0
            # power and temperature rise towards their loaded values; energy only grows
            power = "DCGM_FI_DEV_POWER_USAGE"
            assert later[i][power] > g[power] > idle[i][power]
            assert later[i]["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] > g["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] \
                >= idle[i]["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"]
        assert later[0]["DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL"] > 0  # two GPUs: tensor-parallel traffic
        # the same load on both GPUs of the engine; the one further along the airflow runs warmer
        assert busy[0]["DCGM_FI_DEV_GPU_UTIL"] == busy[1]["DCGM_FI_DEV_GPU_UTIL"]
        assert busy[1]["DCGM_FI_DEV_GPU_TEMP"] >= busy[0]["DCGM_FI_DEV_GPU_TEMP"]
        deadline = time.monotonic() + 20
        while fields(s.url)[0]["DCGM_FI_DEV_GPU_UTIL"] != 0 and time.monotonic() < deadline:
            time.sleep(0.2)  # the token rate is over the last 5 s
        after = fields(s.url)[0]
        assert after["DCGM_FI_DEV_GPU_UTIL"] == 0 and after["DCGM_FI_DEV_SM_CLOCK"] == PARTS["h100"].sm_clock_idle
    finally:
        assert s.stop() == 0, s.log()


def test_dcgm_disabled():
    s = ServerProc("--no-dcgm-enabled", "--no-access-log")
    try:
        for path in ("/dcgm/metrics", "/dcgm/metrics/json"):
            r = httpx.get(s.url + path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "metrics_disabled"
        assert httpx.get(s.url + "/metrics/prometheus").status_code == 200
    finally:
        assert s.stop() == 0


def test_bad_gpu_options_are_config_errors():
    import os
    import sys

    from conftest import ROOT
    for env in ({"FAKEAI_DCGM_GPU_MODEL": "v100"}, {"FAKEAI_DCGM_GPU_COUNT": "0"}):
        p = subprocess.run([sys.executable, "-m", "fakeai", "server"], capture_output=True, text=True, cwd=ROOT,
                           timeout=30, env={**os.environ, **env})
        assert p.returncode == 2 and next(iter(env))[7:].lower() in p.stderr
