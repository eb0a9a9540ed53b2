"""Issue 3: seconds per epoch and per trial with the feature cache vs the naive path, side by side.

    python bench/cache_vs_naive.py [--threads 2] [--epochs 3] [--profile N] [--synthetic] [--out FILE]

One process, one corpus, one encoder, the same hyper-parameters for both paths:

- the cache's one-off encode (every clip through the frozen encoder once, pooled features of all
  layers + the hidden state below the top layer), the cost a study pays once for all its trials;
- (a) head-only epochs (``unfreeze: none``): cached epoch seconds vs naive (re-encode every clip);
- (b) top-1 unfrozen epochs (``unfreeze: top:1``, ``unfreeze_epoch: 0``): cached (only the top
  layer runs, on cached frames) vs naive (the whole encoder runs, the top layer with gradients);
- a whole trial (default lr 1e-3, num_epochs 5, unfreeze_epoch 3, top:1): cached vs naive seconds
  and their ratio (target >= 10x), with and without the one-off encode charged to the cached trial.

Both paths read waveforms from one warmed in-memory audio store and get a fresh copy of one
loaded encoder, so decoding and loading are out of the epoch figures (loading is listed apart).
Per-epoch seconds come from the trial's own per-epoch reports. Real EmoDB + Whisper-base when
../shared has them, the synthetic corpus + tiny Whisper otherwise.
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
from benchlib import (RESULTS, BenchError, Run, bench_data, fmt_seconds, print_profile, print_table,  # noqa: E402
                      profile_call)

TARGET_TRIAL_RATIO = 10.0
# The fixed trial settings of experiments/emodb.yaml (the headline study).
FIXED = {"unfreeze": "top:1", "head": "mlp", "head_lr_scale": 30, "seed": 0}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--epochs", type=int, default=3,
                   help="epochs measured per path in (a) and (b) (default 3; each run adds a warm-up and a last epoch)")
    p.add_argument("--lr", type=float, default=1e-3, help="trial learning rate (default 1e-3)")
    p.add_argument("--trial-epochs", type=int, default=5, help="num_epochs of the whole-trial comparison (default 5)")
    p.add_argument("--unfreeze-epoch", type=int, default=3, help="unfreeze_epoch of the whole trial (default 3)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="then run the cached trial again under cProfile and list its top N functions")
    p.add_argument("--synthetic", action="store_true", help="use the synthetic corpus + tiny encoder even if ../shared has data")
    p.add_argument("--out", help="JSON output (default bench/results/cache_vs_naive.json, or _synthetic.json)")
    args = p.parse_args(argv)
    for name in ("threads", "epochs", "trial_epochs"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})")
    if not 0 <= args.unfreeze_epoch < args.trial_epochs:
        raise BenchError(f"--unfreeze-epoch must be in [0, --trial-epochs) (got {args.unfreeze_epoch})")
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
        start = time.perf_counter()
        for path in self.trial_data.paths:  # decode once: decoding is neither encoding nor training
            self.audio.get(path)
        self.decode_seconds = time.perf_counter() - start
        start = time.perf_counter()
        self.encoder = load_encoder(self.data.encoder_spec)
        self.load_seconds = time.perf_counter() - start
        self.cache_root = Path(tempfile.mkdtemp(prefix="ser_tune_bench_cache_"))

    def loader(self, spec):
        return copy.deepcopy(self.encoder)  # as a Ray worker does: load once, copy per trial

    def encode_once(self) -> dict:
        """The study's one-off encode: pooled features + frames below the top layer, all clips."""
        from ser_tune.data import SAMPLE_RATE, crop
        from ser_tune.encoders import spec_fingerprint
        from ser_tune.encoders.cache import FeatureCache, effective_max_length
        from ser_tune.training.settings import TrialSettings

        max_length = effective_max_length(TrialSettings().max_length, self.trial_data.durations)
        boundary = self.encoder.num_layers - 1
        cache = FeatureCache(self.cache_root, self.data.encoder_spec, spec_fingerprint(self.data.encoder_spec),
                             lambda: self.encoder)
        paths = self.trial_data.paths
        start, cpu = time.perf_counter(), time.process_time()
        cache.get(paths, lambda i: crop(self.audio.get(paths[i]), max_length, SAMPLE_RATE), max_length, [boundary])
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "cpu_seconds": time.process_time() - cpu, "clips": len(paths), "boundary": boundary, "misses": cache.stats.misses,
                "max_length": max_length}

    def run(self, features: str, **settings) -> dict:
        from ser_tune.training.finetune import FineTuner
        from ser_tune.training.settings import TrialSettings

        config = dict(FIXED, lr=self.args.lr, features=features, **settings)
        tuner = FineTuner(TrialSettings.from_config(config), self.trial_data, encoder_spec=self.data.encoder_spec,
                          cache_root=self.cache_root, encoder_loader=self.loader)
        # The trial reports at the end of every epoch but the last (that one comes after the test pass).
        stamps: list[tuple[float, float]] = []
        start = (time.perf_counter(), time.process_time())
        result = tuner.run(report=lambda m: stamps.append((time.perf_counter(), time.process_time())))
        end = (time.perf_counter(), time.process_time())
        # Epoch k >= 2 lasts from the end of epoch k-1 to the end of epoch k; epoch 1 (warm-up) and the
        # last epoch (it carries the test pass) are left out of the per-epoch figures.
        inner = stamps[:-1]  # the final report (after the test pass) is the last stamp
        wall = [b[0] - a[0] for a, b in zip(inner, inner[1:])]
        cpu = [b[1] - a[1] for a, b in zip(inner, inner[1:])]
        return {"features": features, "settings": config, "wall_seconds": end[0] - start[0],
                "cpu_seconds": end[1] - start[1], "epoch_seconds": wall, "epoch_cpu_seconds": cpu,
                "seconds_by_part": result.seconds, "cache": result.cache, "val_bca": result.val_bca,
                "test_bca": result.test_bca, "encoder_trained": [row["encoder_trained"] for row in result.history]}

    def close(self):
        shutil.rmtree(self.cache_root, ignore_errors=True)


