"""Where and how fast a run computes: device, precision, and the peak FLOP/s that MFU divides by.

    device "auto"  -> cuda when a GPU is present, else cpu
    dtype  "auto"  -> bfloat16 autocast on CUDA, float32 on CPU

bfloat16 here means autocast: parameters and optimizer state stay fp32, matmuls run in bf16 (the
loss upcasts its logits to fp32). On CUDA TF32 matmuls are switched on too. On a CPU, bf16 pays
only with native bf16 instructions (avx512_bf16 or AMX): without them a bf16 matmul is 100-200x
slower than fp32, so nothing may run in bf16 there (tests/test_bf16_guard.py checks training, Muon's
Newton-Schulz iteration included, and generation). bench/bench_train.py measures both.

    MINILM_NATIVE_BF16=0   treat this CPU as lacking native bf16 (the fp32 path a machine without
                           it takes, e.g. to time it on one that has it)
    MINILM_NATIVE_BF16=1   treat it as having native bf16 (when /proc/cpuinfo cannot tell)

`machine_summary()` is the one line every bench/ script prints first: which processor the figures
come from.

MFU = achieved training FLOP/s / peak FLOP/s. The peak comes from --peak_flops when given, else a
table of dense bf16 tensor-core figures for common GPUs, else a short matmul timed on the device
(a measured, attainable peak, so an MFU against it reads higher than against a datasheet).
"""
from __future__ import annotations

import contextlib
import os
import platform
import time
from functools import lru_cache

import torch

from minilm.config import ConfigError

# Dense (no sparsity) bf16 peak FLOP/s by device-name fragment, from the vendors' datasheets.
GPU_PEAK_BF16 = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 70e12, "A10": 125e12, "L40S": 362e12,
    "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12,
}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on CUDA, fp32 on CPU. fast: bf16 wherever the hardware has bf16 matmuls
    (CUDA, or a CPU with avx512_bf16 / AMX), else fp32. Or float32 / bfloat16 explicitly."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name == "fast":
        return torch.bfloat16 if has_native_bf16(device) else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in table:
        raise ConfigError(f"--dtype must be auto, fast, float32 or bfloat16, got {name!r}")
    return table[name]


def has_native_bf16(device: torch.device) -> bool:
    """bf16 matmuls at full speed on this device: any CUDA GPU, or a CPU with avx512_bf16 / AMX."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


BF16_ENV = "MINILM_NATIVE_BF16"


def cpu_has_native_bf16() -> bool:
    """True when /proc/cpuinfo lists avx512_bf16 or amx_bf16 (Linux only; False elsewhere), unless
    MINILM_NATIVE_BF16 is 0 or 1 (module docstring). Callers go through this module
    (`runtime.cpu_has_native_bf16()`), so that a test can pretend either processor."""
    forced = os.environ.get(BF16_ENV)
    if forced is not None:
        if forced not in ("0", "1"):
            raise ConfigError(f"{BF16_ENV} must be 0 (no native bf16) or 1 (native bf16), got {forced!r}; "
                              "unset it to read /proc/cpuinfo")
        return forced == "1"
    return bool(_cpuinfo_bf16_flags())


def _cpuinfo_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The bf16 instruction flags /proc/cpuinfo lists (empty where there is no /proc/cpuinfo)."""
    try:
        with open(cpuinfo) as f:
            flags = set(f.read().split())
    except OSError:
        return []
    return [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]


def cpu_model_name() -> str:
    """The processor's name: "model name" in /proc/cpuinfo, else what the platform module says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_summary() -> str:
    """One line naming where figures were measured, e.g.
    "machine: AMD EPYC, 2 cores (torch 2 threads), native bf16: yes (avx512_bf16), torch 2.13.0+cpu, no CUDA"."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    flags = _cpuinfo_bf16_flags()
    if os.environ.get(BF16_ENV) is not None:
        bf16 = f"{'yes' if cpu_has_native_bf16() else 'no'} ({BF16_ENV}={os.environ[BF16_ENV]})"
    else:
        bf16 = f"yes ({', '.join(flags)})" if flags else "no"
    cuda = f"CUDA {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no CUDA"
    return (f"machine: {cpu_model_name()}, {cores} cores (torch {torch.get_num_threads()} threads), "
            f"native bf16: {bf16}, torch {torch.__version__}, {cuda}")


def runtime_for(cfg) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of a run (a RunConfig), with the device's fast-math settings applied; under
    torchrun each process takes the GPU of its LOCAL_RANK."""
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    dtype = resolve_dtype(cfg.dtype, device)
    setup_fast_math(device)
    return device, dtype


def setup_fast_math(device: torch.device) -> None:
    """TF32 for the fp32 matmuls that remain under autocast (CUDA only; a no-op elsewhere)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, dtype: torch.dtype):
    """The context a forward pass runs under: bf16 autocast, or nothing for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@lru_cache(maxsize=None)
def measured_matmul_flops(device_type: str, dtype: torch.dtype = torch.float32, n: int = 1024) -> float:
    """FLOP/s of an n x n matmul on this device, best of ten timed repetitions (~0.3 s on a CPU).

    Two untimed products first, since a kernel's first call pays for its setup. On a shared machine
    the figure still varies (0.20-0.42 TFLOP/s seen for bf16 on the 2-core CI box), and MFU with it;
    pass --peak_flops to divide by a fixed figure."""
    device = torch.device(device_type)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(10):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * n ** 3 / best


def peak_flops(device: torch.device, dtype: torch.dtype, override: float = 0.0) -> tuple[float, str]:
    """(peak FLOP/s, where the figure came from) for MFU."""
    if override > 0:
        return override, "--peak_flops"
    if device.type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        for fragment, flops in GPU_PEAK_BF16.items():
            if fragment in name:
                return flops, f"datasheet bf16 peak of {name}"
    n = 4096 if device.type == "cuda" else 1024
    return measured_matmul_flops(device.type, dtype, n), f"measured {n}x{n} {str(dtype)[6:]} matmul"


def format_duration(seconds: float) -> str:
    """42s, 3m07s, 1h05m: a training log's time left."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
