"""`training.precision: auto`: bf16 autocast where it was measured to train faster at the same accuracy,
fp32 everywhere else.

On a CPU with native bf16 dot products (AVX512-BF16 or AMX), oneDNN runs the CNN encoders' convolutions
about twice as fast under bf16 autocast as in fp32 (issue 14: the default AV-Digits network, 2-core AMD
EPYC, 337 -> 641 samples/s), with the master weights, the optimizer and the losses still fp32 (autocast
keeps losses, norms and softmax-like ops in fp32). Without native bf16 the CPU emulates it and runs slower
than fp32, so auto keeps fp32 there. On GPUs auto keeps fp32 too: not measured here; set bf16-mixed
yourself on GPUs that support it.

An objective opts in with `trains_in_bf16 = True` once its results were checked in bf16; auto keeps fp32
for a run with any objective that has not (e.g. a contrastive loss's similarities at a temperature of
0.07 need more than bf16's three significant digits).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from polyfuse.config import TrainingConfig


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 dot products natively (AVX512-BF16 or AMX tiles)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, check, lambda: False)()) for check in checks)


def _trains_on_cpu(accelerator: str) -> bool:
    if accelerator == "cpu":
        return True
    if accelerator != "auto":
        return False
    mps = getattr(torch.backends, "mps", None)
    return not torch.cuda.is_available() and not (mps is not None and mps.is_available())


def resolve_precision(training: TrainingConfig, objective_names: Iterable[str]) -> tuple[str, str]:
    """(Lightning precision, why) for the run; a precision other than auto is taken as given."""
    if training.precision != "auto":
        return training.precision, "as configured"
    from polyfuse.objectives import OBJECTIVES

    unchecked = sorted(n for n in objective_names if not getattr(OBJECTIVES[n], "trains_in_bf16", False))
    if unchecked:
        return "32", f"fp32: bf16 is not checked for objective(s) {', '.join(unchecked)}"
    if not _trains_on_cpu(training.accelerator):
        return "32", "fp32 on this accelerator (set bf16-mixed yourself where it supports bf16)"
    if not cpu_has_native_bf16():
        return "32", "fp32: this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 runs slower"
    return "bf16-mixed", "bf16 autocast: this CPU computes bf16 natively (AVX512-BF16 or AMX)"
