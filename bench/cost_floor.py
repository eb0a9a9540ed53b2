"""The encoder's arithmetic at the cost floor (issue 23): the shared encode and the top layer fine-tuned, in
fp32 and bf16 (``precision``), the top layer trained through LoRA and on frames averaged in time, side by side
in one process on the same core(s), each beside the matrix-product peak of its precision there.

    python bench/cost_floor.py [--clips 96] [--threads 1] [--synthetic] [--out FILE]

- matmul peak: a 1024 x 1024 product in float32 and in bfloat16, GFLOP/s (2 n^3 per product).
- shared encode: ``--clips`` clips spread over the corpus (3 s each at most, batches of 8) through every encoder layer, as a
  study's shared encode runs them (``encode_batches``), in fp32 and in bf16; seconds, GFLOP/s (the FLOPs of
  matrix products and convolutions, counted once by torch's FlopCounterMode), and how close bf16's pooled
  statistics are to fp32's (least cosine over clips, and the stated tolerance).
- top layer fine-tuned (``unfreeze: top:1``, linear head on a learned layer mix, batch 16): one epoch over the
  split's training clips of the same ``--clips`` clips, then its validation clips, from cached hidden states: fp32, bf16,
  LoRA (rank 8 on q and v) in fp32, and each fp32 variant with the layer's input frames averaged over 2 in time
  (``frame_average: 2``), and the fp32 layer through ``torch.compile``; seconds and GFLOP/s of the timed epoch, the
  FLOPs counted on an untimed epoch before it (the compiled layer's: its first epoch compiles, untimed, and its
  arithmetic is the plain fp32 layer's).

bf16 pays only on CPUs that multiply it in hardware (AMX, AVX512-BF16: ``precision: auto`` picks it there);
elsewhere torch emulates it and the bf16 rows are slower. The figures say which this machine is.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import RESULTS, Run, bench_data, print_table  # noqa: E402

from ser_tune.data import SAMPLE_RATE, AudioStore, crop  # noqa: E402
from ser_tune.encoders import load_encoder  # noqa: E402
from ser_tune.encoders import precision as arithmetic  # noqa: E402
from ser_tune.encoders.cache import encode_batches, equal_length_batches  # noqa: E402
from ser_tune.training.finetune import FineTuner, TrialData  # noqa: E402
from ser_tune.training.settings import TrialSettings  # noqa: E402

MAX_LENGTH = 3.0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FINE_TUNING = {"fp32": {"precision": "fp32"}, "bf16": {"precision": "bf16"},
               "LoRA, fp32": {"precision": "fp32", "peft": "lora", "lora_rank": 8},
               "frames averaged over 2, fp32": {"precision": "fp32", "frame_average": 2},
               "LoRA + frames averaged over 2, fp32": {"precision": "fp32", "peft": "lora", "lora_rank": 8,
                                                       "frame_average": 2},
               "torch.compile, fp32": {"precision": "fp32", "compile": True},
               # the same savings in bf16 (where the CPU has it in hardware, auto's choice)
               "LoRA, bf16": {"precision": "bf16", "peft": "lora", "lora_rank": 8},
               "frames averaged over 2, bf16": {"precision": "bf16", "frame_average": 2},
               "LoRA + frames averaged over 2, bf16": {"precision": "bf16", "peft": "lora", "lora_rank": 8,
                                                       "frame_average": 2}}


def matmul_peak(dtype: torch.dtype, n: int = 1024, seconds: float = 1.0) -> float:
    """GFLOP/s of an n x n product in ``dtype``, repeated for about ``seconds`` after a warm-up."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def shared_encode(spec: str, waves: list[np.ndarray]) -> tuple[list[dict], dict]:
    encoder = load_encoder(spec)
    batches = equal_length_batches(waves, 8)

    def encode(p: str):
        return list(encode_batches(encoder, waves, batches, [], True, precision=p))

    flops = counted_flops(lambda: encode("fp32"))
    rows, pooled = [], {}
    for p in ("fp32", "bf16"):
        encode(p)   # warm-up: the first batches of each precision pay one-off allocations
        start = time.perf_counter()
        parts = encode(p)
        seconds = time.perf_counter() - start
        pooled[p] = np.concatenate([part.pooled for part in parts]).reshape(len(waves), -1)
        rows.append({"step": "shared encode", "variant": p, "seconds": seconds, "gflop": flops / 1e9,
                     "gflop_per_s": flops / seconds / 1e9})
    a, b = pooled["fp32"], pooled["bf16"]
    cosines = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return rows, {"least_cosine": float(cosines.min()), "stated_cosine": arithmetic.POOLED_COSINE}


