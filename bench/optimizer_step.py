"""AdamW's step on one CPU core: torch's default per-tensor loop, ``foreach`` and the ``fused`` kernel, side by
side in one process, on the models a trial trains (issue 23, "fine-tuning at the cost floor").

    python bench/optimizer_step.py [--steps 300] [--repeats 3] [--out FILE]

Models: the MLP head on mean+std of all 7 Whisper-base hidden states (7,168 inputs, 256 hidden, 7 classes;
1.8M parameters), the linear head on the same inputs, and one Whisper-base encoder layer (3.1M parameters,
what ``unfreeze: top:1`` trains). Each step is a forward, backward and optimiser step on a batch of 16 (the
trials' default); the per-step time is the median over ``--repeats`` runs of ``--steps`` steps, every
variant starting from the same weights. Equality: the largest absolute difference of any weight from the
default loop's after the same steps on the same batches.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import RESULTS, Run, print_table  # noqa: E402

VARIANTS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def models() -> dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    x, y = torch.randn(16, 7168), torch.randint(0, 7, (16,))
    mlp = nn.Sequential(nn.LayerNorm(7168), nn.Linear(7168, 256), nn.GELU(), nn.Dropout(0.1), nn.Linear(256, 7))
    linear = nn.Sequential(nn.LayerNorm(7168), nn.Linear(7168, 7))
    layer = nn.TransformerEncoderLayer(512, 8, 2048, dropout=0.1, batch_first=True, norm_first=True)
    frames = torch.randn(16, 150, 512)   # 3 s of Whisper frames (50 per second)
    return {"mlp head (1.8M)": (mlp, x, y), "linear head (50k)": (linear, x, y),
            "Whisper-base layer (3.1M)": (nn.Sequential(layer, Pool(), nn.Linear(512, 7)), frames, y)}


class Pool(nn.Module):
    def forward(self, h):
        return h.mean(dim=1)


def run_steps(model: nn.Module, x, y, variant: str, steps: int) -> tuple[float, nn.Module]:
    model = copy.deepcopy(model)
    torch.manual_seed(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, **VARIANTS[variant])
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps, model


def max_difference(a: nn.Module, b: nn.Module) -> float:
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out")
    args = p.parse_args(argv)
    run = Run("optimizer_step", argv)
    torch.set_num_threads(1)
    rows = []
    for name, (model, x, y) in models().items():
        steps = args.steps if "head" in name else max(5, args.steps // 40)   # a layer step: ~0.7 s
        run_steps(model, x, y, "default", 2)   # first step: torch imports its compiler stack (see BENCHMARKS)
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        final: dict[str, nn.Module] = {}
        for _ in range(args.repeats):
            for variant in VARIANTS:   # interleaved, so drift in the machine's speed hits every variant alike
                seconds, final[variant] = run_steps(model, x, y, variant, steps)
                times[variant].append(seconds)
        base = statistics.median(times["default"])
        for variant in VARIANTS:
            ms = statistics.median(times[variant])
            rows.append({"model": name, "variant": variant, "steps": steps, "ms_per_step": round(1e3 * ms, 2),
                         "speedup": round(base / ms, 2),
                         "max_abs_diff": float(f"{max_difference(final[variant], final['default']):.2e}")})
    print_table(rows, list(rows[0]))
    run.finish({"rows": rows}, args.out or RESULTS / "optimizer_step.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
