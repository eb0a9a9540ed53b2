"""The arithmetic an encoder's layers run in: float32, or bfloat16 where the CPU has it in hardware.

Intel's AMX tiles (Sapphire Rapids and later) and AVX512-BF16 multiply bfloat16 several times faster
than float32 (issue 23 measured a 1024x1024 matmul at 67 GFLOP/s in fp32 and 488 in bf16 on one AMX
core); a CPU without them emulates bfloat16 and runs it slower than float32. So ``auto`` (the default)
is bf16 where :func:`fast_bf16` finds such hardware and fp32 elsewhere; ``fp32`` and ``bf16`` force one.

bf16 runs under ``torch.autocast``: matrix products in bfloat16, reductions and normalisations in
float32, and what leaves the encoder (cached features, pooled statistics) is float32 either way. Its
features differ from fp32's by bfloat16's rounding (8 bits of mantissa): the pooled statistics of a
clip keep a cosine similarity of at least :data:`POOLED_COSINE` to fp32's (tests/test_precision.py).
A feature-cache entry records its precision in its key, so fp32 and bf16 features never mix.

>>> resolve("fp32"), resolve("bf16")
('fp32', 'bf16')
>>> resolve("auto") == ("bf16" if fast_bf16() else "fp32")
True
>>> for_model("fp32"), for_model("bf16") == resolve("auto")
('fp32', True)
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

PRECISIONS = ("auto", "fp32", "bf16")
POOLED_COSINE = 0.999   # the least cosine similarity of a clip's bf16 pooled statistics to its fp32 ones


def fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX tiles or AVX512-BF16), as torch detects it."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve(precision: str) -> str:
    """``fp32`` or ``bf16``: ``auto`` made concrete for this machine."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    if precision == "auto":
        return "bf16" if fast_bf16() else "fp32"
    return precision


def for_model(trained: str | None) -> str:
    """The precision a tuned model trained in ``trained`` (None: before precisions, fp32) predicts in on this
    machine: bf16 where it was trained so and this CPU has bf16 in hardware, fp32 elsewhere (a model moved
    to a CPU that would emulate bf16 runs fp32, several times faster, within bf16's rounding of its
    training features)."""
    return "bf16" if resolve(trained or "fp32") == "bf16" and fast_bf16() else "fp32"


@contextlib.contextmanager
def compute(precision: str) -> Iterator[None]:
    """Run the block's encoder layers in ``precision`` (``auto`` resolved here); fp32 changes nothing."""
    if resolve(precision) == "bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    else:
        yield
