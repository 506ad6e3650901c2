"""Simulated NVIDIA GPUs as dcgm-exporter shows them: GET /dcgm/metrics (Prometheus) and /dcgm/metrics/json.

Strategy. `dcgm_gpu_count` GPUs of `dcgm_gpu_model` (A100, H100, H200, B200:
memory, power limit, clocks of the real part) serve ONE engine, tensor
parallel, so they share its load. Every field is a deterministic function of
the simulated load at the moment it is read, never random noise:

- batch activity u = 1 - exp(-running / 4) (one request already keeps much of
  a GPU busy; a batch of 16 saturates it) and token work w = tokens/s of the
  last 5 s per GPU over the part's throughput capacity (capped at 1);
  activity a = max(u, w).
- DCGM_FI_DEV_GPU_UTIL = 100 a; SM / graphics-engine / tensor / DRAM activity
  ratios from u and w (decode is memory bound: DRAM follows u, tensor cores
  follow token work).
- DCGM_FI_DEV_FB_USED = weights (half the memory) + the KV pool (40 %) times
  the simulated KV cache fill (cached blocks / capacity) + 64 MiB of
  activations per running request; FB_FREE is the rest.
- Power approaches idle + (limit - idle) x (0.15 + 0.85 a) with a 2 s time
  constant; temperature approaches 30 C + 45 C x power / limit with a 20 s
  one (+1.5 C per slot position along the airflow; HBM 4 C hotter); total
  energy integrates power; SM clock boosts to max under any load. The
  smoothing advances with the clock at each read (no timer).
- Error counters (XID, PCIe replay, remapped rows) are a healthy GPU's zeros;
  NVLink traffic grows with tokens when there is more than one GPU.

Labels as dcgm-exporter writes them: gpu, UUID (stable per host, model and
index), pci_bus_id, device, modelName, Hostname, DCGM_FI_DRIVER_VERSION; plus
the operations guide's dcgm_gpu_utilization and dcgm_memory_used (bytes).
DCGM's counters are exposed without a `_total` suffix, as dcgm-exporter does.
"""
from __future__ import annotations

import math
import socket
import time
import uuid
from dataclasses import dataclass

from fakeai.metrics.prometheus import escape, go_float


@dataclass(frozen=True)
class Part:
    name: str
    fb_mib: int
    power_limit_w: float
    idle_w: float
    sm_clock_max: int
    sm_clock_idle: int
    mem_clock: int
    tokens_per_s: float  # one GPU's share of engine throughput at saturation


PARTS = {
    "a100": Part("NVIDIA A100-SXM4-80GB", 81920, 400.0, 55.0, 1410, 210, 1593, 10000.0),
    "h100": Part("NVIDIA H100 80GB HBM3", 81559, 700.0, 70.0, 1980, 345, 2619, 20000.0),
    "h200": Part("NVIDIA H200", 143771, 700.0, 75.0, 1980, 345, 3201, 24000.0),
    "b200": Part("NVIDIA B200", 183359, 1000.0, 120.0, 1965, 345, 3996, 40000.0),
}
DRIVER_VERSION = "570.133.20"
_HGX_BUS = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)

# (field, type, help): dcgm-exporter's default-counters.csv, then the profiling (DCP) fields it offers
FIELDS = (
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz)."),
    ("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz)."),
    ("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C)."),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C)."),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W)."),
    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", "Total energy consumption since boot (in mJ)."),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries."),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %)."),
    ("DCGM_FI_DEV_ENC_UTIL", "gauge", "Encoder utilization (in %)."),
    ("DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilization (in %)."),
    ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered."),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB)."),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "counter", "Total number of NVLink bandwidth counters for all lanes."),
    ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter", "Number of remapped rows for uncorrectable errors"),
    ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter", "Number of remapped rows for correctable errors"),
    ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Whether remapping of rows has failed"),
    ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", "Ratio of time the graphics engine is active."),
    ("DCGM_FI_PROF_SM_ACTIVE", "gauge", "The ratio of cycles an SM has at least 1 warp assigned."),
    ("DCGM_FI_PROF_SM_OCCUPANCY", "gauge", "The ratio of number of warps resident on an SM."),
    ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "gauge", "Ratio of cycles the tensor (HMMA) pipe is active."),
    ("DCGM_FI_PROF_DRAM_ACTIVE", "gauge", "Ratio of cycles the device memory interface is active sending or "
                                          "receiving data."),
)


