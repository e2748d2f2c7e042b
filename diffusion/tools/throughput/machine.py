"""The machine the bench runs on: device and precision choice, a description for the report, and the share of
CPU time other processes took meanwhile."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from diffusion.tools.throughput.measure import ROOT


def cpu_flags_and_model() -> tuple[str, str]:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", platform.processor() or platform.machine()
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
    return info, names[0] if names else platform.machine()


def pick_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        from diffusion.training.precision import fast_bf16_available

        return "bf16" if fast_bf16_available(device.type) else "32"
    return name


def git_commit() -> str:
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)

    head = git("rev-parse", "--short", "HEAD")
    if head.returncode != 0:
        return "uncommitted"
    dirty = git("diff", "--quiet", "HEAD").returncode != 0
    return head.stdout.strip() + ("+local changes" if dirty else "")


def tf32_flags(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    return {"matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_tf32": torch.backends.cudnn.allow_tf32}


class OtherLoad:
    """The share of the machine's CPU time that other processes (and the hypervisor) took while the bench
    ran: all busy time in /proc/stat less this process's own (DataLoader workers count as others); None where
    /proc is missing."""

    def __init__(self):
        self.started = self._jiffies()
        self.wall = time.perf_counter()

    @staticmethod
    def _jiffies() -> tuple[int, int] | None:
        try:
            machine = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
            own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        busy = sum(machine) - machine[3] - machine[4]  # less idle and iowait; steal counts as taken
        return busy, int(own[11]) + int(own[12])  # this process's utime + stime

    def share(self) -> float | None:
        now = self._jiffies()
        if now is None or self.started is None:
            return None
        (busy0, own0), (busy1, own1) = self.started, now
        available = (time.perf_counter() - self.wall) * os.sysconf("SC_CLK_TCK") * os.cpu_count()
        return max(0.0, (busy1 - busy0 - (own1 - own0)) / available)


def describe_machine(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_flags_and_model()[1]
    return {
        "device": str(device),
        "device_name": name,
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "commit": git_commit(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        **tf32_flags(device),
    }
