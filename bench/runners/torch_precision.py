"""torch's process-wide fp32 precision, for the torch runner, the runtime paths that run torch
programs, and the device's peak (bench/torch_probe.py): torch only, no runner."""

from __future__ import annotations

import torch


def set_precision(tf32: bool) -> None:
    """fp32 convs and matmuls in IEEE fp32, or TF32 if asked for: for the whole process, so that the
    backward, compiled or eager, runs as the forward does. (The flags only act on CUDA; on a CPU
    they are set all the same, so that they can be checked.)"""
    mode = "tf32" if tf32 else "ieee"
    if hasattr(torch.backends, "fp32_precision"):  # torch >= 2.9; mixing it with allow_tf32 is an error
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    else:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32


def conv_fp32_precision() -> str:
    """What cuDNN convolutions do with fp32 now: "ieee" or "tf32"."""
    if hasattr(torch.backends, "fp32_precision"):
        return torch.backends.cudnn.conv.fp32_precision
    return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
