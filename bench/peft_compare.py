"""Issue 8: full fine-tuning, top-k, LoRA and bottleneck adapters on the same split, side by side.

    python bench/peft_compare.py [--threads 2] [--epochs 3] [--top-k 2] [--modes frozen,top-k,...]
                                 [--synthetic] [--out FILE]

One process, one corpus, one speaker-independent split, one encoder (loaded once, a fresh copy
per mode, as a Ray worker does), the same learning rate and epochs for every mode; frozen layers
come from one feature cache filled before the first mode (its one-off encode is listed apart).
Per mode: validation and test BCA, seconds per epoch (median over epochs 2..N, from each epoch's
report time), seconds per trial, trainable and total parameters. PEFT modes adapt the same top-K
layers top-k fine-tunes, so the two differ only in what trains inside them. Real EmoDB +
Whisper-base when ../shared has them, the synthetic corpus + tiny Whisper otherwise.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
import shutil
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import RESULTS, BenchError, Run, bench_data, print_table  # noqa: E402

# Mode name -> the trial settings that make it (``{k}`` is --top-k).
MODES = {
    "frozen": {"unfreeze": "none"},
    "top-k": {"unfreeze": "top:{k}"},
    "full": {"unfreeze": "all"},
    "lora": {"unfreeze": "top:{k}", "peft": "lora"},
    "adapter": {"unfreeze": "top:{k}", "peft": "adapter"},
    "lora+adapter": {"unfreeze": "top:{k}", "peft": "lora+adapter"},
}
# Fixed for every mode: the headline study's head, LoRA on q,v at rank 8, 64-wide adapters.
FIXED = {"head": "mlp", "head_lr_scale": 30, "seed": 0, "unfreeze_epoch": 0, "lora_rank": 8,
         "lora_alpha": 16, "lora_targets": "q,v", "adapter_size": 64}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--epochs", type=int, default=3, help="num_epochs of every mode (default 3; >= 2)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of every mode (default 1e-3)")
    p.add_argument("--top-k", type=int, default=2, help="layers top-k trains and PEFT adapts (default 2)")
    p.add_argument("--max-length", type=float, default=2.0, help="seconds of audio kept (default 2.0)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    p.add_argument("--synthetic", action="store_true", help="use the synthetic corpus + tiny encoder even if ../shared has data")
    p.add_argument("--out", help="JSON output (default bench/results/peft_compare.json, or _synthetic.json)")
    args = p.parse_args(argv)
    if args.epochs < 2:
        raise BenchError(f"--epochs must be >= 2 to time an epoch after the first (got {args.epochs})")
    if args.threads < 1 or args.top_k < 1:
        raise BenchError("--threads and --top-k must be >= 1")
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.mode_list if m not in MODES]
    if unknown or not args.mode_list:
        raise BenchError(f"--modes: unknown mode {unknown[0] if unknown else '(none)'!r}; choose from {', '.join(MODES)}")
    return args


class Bench:
    def __init__(self, args):
        from ser_tune.data import SAMPLE_RATE, AudioStore
        from ser_tune.encoders import load_encoder
        from ser_tune.training.finetune import TrialData

        self.args = args
        self.data = bench_data(force_synthetic=args.synthetic)
        print(f"data: {self.data.description}", flush=True)
        self.audio = AudioStore(SAMPLE_RATE)
        self.trial_data = TrialData.from_table(self.data.table, self.data.assignment, self.data.labels, audio=self.audio)
        for path in self.trial_data.paths:  # decode once: decoding is neither encoding nor training
            self.audio.get(path)
        start = time.perf_counter()
        self.encoder = load_encoder(self.data.encoder_spec)
        self.load_seconds = time.perf_counter() - start
        self.cache_root = Path(tempfile.mkdtemp(prefix="ser_tune_peft_cache_"))

    def loader(self, spec):
        return copy.deepcopy(self.encoder)

    def settings(self, mode: str) -> dict:
        made = {k: v.format(k=self.args.top_k) if isinstance(v, str) else v for k, v in MODES[mode].items()}
        return dict(FIXED, lr=self.args.lr, num_epochs=self.args.epochs, max_length=self.args.max_length, **made)

    def fill_cache(self) -> float:
        """The study's one-off encode (every boundary the modes need) by running each distinct
        unfreeze once for one epoch; returns its seconds."""
        from ser_tune.training.finetune import FineTuner
        from ser_tune.training.settings import TrialSettings

        start = time.perf_counter()
        for unfreeze in sorted({self.settings(m)["unfreeze"] for m in self.args.mode_list}):
            config = dict(self.settings("frozen"), unfreeze=unfreeze, num_epochs=1)
            tuner = FineTuner(TrialSettings.from_config(config), self.trial_data,
                              encoder_spec=self.data.encoder_spec, cache_root=self.cache_root, encoder_loader=self.loader)
            tuner.cached_features()   # pooled features, and the lowest trained layer's input when it trains
        return time.perf_counter() - start

    def run(self, mode: str) -> dict:
        from ser_tune.training.finetune import FineTuner
        from ser_tune.training.settings import TrialSettings

        config = self.settings(mode)
        tuner = FineTuner(TrialSettings.from_config(config), self.trial_data, encoder_spec=self.data.encoder_spec,
                          cache_root=self.cache_root, encoder_loader=self.loader)
        start = time.perf_counter()
        result = tuner.run()
        wall = time.perf_counter() - start
        stamps = [row["reported_at"] for row in result.history]
        epochs = [b - a for a, b in zip(stamps, stamps[1:])]   # epochs 2..N (epoch 1 also pays the load)
        return {"mode": mode, "settings": config, "val_bca": result.val_bca, "test_bca": result.test_bca,
                "epoch_seconds": epochs, "median_epoch_seconds": statistics.median(epochs),
                "trial_seconds": wall, "seconds_by_part": result.seconds,
                "trainable_params": result.trainable_params, "total_params": result.total_params,
                "best_epoch": result.best_epoch}

    def close(self):
        shutil.rmtree(self.cache_root, ignore_errors=True)


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        run = Run("peft_compare", argv)
        from ser_tune.training.trainable import set_threads

        set_threads(args.threads)
        bench = Bench(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = []
    try:
        encode = bench.fill_cache()
        print(f"one-off encode (feature cache): {encode:.1f} s; encoder load {bench.load_seconds:.1f} s", flush=True)
        for mode in args.mode_list:
            row = bench.run(mode)
            rows.append(row)
            print(f"{mode}: val BCA {row['val_bca']:.3f}, test BCA {row['test_bca']:.3f}, "
                  f"{row['median_epoch_seconds']:.2f} s/epoch, {row['trainable_params']:,} trainable", flush=True)
    finally:
        bench.close()
    print()
    print(f"PEFT modes, {bench.data.description}, {args.threads} torch threads, lr {args.lr:g}, "
          f"{args.epochs} epochs, top-k = {args.top_k}, max_length {args.max_length:g} s")
    print_table([{"mode": r["mode"], "unfreeze": r["settings"]["unfreeze"],
                  "val_bca": f"{r['val_bca']:.3f}", "test_bca": f"{r['test_bca']:.3f}",
                  "s/epoch": f"{r['median_epoch_seconds']:.2f}", "s/trial": f"{r['trial_seconds']:.1f}",
                  "trainable": f"{r['trainable_params']:,}", "total": f"{r['total_params']:,}",
                  "trainable %": f"{100 * r['trainable_params'] / r['total_params']:.2f}"} for r in rows],
                 ["mode", "unfreeze", "val_bca", "test_bca", "s/epoch", "s/trial", "trainable", "total", "trainable %"])
    figures = {"data": bench.data.description, "real_data": bench.data.real, "encoder": bench.data.encoder_spec,
               "threads": args.threads, "epochs": args.epochs, "lr": args.lr, "top_k": args.top_k,
               "max_length": args.max_length, "encode_once_seconds": encode,
               "encoder_load_seconds": bench.load_seconds, "modes": rows}
    out = args.out or RESULTS / ("peft_compare.json" if bench.data.real else "peft_compare_synthetic.json")
    run.finish(figures, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
