"""What a training run records about the machine it ran on (written into its model dir)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def hardware(device: str | None = None) -> dict[str, Any]:
    """CPU model and core count; with ``device`` also torch's threads and the GPU's name."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    hw: dict[str, Any] = {"cpu": cpu, "cpu_cores": os.cpu_count()}
    if device is not None:
        import torch

        hw.update(torch_threads=torch.get_num_threads(), device=device)
        if device.startswith("cuda"):
            hw["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return hw
