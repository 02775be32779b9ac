"""The run-level probe's process: what only torch can say about the machine, as one JSON line.

Run as ``python -m bench.environment COMMAND ARGS`` (bench/environment.py's ``probe``), in a process
of its own, so that the sweep's process imports no framework: ``gpus`` (their names and memory),
``torch DEVICE`` (its thread count, CUDA and cuDNN versions), ``peak DEVICE PRECISION FP32_PRECISION``
(the device's measured dense throughput).
"""

from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F

from bench.runners.torch_precision import set_precision


def _torch_facts(device: str) -> dict:
    facts = {"torch_threads": torch.get_num_threads()}
    if device != "cpu":
        facts.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return facts


def _measure_peak(device: str, precision: str, fp32_precision: str) -> float:
    """The larger of two micro-benchmarks, best of five runs after a warm-up each: a square matmul
    (2048 on a CPU, 8192 on a GPU) and a 3x3 conv of 512 channels (batch 8, 32 px on a CPU, 64 px
    on a GPU), channels_last. (On CPUs oneDNN's convolutions outrun the matmul.)"""
    dev = torch.device(device)
    cpu = dev.type == "cpu"
    set_precision(fp32_precision == "tf32")
    torch.backends.cudnn.benchmark = not cpu
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n, side = (2048, 32) if cpu else (8192, 64)
    a, b = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))
    x = torch.randn(8, 512, side, side, device=dev, dtype=dtype).to(memory_format=torch.channels_last)
    w = torch.randn(512, 512, 3, 3, device=dev, dtype=dtype).to(memory_format=torch.channels_last)
    kernels = {
        2 * n**3: lambda: a @ b,
        2 * 9 * 512 * 512 * side * side * 8: lambda: F.conv2d(x, w, padding=1),
    }

    def best_seconds(kernel) -> float:
        best = float("inf")
        for i in range(6):
            start = time.perf_counter()
            kernel()
            if not cpu:
                torch.cuda.synchronize(dev)
            if i:  # the first is warm-up
                best = min(best, time.perf_counter() - start)
        return best

    return max(flop / best_seconds(kernel) / 1e12 for flop, kernel in kernels.items())


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "gpus":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        answer: dict = {
            "gpus": [torch.cuda.get_device_name(i) for i in range(count)],
            "memory": [torch.cuda.get_device_properties(i).total_memory for i in range(count)],
        }
    elif command == "torch":
        answer = _torch_facts(args[0])
    elif command == "peak":
        answer = {"tflops": _measure_peak(*args)}
    else:
        raise SystemExit(f"python -m bench.environment: unknown command {command!r}")
    print(json.dumps(answer))
    return 0
