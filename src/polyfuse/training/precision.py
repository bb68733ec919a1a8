"""`training.precision: auto`: bf16 autocast where it was measured to train faster at the same accuracy,
fp32 everywhere else.

On a CPU with native bf16 dot products (AVX512-BF16 or AMX), oneDNN runs the CNN encoders' convolutions
about twice as fast under bf16 autocast as in fp32 (issue 14: the default AV-Digits network's plain
training loop, 2-core AMD EPYC, 349 -> 644 samples/s), with the master weights, the optimizer and the
losses still fp32 (autocast keeps losses, norms and softmax-like ops in fp32). Without native bf16 the CPU
emulates it and runs slower than fp32, so auto keeps fp32 there. On a GPU auto keeps fp32: these small
models wait on the CPU there, and bf16-mixed took 133.1 s against fp32's 106.8 s for the default
AV-Digits run on an H200 (README, Distributed).

A component opts in with `trains_in_bf16 = True` once its results were checked in bf16: auto keeps fp32
for a run with any objective, encoder or fusion that has not (a contrastive loss's similarities at a
temperature of 0.07 need more than bf16's three significant digits; a frozen text transformer's outputs
under bf16 were not compared with fp32's). Every fusion was checked (AV-Digits-N,
bench/results/fusion_noisy_bf16.md).
"""

from __future__ import annotations

import torch

from polyfuse.config import RunConfig


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


def resolve_precision(config: RunConfig) -> tuple[str, str]:
    """(Lightning precision, why) for the run; a precision other than auto is taken as given."""
    training = config.training
    if training.precision != "auto":
        return training.precision, "as configured"
    from polyfuse.models.encoders import ENCODERS
    from polyfuse.models.fusion import FUSIONS
    from polyfuse.objectives import OBJECTIVES

    builders: list[tuple[str, object]] = [(o.name, OBJECTIVES.get(o.name)) for o in config.objectives]
    builders += [(e.name, ENCODERS.get(e.name)) for e in config.encoders.values()]
    builders.append((f"fusion {config.fusion.name}", FUSIONS.get(config.fusion.name)))
    unchecked = sorted({name for name, built in builders if not getattr(built, "trains_in_bf16", False)})
    if unchecked:
        return "32", f"fp32: bf16 is not checked for {', '.join(unchecked)}"
    if not _trains_on_cpu(training.accelerator):
        return "32", "fp32 on this accelerator (bf16-mixed was slower for small models on a GPU)"
    if not cpu_has_native_bf16():
        return "32", "fp32: this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 runs slower"
    return "bf16-mixed", "bf16 autocast: this CPU computes bf16 natively (AVX512-BF16 or AMX)"