def compare_epochs(cached: dict, naive: dict) -> dict:
    c, n = statistics.median(cached["epoch_seconds"]), statistics.median(naive["epoch_seconds"])
    c_cpu, n_cpu = statistics.median(cached["epoch_cpu_seconds"]), statistics.median(naive["epoch_cpu_seconds"])
    return {"cached_epoch_seconds": cached["epoch_seconds"], "naive_epoch_seconds": naive["epoch_seconds"],
            "cached_median_epoch_seconds": c, "naive_median_epoch_seconds": n, "ratio": n / c,
            "cached_epoch_cpu_seconds": cached["epoch_cpu_seconds"], "naive_epoch_cpu_seconds": naive["epoch_cpu_seconds"],
            "cached_median_epoch_cpu_seconds": c_cpu, "naive_median_epoch_cpu_seconds": n_cpu,
            "cpu_ratio": n_cpu / c_cpu,
            "cached_val_bca": cached["val_bca"], "naive_val_bca": naive["val_bca"], "settings": cached["settings"]}


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        run = Run("cache_vs_naive", argv)
        from ser_tune.training.trainable import set_threads

        set_threads(args.threads)
        bench = Bench(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        encode = bench.encode_once()
        print(f"one-off encode of {encode['clips']} clips: {encode['seconds']:.1f} s "
              f"(encoder load {bench.load_seconds:.1f} s, audio decode {bench.decode_seconds:.1f} s)", flush=True)
        e = args.epochs + 2  # + the first (warm-up) and last (test pass) epochs, not measured
        head = compare_epochs(bench.run("cache", unfreeze="none", num_epochs=e),
                              bench.run("naive", unfreeze="none", num_epochs=e))
        print(f"(a) head-only epoch: cached {head['cached_median_epoch_seconds']:.3f} s, "
              f"naive {head['naive_median_epoch_seconds']:.2f} s, ratio {head['ratio']:.0f}x", flush=True)
        top = compare_epochs(bench.run("cache", num_epochs=e, unfreeze_epoch=0),
                             bench.run("naive", num_epochs=e, unfreeze_epoch=0))
        print(f"(b) top-1 epoch: cached {top['cached_median_epoch_seconds']:.2f} s, "
              f"naive {top['naive_median_epoch_seconds']:.2f} s, ratio {top['ratio']:.1f}x", flush=True)
        shape = {"num_epochs": args.trial_epochs, "unfreeze_epoch": args.unfreeze_epoch}
        cached, naive = bench.run("cache", **shape), bench.run("naive", **shape)
        profile = profile_call(lambda: bench.run("cache", **shape), top=args.profile)[1] if args.profile else None
    finally:
        bench.close()
    trial = {
        "settings": cached["settings"],
        "cached_seconds": cached["wall_seconds"], "naive_seconds": naive["wall_seconds"],
        "ratio": naive["wall_seconds"] / cached["wall_seconds"],
        "cached_cpu_seconds": cached["cpu_seconds"], "naive_cpu_seconds": naive["cpu_seconds"],
        "cpu_ratio": naive["cpu_seconds"] / cached["cpu_seconds"],
        "cached_plus_encode_seconds": cached["wall_seconds"] + encode["seconds"],
        "ratio_with_encode_charged": naive["wall_seconds"] / (cached["wall_seconds"] + encode["seconds"]),
        "cached_seconds_by_part": cached["seconds_by_part"], "naive_seconds_by_part": naive["seconds_by_part"],
        "cached_epoch_seconds": cached["epoch_seconds"], "naive_epoch_seconds": naive["epoch_seconds"],
        "cached_val_bca": cached["val_bca"], "naive_val_bca": naive["val_bca"],
        "cached_test_bca": cached["test_bca"], "naive_test_bca": naive["test_bca"],
        "cache_hits_misses": cached["cache"],
    }
    figures = {
        "data": bench.data.description, "real_data": bench.data.real, "encoder": bench.data.encoder_spec,
        "threads": args.threads, "epochs_per_path": args.epochs,
        "encoder_load_seconds": bench.load_seconds, "audio_decode_seconds": bench.decode_seconds,
        "encode_once": encode, "head_only": head, "top1": top, "trial": trial,
        "profile_cached_trial": profile,
        "target_trial_ratio": TARGET_TRIAL_RATIO, "trial_target_met": trial["ratio"] >= TARGET_TRIAL_RATIO,
    }
    print()
    print(f"cache vs naive, {bench.data.description}, {args.threads} torch threads")
    print(f"one-off encode (cache, once per study): {encode['seconds']:.1f} s ({encode['cpu_seconds']:.1f} CPU-s) "
          f"for {encode['clips']} clips")
    rows = [
        ("(a) head-only epoch (median)", head["cached_median_epoch_seconds"], head["naive_median_epoch_seconds"],
         head["cached_median_epoch_cpu_seconds"], head["naive_median_epoch_cpu_seconds"]),
        ("(b) top-1 unfrozen epoch (median)", top["cached_median_epoch_seconds"], top["naive_median_epoch_seconds"],
         top["cached_median_epoch_cpu_seconds"], top["naive_median_epoch_cpu_seconds"]),
        (f"trial (lr {args.lr:g}, {args.trial_epochs} epochs, unfreeze_epoch {args.unfreeze_epoch}, top:1)",
         trial["cached_seconds"], trial["naive_seconds"], trial["cached_cpu_seconds"], trial["naive_cpu_seconds"]),
        ("trial + the one-off encode charged to it", trial["cached_plus_encode_seconds"], trial["naive_seconds"],
         None, None),
    ]
    print_table([{"what": what, "cached wall": fmt_seconds(c), "naive wall": fmt_seconds(n), "wall ratio": f"{n / c:.1f}x",
                  "cached CPU": fmt_seconds(cc), "naive CPU": fmt_seconds(nc),
                  "CPU ratio": f"{nc / cc:.1f}x" if cc else "-"} for what, c, n, cc, nc in rows],
                ["what", "cached wall", "naive wall", "wall ratio", "cached CPU", "naive CPU", "CPU ratio"])
    print(f"validation BCA of the trial: cached {trial['cached_val_bca']:.3f}, naive {trial['naive_val_bca']:.3f}")
    print(f"trial ratio target >= {TARGET_TRIAL_RATIO:g}x: {'met' if figures['trial_target_met'] else 'NOT met'}")
    if profile:
        print_profile("\nwhere the cached trial's time goes (cProfile, top by cumulative time):", profile)
    default = "cache_vs_naive.json" if bench.data.real else "cache_vs_naive_synthetic.json"

    run.finish(figures, args.out or RESULTS / default)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