class GPUs:
    def __init__(self, config, app):
        self.app = app
        self.part = PARTS[config.dcgm_gpu_model]
        self.count = config.dcgm_gpu_count
        host = socket.gethostname()
        self.labels = []
        for i in range(self.count):
            bus = _HGX_BUS[i] if i < len(_HGX_BUS) else 0xE0 + i
            gid = uuid.uuid5(uuid.NAMESPACE_DNS, f"fakeai/{host}/{config.dcgm_gpu_model}/{i}")
            self.labels.append({"gpu": str(i), "UUID": f"GPU-{gid}", "pci_bus_id": f"00000000:{bus:02X}:00.0",
                                "device": f"nvidia{i}", "modelName": self.part.name, "Hostname": host,
                                "DCGM_FI_DRIVER_VERSION": DRIVER_VERSION})
        self.label_text = [",".join(f'{k}="{escape(v)}"' for k, v in lab.items()) for lab in self.labels]
        p = self.part
        self.last = time.monotonic()
        self.power = [p.idle_w] * self.count
        self.temp = [30.0 + 45.0 * p.idle_w / p.power_limit_w + 1.5 * (i % 4) for i in range(self.count)]
        self.energy_mj = [0.0] * self.count
        self.nvlink = 0.0

    def _load(self):
        app = self.app
        running = app.slots.running
        prompt_tps, gen_tps = app.metrics.recent_token_rates(5)
        kv = app.kv.counters()
        cap = kv["capacity_blocks"]
        kv_fill = kv["cached_blocks"] / cap if cap else 0.0
        u = 1.0 - math.exp(-running / 4.0)
        w = min(1.0, (prompt_tps + gen_tps) / self.count / self.part.tokens_per_s)
        return running, u, w, kv_fill, prompt_tps + gen_tps

    def sample(self) -> list[dict]:
        """Every GPU's fields now, advancing power, temperature and energy from the last read."""
        p = self.part
        now = time.monotonic()
        dt = max(now - self.last, 0.0)
        self.last = now
        running, u, w, kv_fill, tps = self._load()
        a = max(u, w)
        if a < 0.005:  # below what GPU_UTIL (an integer percentage) shows: idle
            a = u = w = 0.0
        power_target = p.idle_w + (p.power_limit_w - p.idle_w) * (0.15 + 0.85 * a) if a > 0 else p.idle_w
        k_power = 1.0 - math.exp(-dt / 2.0)
        k_temp = 1.0 - math.exp(-dt / 20.0)
        if self.count > 1:
            self.nvlink += tps * dt * 1024  # KiB of all-reduce traffic per token
        used = p.fb_mib * 0.5 + p.fb_mib * 0.4 * kv_fill + 64 * running
        used = int(min(used, p.fb_mib * 0.98))
        out = []
        for i in range(self.count):
            before = self.power[i]
            power = before + (power_target - before) * k_power
            self.energy_mj[i] += (before + power) / 2.0 * dt * 1000.0
            self.power[i] = power
            temp_target = 30.0 + 45.0 * power / p.power_limit_w + 1.5 * (i % 4)
            self.temp[i] += (temp_target - self.temp[i]) * k_temp
            out.append({
                "DCGM_FI_DEV_SM_CLOCK": p.sm_clock_max if a > 0 else p.sm_clock_idle,
                "DCGM_FI_DEV_MEM_CLOCK": p.mem_clock,
                "DCGM_FI_DEV_MEMORY_TEMP": int(round(self.temp[i] + 4.0)),
                "DCGM_FI_DEV_GPU_TEMP": int(round(self.temp[i])),
                "DCGM_FI_DEV_POWER_USAGE": round(power, 3),
                "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": int(self.energy_mj[i]),
                "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": 0,
                "DCGM_FI_DEV_GPU_UTIL": int(round(100 * a)),
                "DCGM_FI_DEV_MEM_COPY_UTIL": int(round(100 * min(1.0, 0.6 * u + 0.4 * w))),
                "DCGM_FI_DEV_ENC_UTIL": 0,
                "DCGM_FI_DEV_DEC_UTIL": 0,
                "DCGM_FI_DEV_XID_ERRORS": 0,
                "DCGM_FI_DEV_FB_FREE": p.fb_mib - used,
                "DCGM_FI_DEV_FB_USED": used,
                "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL": int(self.nvlink),
                "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": 0,
                "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": 0,
                "DCGM_FI_DEV_ROW_REMAP_FAILURE": 0,
                "DCGM_FI_PROF_GR_ENGINE_ACTIVE": round(a, 6),
                "DCGM_FI_PROF_SM_ACTIVE": round(0.9 * a, 6),
                "DCGM_FI_PROF_SM_OCCUPANCY": round(0.5 * u, 6),
                "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": round(min(1.0, 0.3 * u + 0.5 * w), 6),
                "DCGM_FI_PROF_DRAM_ACTIVE": round(min(1.0, 0.6 * u + 0.4 * w), 6),
            })
        return out

    def prometheus(self) -> bytes:
        samples = self.sample()
        out = []
        for field, kind, doc in FIELDS:
            out.append(f"# HELP {field} {doc}\n# TYPE {field} {kind}\n")
            out += [f"{field}{{{lab}}} {go_float(s[field]) if isinstance(s[field], float) else s[field]}\n"
                    for lab, s in zip(self.label_text, samples)]
        out.append("# HELP dcgm_gpu_utilization GPU utilization percentage\n# TYPE dcgm_gpu_utilization gauge\n")
        out += [f'dcgm_gpu_utilization{{gpu="{i}"}} {go_float(float(s["DCGM_FI_DEV_GPU_UTIL"]))}\n'
                for i, s in enumerate(samples)]
        out.append("# HELP dcgm_memory_used GPU memory used in bytes\n# TYPE dcgm_memory_used gauge\n")
        out += [f'dcgm_memory_used{{gpu="{i}"}} {s["DCGM_FI_DEV_FB_USED"] * 1048576}\n' for i, s in enumerate(samples)]
        return "".join(out).encode()

    def json(self) -> dict:
        samples = self.sample()
        return {"timestamp": round(time.time(), 3), "gpu_model": self.part.name, "gpu_count": self.count,
                "gpus": [{"gpu": i, "uuid": lab["UUID"], "model_name": lab["modelName"],
                          "pci_bus_id": lab["pci_bus_id"], "fields": s}
                         for i, (lab, s) in enumerate(zip(self.labels, samples))]}