def compile_trained_layers(state) -> None:
    """The trained encoder layers through ``torch.compile`` (inductor, shapes dynamic: clips differ in length)."""
    layers = state.model.encoder.transformer_layers()
    for index in range(state.boundary, len(layers)):
        layers[index] = torch.compile(layers[index], dynamic=True)


def top_layer_epochs(data, spec: str, cache: Path) -> list[dict]:
    rows = []
    for name, extra in FINE_TUNING.items():
        extra = dict(extra)
        compiled = extra.pop("compile", False)
        settings = TrialSettings(unfreeze="top:1", head="linear", layer="weighted", lr=1e-4, num_epochs=3,
                                 batch_size=16, max_length=MAX_LENGTH, **extra)
        tuner = FineTuner(settings, data, encoder_spec=spec, cache_root=cache)
        state = tuner.start()   # the boundary's hidden states cached (encoded once per precision)
        row = {"step": "top layer, one epoch", "variant": name}
        if compiled:   # the first epoch compiles (untimed); the arithmetic is the plain fp32 layer's
            compile_trained_layers(state)
            start = time.perf_counter()
            tuner.fit_epoch(state)
            row["first_epoch_seconds_with_compiling"] = time.perf_counter() - start
            flops = next(r["gflop"] for r in rows if r["variant"] == "fp32") * 1e9
        else:
            flops = counted_flops(lambda: tuner.fit_epoch(state))
        start = time.perf_counter()
        tuner.fit_epoch(state)
        seconds = time.perf_counter() - start
        rows.append({**row, "seconds": seconds, "gflop": flops / 1e9,
                     "gflop_per_s": flops / seconds / 1e9, "trainable_params": sum(
                         p.numel() for p in state.trained.values()) + sum(p.numel() for p in state.model.head.parameters())})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=96, help="clips encoded and fine-tuned on (spread evenly over the corpus)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: one core, the per-trial share)")
    p.add_argument("--synthetic", action="store_true", help="the synthetic corpus and tiny Whisper")
    p.add_argument("--out", help=f"JSON output (default {RESULTS}/cost_floor.json)")
    args = p.parse_args(argv)
    run = Run("cost_floor" + ("_synthetic" if args.synthetic else ""))
    torch.set_num_threads(args.threads)
    data = bench_data(force_synthetic=args.synthetic)
    table = data.table.iloc[np.unique(np.linspace(0, len(data.table) - 1, args.clips).astype(int))]   # every speaker
    print(f"[cost_floor] {data.description}; {len(table)} clips, {args.threads} thread(s); this CPU multiplies "
          f"bf16 in hardware: {arithmetic.fast_bf16()} (auto -> {arithmetic.resolve('auto')})", flush=True)
    peaks = {name: matmul_peak(dtype) for name, dtype in DTYPES.items()}
    audio = AudioStore(SAMPLE_RATE)
    waves = [crop(audio.get(str(path)), MAX_LENGTH, SAMPLE_RATE) for path in table["path"]]
    encode_rows, closeness = shared_encode(data.encoder_spec, waves)
    trial = TrialData.from_table(table, data.assignment.loc[table.index], labels=data.labels, audio=audio)
    with tempfile.TemporaryDirectory(prefix="cost_floor_cache_") as cache:
        tune_rows = top_layer_epochs(trial, data.encoder_spec, Path(cache))
    rows = encode_rows + tune_rows
    for row in rows:
        dtype = "bf16" if "bf16" in row["variant"] else "fp32"
        row["share_of_matmul_peak"] = row["gflop_per_s"] / peaks[dtype]
    shown = [{"step": "matmul 1024^3", "variant": name, "gflop_per_s": peak} for name, peak in peaks.items()] + rows
    print_table([{k: f"{v:.3g}" if isinstance(v, float) else v for k, v in row.items()} for row in shown],
                ["step", "variant", "seconds", "gflop", "gflop_per_s", "share_of_matmul_peak"])
    fp32 = {row["step"]: row["seconds"] for row in rows if row["variant"] == "fp32"}
    speedups = {f"{row['step']}: {row['variant']}": fp32[row["step"]] / row["seconds"]
                for row in rows if row["variant"] != "fp32"}
    for name, ratio in speedups.items():
        print(f"  {name}: {ratio:.2f}x fp32's speed")
    print(f"  bf16 pooled statistics vs fp32: least cosine {closeness['least_cosine']:.6f} "
          f"(stated tolerance {closeness['stated_cosine']})")
    figures = {"data": data.description, "clips": len(table), "threads": args.threads,
               "fast_bf16": arithmetic.fast_bf16(), "auto": arithmetic.resolve("auto"),
               "matmul_gflop_per_s": peaks, "rows": rows, "speedup_over_fp32": speedups, "bf16_features": closeness}
    print(f"[cost_floor] wrote {run.finish(figures, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
