"""Issue 10: where a study's time goes, and Ray Tune's own overhead per trial.

    python bench/cost_breakdown.py STUDY_DIR [--ray-trials 20] [--skip-ray] [--out FILE]

From a finished study folder (study.json, trials.csv):
- feature extraction: the study's shared encode, plus per-trial encoder passes (cache misses);
- per-trial training (train_seconds: epochs, validation, test pass) and model loading
  (load_seconds), mean and median over the trials;
- in-trial other: Ray's time_total_s minus load + encode + train (reporting, checkpoint copies,
  the model export at the end);
- slot gaps per trial: (strategy wall-clock x trial slots - sum of time_total_s) / trials, the time
  a trial slot stood empty (Ray scheduling, searcher suggestions, trial start-up and tear-down,
  and the tail where fewer trials than slots were left);
- idle CPU = 1 - sum(trial CPU-seconds) / (wall-clock x CPUs), per strategy and for the whole
  study, where a trial's CPU-seconds are its time_total_s x cpus_per_trial (the CPUs Ray held for
  it: an upper bound of what it used, so the idle share is a lower bound) and the study figure
  counts the shared encode as all CPUs busy.

Then it measures Ray Tune's overhead with a trivial trainable on a fresh local Ray (all CPUs):
a Tuner of N function trials at 1 CPU each, per trial = wall-clock x slots / N minus the trivial
work measured inside the trial: "noop" (one report), "study-like" (five epochs writing their state and
a report-log line, one report at the end, as ser_tune's trainable does), each run one at a time and
with every slot busy.
Target: <= 0.3 s of Ray overhead per trial at 2 trials at a time (issue "every core busy").
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import shutil
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import RESULTS, BenchError, Run, print_table  # noqa: E402

TARGET_RAY_OVERHEAD_S = 0.3


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study_dir", metavar="STUDY_DIR", help="a finished ser_tune study folder")
    p.add_argument("--ray-trials", type=int, default=20, help="trivial trials per Ray measurement (default 20)")
    p.add_argument("--skip-ray", action="store_true", help="only the study's breakdown, no Ray measurement")
    p.add_argument("--out", help="JSON output (default bench/results/cost_breakdown.json)")
    args = p.parse_args(argv)
    if args.ray_trials < 2:
        raise BenchError(f"--ray-trials must be >= 2 (got {args.ray_trials})")
    return args


# ----- the study's own figures ----------------------------------------------------------------
def _stats(values) -> dict:
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not values:
        return {"n": 0, "mean": None, "median": None, "sum": 0.0}
    return {"n": len(values), "mean": statistics.fmean(values), "median": statistics.median(values),
            "sum": float(sum(values))}


def study_breakdown(study_dir: Path) -> dict:
    from ser_tune.results import StudyFormatError, load_study
    from ser_tune.results import timing

    try:
        study = load_study(study_dir)
    except StudyFormatError as exc:
        raise BenchError(str(exc)) from None
    meta = study.meta
    experiment = meta.get("experiment") or {}
    cpus_per_trial = float((experiment.get("resources") or {}).get("cpus_per_trial") or 1)
    cpus = float((meta.get("machine") or {}).get("cluster_cpus") or (meta.get("machine") or {}).get("cpus") or 1)
    trials = study.trials[study.trials["status"] == "TERMINATED"].copy()
    if trials.empty:
        raise BenchError(f"{study_dir}/trials.csv: no finished (TERMINATED) trial to break down")
    for column in ("load_seconds", "encode_seconds", "train_seconds", "time_total_s"):
        trials[column] = trials[column].fillna(0.0)
    trials["other_seconds"] = (trials["time_total_s"] - trials["load_seconds"] - trials["encode_seconds"]
                               - trials["train_seconds"])
    per_trial = {name: _stats(trials[column]) for name, column in (
        ("ray_time_total", "time_total_s"), ("load", "load_seconds"), ("encode_in_trial", "encode_seconds"),
        ("train", "train_seconds"), ("other_in_trial", "other_seconds"))}

    strategies = {}
    busy_total = 0.0
    for unit in study.units:   # one row per run (a strategy's unit; the baselines' units too)
        rows = study.unit_trials(unit)
        if rows.empty:
            continue
        wall = timing.wall_clock(study, unit)
        slots = int(study.unit_meta(unit).get("concurrency") or max(1, cpus // cpus_per_trial))
        total = float(rows["time_total_s"].fillna(0.0).sum())
        busy = total * cpus_per_trial
        busy_total += busy
        strategies[unit] = {
            "trials": int(len(rows)), "wall_clock_seconds": wall, "slots": slots, "trial_seconds_sum": total,
            "slot_gap_per_trial_seconds": (wall * slots - total) / len(rows),
            "idle_cpu_fraction": 1.0 - busy / (wall * cpus) if wall > 0 else None,
        }
    started, finished = meta.get("started_at"), meta.get("finished_at")
    study_wall = (finished - started) if started and finished else None
    encode = study.encode_seconds
    return {
        "study_dir": str(study.dir), "corpus": (meta.get("corpus") or {}).get("name"),
        "synthetic": bool((meta.get("corpus") or {}).get("synthetic")), "encoder": experiment.get("encoder"),
        "cpus": cpus, "cpus_per_trial": cpus_per_trial, "trials": int(len(trials)),
        "shared_encode_seconds": encode, "study_wall_clock_seconds": study_wall,
        "per_trial": per_trial, "strategies": strategies,
        "study_idle_cpu_fraction": (1.0 - (busy_total + encode * cpus) / (study_wall * cpus)) if study_wall else None,
        "study_cpu_seconds_available": study_wall * cpus if study_wall else None,
        "study_cpu_seconds_in_trials": busy_total, "study_cpu_seconds_in_shared_encode": encode * cpus,
    }


# ----- Ray Tune's overhead with a trivial trainable --------------------------------------------
def _noop(config):
    from ray import tune

    start = time.perf_counter()
    tune.report({"score": 1.0, "work_s": time.perf_counter() - start})


def _study_like(config):
    """Five epochs, each writing its state and a report-log line, one report to Ray at the end, as
    ser_tune's trainable does."""
    from ray import tune

    work = 0.0
    folder = Path(tempfile.mkdtemp(prefix="bench_trial_"))
    try:
        for epoch in range(5):
            start = time.perf_counter()
            (folder / "state.json").write_text(json.dumps({"epoch": epoch}))
            with open(folder / "reports.jsonl", "a") as log:
                log.write(json.dumps({"epoch": epoch}) + "\n")
            work += time.perf_counter() - start
        tune.report({"score": 1.0, "work_s": work})
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def ray_overhead(n: int, storage: Path) -> dict:
    import ray
    from ray import tune

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no experiment banner per Tuner
    cpus = os.cpu_count() or 1
    start = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=True,
             logging_level="ERROR")
    init_seconds = time.perf_counter() - start
    results = {"ray_init_seconds": init_seconds, "cpus": cpus, "trials_per_run": n, "runs": {}}
    try:
        for name, trainable in (("noop", _noop), ("study-like", _study_like)):
            for slots in (1, cpus):
                label = f"{name}, {slots} at a time"
                tuner = tune.Tuner(
                    tune.with_resources(trainable, {"cpu": 1}), param_space={"x": tune.uniform(0, 1)},
                    tune_config=tune.TuneConfig(num_samples=n, metric="score", mode="max", reuse_actors=True,
                                                max_concurrent_trials=slots),
                    run_config=tune.RunConfig(name=f"{name}-{slots}", storage_path=str(storage), verbose=0,
                                              checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
                start = time.perf_counter()
                grid = tuner.fit()
                wall = time.perf_counter() - start
                work = sum(float((r.metrics or {}).get("work_s", 0.0)) for r in grid)
                errors = sum(1 for r in grid if r.error)
                ray_time = sum(float((r.metrics or {}).get("time_total_s", 0.0)) for r in grid)
                per_trial = (wall * slots - work) / n
                results["runs"][label] = {"trainable": name, "slots": slots, "trials": n, "errors": errors,
                                          "fit_wall_seconds": wall, "work_seconds": work,
                                          "ray_time_total_s_sum": ray_time,
                                          "overhead_per_trial_seconds": per_trial}
                print(f"Ray overhead, {label}: {wall:.1f} s for {n} trials -> {per_trial:.2f} s per trial",
                      flush=True)
    finally:
        ray.shutdown()
    return results


def _s(value) -> str:
    return "-" if value is None else f"{value:.2f} s"


def print_breakdown(b: dict) -> None:
    print()
    print(f"study {b['study_dir']} ({b['corpus']}{', SYNTHETIC' if b['synthetic'] else ''}, {b['encoder']}), "
          f"{b['trials']} finished trials, {b['cpus']:g} CPUs, {b['cpus_per_trial']:g} per trial")
    print(f"feature extraction, shared (once per study): {b['shared_encode_seconds']:.1f} s; "
          f"study wall-clock {_s(b['study_wall_clock_seconds'])}")
    rows = [{"per trial": name, "mean": _s(v["mean"]), "median": _s(v["median"]), "sum": _s(v["sum"])}
            for name, v in b["per_trial"].items()]
    print_table(rows, ["per trial", "mean", "median", "sum"])
    rows = [{"strategy": name, "trials": v["trials"], "wall-clock": _s(v["wall_clock_seconds"]), "slots": v["slots"],
             "slot gap / trial": _s(v["slot_gap_per_trial_seconds"]),
             "idle CPU": f"{100 * v['idle_cpu_fraction']:.0f}%" if v["idle_cpu_fraction"] is not None else "-"}
            for name, v in b["strategies"].items()]
    print_table(rows, ["strategy", "trials", "wall-clock", "slots", "slot gap / trial", "idle CPU"])
    if b["study_idle_cpu_fraction"] is not None:
        print(f"whole study idle CPU (shared encode counted busy): {100 * b['study_idle_cpu_fraction']:.0f}%")


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        run = Run("cost_breakdown", argv)
        breakdown = study_breakdown(Path(args.study_dir))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_breakdown(breakdown)
    figures = {"study": breakdown, "target_ray_overhead_per_trial_seconds": TARGET_RAY_OVERHEAD_S}
    if not args.skip_ray:
        storage = Path(tempfile.mkdtemp(prefix="ser_tune_bench_ray_"))
        try:
            figures["ray_overhead"] = ray_overhead(args.ray_trials, storage)
        finally:
            shutil.rmtree(storage, ignore_errors=True)
        worst = max(r["overhead_per_trial_seconds"] for r in figures["ray_overhead"]["runs"].values())
        figures["ray_overhead_target_met"] = worst <= TARGET_RAY_OVERHEAD_S
        print(f"Ray start (once): {figures['ray_overhead']['ray_init_seconds']:.1f} s; worst overhead per trial "
              f"{worst:.2f} s (target <= {TARGET_RAY_OVERHEAD_S:g} s: "
              f"{'met' if figures['ray_overhead_target_met'] else 'NOT met'})")
    run.finish(figures, args.out or RESULTS / ("cost_breakdown_synthetic.json" if breakdown["synthetic"]
                                               else "cost_breakdown.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
