"""Issue "answers a user can trust" (2), the headline: which strategy reaches 0.9 first, over repeated runs.

    python bench/repeated.py [--config experiments/emodb.yaml] [--repeats 10] [--cv-folds 4] [--trials 15]
                             [--threshold 0.9] [--storage DIR] [--from-study STUDY_DIR] [--out FILE]

Runs ``python -m ser_tune.launch CONFIG --repeats R --cv-folds K --trials N --json`` (every strategy of
the config; grid runs its grid once) and records per strategy: the runs, the success rate at the
threshold, the ERT with its bootstrap 95 % interval on the three clocks (run wall-clock, trial
CPU-seconds, trials), the final best objective and its test BCA (mean ± SE over runs) and the verdict
against random search; beside them the study's ladder of targets with every strategy's ERT at each, its
data profiles (fraction of (run, target) pairs reached against seconds and trials) and, per verdict, the
smallest A12 the test could detect at 80 % power. Plots: the study's plots/runtime_ecdf.png and
plots/data_profile.png. An interrupted study (``--from-study``) is summarised on its runs that ended;
``python -m ser_tune.launch CONFIG --resume STUDY_DIR`` finishes it. It also projects
the study's time on a cluster from the measured costs: every run's trials spread over all the
cluster's CPUs (units one after another), so the study takes about the sum over units of
max(its trials' CPU-seconds / CPUs, its longest trial) plus each unit's measured fixed cost (a model:
it assumes trials as long as here and the same per-unit overhead).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (REPO, RESULTS, BenchError, Run, cpu_outside_trials, print_table, real_data_available,  # noqa: E402
                      study_cpus, trial_cpu_seconds)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="experiment YAML (default: experiments/emodb.yaml, or the quickstart without ../shared)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--cv-folds", type=int, default=4)
    p.add_argument("--trials", type=int, default=15)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--storage", help="storage folder (default: a fresh studies/bench-repeated-<time>)")
    p.add_argument("--from-study", metavar="STUDY_DIR", help="summarise a finished study instead of running one")
    p.add_argument("--cluster-cpus", type=int, nargs="+", default=[8], help="cluster sizes to project to (CPUs)")
    p.add_argument("--out", help="JSON output (default bench/results/repeated.json)")
    return p.parse_args(argv)


def launch(args) -> tuple[Path, float]:
    config = args.config or str(REPO / "experiments" / ("emodb.yaml" if real_data_available() else "quickstart.yaml"))
    storage = Path(args.storage) if args.storage else REPO / "studies" / time.strftime("bench-repeated-%Y%m%d-%H%M%S")
    command = [sys.executable, "-m", "ser_tune.launch", config, "--repeats", str(args.repeats), "--cv-folds",
               str(args.cv_folds), "--trials", str(args.trials), "--storage", str(storage), "--json"]
    print("running: " + " ".join(["python", *command[1:]]), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0 or not done.stdout.strip():
        raise BenchError(f"the launcher exited {done.returncode}")
    return Path(json.loads(done.stdout.strip().splitlines()[-1])["study_dir"]), time.perf_counter() - start


def projection(study, cpus: int) -> dict:
    """Projected study seconds on ``cpus`` CPUs from the measured trials and per-unit fixed costs."""
    from ser_tune.results import timing

    per_trial_cpus = float((study.experiment.get("resources") or {}).get("cpus_per_trial") or 1)
    total, measured = 0.0, 0.0
    for unit in study.units:
        trials = study.unit_trials(unit)
        if trials.empty:
            continue
        seconds = trials["time_total_s"].fillna(0.0)
        wall = timing.wall_clock(study, unit)
        if not math.isfinite(wall):   # a unit an interrupt cut off: --resume runs it again
            continue
        here = study.meta["machine"].get("cluster_cpus") or 2
        busy = float(seconds.sum()) * per_trial_cpus / here
        fixed = max(0.0, wall - max(busy, float(seconds.max())))   # the unit's time not spent in trials
        total += max(float(seconds.sum()) * per_trial_cpus / cpus, float(seconds.max())) + fixed
        measured += wall
    encode = study.encode_seconds
    return {"cpus": cpus, "projected_seconds": total + encode, "measured_units_seconds": measured,
            "encode_seconds": encode}


def strategy_cpu_outside_trials(study) -> dict[str, float]:
    """strategy -> CPU outside trials (``benchlib.cpu_outside_trials``), pooled over the units that ended."""
    from ser_tune.results import timing

    cpus, per_trial = study_cpus(study)
    busy: dict[str, float] = {}
    wall: dict[str, float] = {}
    for unit in study.units:
        strategy = (study.unit_meta(unit).get("tags") or {}).get("strategy")
        rows = study.unit_trials(unit)
        seconds = timing.wall_clock(study, unit)
        if strategy not in study.strategies or rows.empty or not math.isfinite(seconds):   # an interrupted unit
            continue
        busy[strategy] = busy.get(strategy, 0.0) + trial_cpu_seconds(rows, per_trial)
        wall[strategy] = wall.get(strategy, 0.0) + seconds
    return {s: cpu_outside_trials(busy[s], wall[s], cpus) for s in busy if wall[s] > 0}


def summarise(study_dir: Path, threshold: float, clusters: list[int]) -> dict:
    from ser_tune.launch import launch_json
    from ser_tune.results import summary_json
    from ser_tune.study.folder import load_study

    study = load_study(study_dir)
    out = launch_json(summary_json([study.dir], [threshold]), study)
    key = f"{threshold:g}"
    ladder = [f"{t:g}" for t in out.get("targets") or []]
    strategies = {}
    for name, s in out["strategies"].items():
        every = s.get("ert") or {}
        strategies[name] = {"runs": s.get("runs"), "repeats": s.get("repeats"), "status": s.get("status"),
                            "ert": every.get(key) or {}, "ladder_ert": {t: every.get(t) for t in ladder},
                            "data_profile": s.get("data_profile"), "data_profile_trials": s.get("data_profile_trials"),
                            "power": s.get("power"), "comparison": s.get("comparison"),
                            "best_val_bca": s.get("best_val_bca"), "test_bca": s.get("test_bca"),
                            "nested_test_bca": s.get("nested_test_bca"), "verdict": s.get("verdict")}
    meta = study.meta
    return {"study_dir": str(study.dir), "threshold": threshold, "targets": out.get("targets"),
            "status": meta.get("status"),
            "study_seconds": (meta.get("finished_at") or math.nan) - meta["started_at"],
            "encode_seconds": study.encode_seconds, "cluster_cpus": meta["machine"].get("cluster_cpus"),
            "strategies": strategies, "baselines": out["baselines"],
            "projections": [projection(study, cpus) for cpus in clusters],
            "cpu_outside_trials": strategy_cpu_outside_trials(study)}


def fmt(value, missing: str = "-") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2g}"


def show(summary: dict) -> None:
    def ci(e, clock, digits=0):
        if not e or e.get(clock) is None:
            return "not reached"
        high = e.get(f"{clock}_high")
        return f"{e[clock]:.{digits}f} [{e[f'{clock}_low']:.{digits}f}, {'inf' if high is None else f'{high:.{digits}f}'}]"

    rows = [{"strategy": n, "runs": s["runs"], "reached": f"{s['ert'].get('reached', 0)}/{s['ert'].get('runs', s['runs'])}",
             "ERT s [95 % CI]": ci(s["ert"], "seconds"), "ERT trials [95 % CI]": ci(s["ert"], "trials", 1),
             "test BCA": "-" if s["nested_test_bca"]["mean"] is None else f"{s['nested_test_bca']['mean']:.3f}"}
            for n, s in summary["strategies"].items()]
    print_table(rows, list(rows[0]))
    for n, s in summary["strategies"].items():
        print(f"  {s['verdict']}")
    if summary.get("targets"):
        print("ERT wall-clock s [95 % CI] (runs that reached it) at each target of the ladder:")
        ladder = [f"{t:g}" for t in summary["targets"]]
        rows = [{"strategy": n, **{t: "-" if not s["ladder_ert"].get(t) else
                                   f"{ci(s['ladder_ert'][t], 'seconds')} ({s['ladder_ert'][t]['reached']}/"
                                   f"{s['ladder_ert'][t]['runs']})" for t in ladder}}
                for n, s in summary["strategies"].items()]
        print_table(rows, ["strategy", *ladder])
    for n, s in summary["strategies"].items():
        c = s.get("comparison")
        if c:
            detectable = c["power"]["min_detectable_a12"]
            print(f"  {n} vs random, time to {c['threshold']:g}: Holm p {fmt(c['p_holm'])}, A12 {fmt(c['a12'])}, "
                  f"detectable A12 at {c['power']['power']:.0%} power: {fmt(detectable, 'none detectable')}")
    print("CPU outside trials (1 - trial CPU-s / (units' wall-clock x CPUs)): "
          + ", ".join(f"{n} {100 * v:.0f} %" for n, v in summary["cpu_outside_trials"].items()))
    if math.isfinite(summary["study_seconds"]):
        print(f"study: {summary['study_seconds'] / 60:.1f} min on {summary['cluster_cpus']} CPUs")
    else:   # interrupted (or still running): its runs so far; --resume finishes it
        units = summary["projections"][0]["measured_units_seconds"] if summary["projections"] else math.nan
        print(f"study {summary['status']}: its units so far took {units / 60:.1f} min on {summary['cluster_cpus']} CPUs")
    for p in summary["projections"]:
        print(f"projected on {p['cpus']} CPUs: {p['projected_seconds'] / 60:.1f} min (a model, see the docstring)")


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        run = Run("repeated", argv)
        study_dir = Path(args.from_study) if args.from_study else launch(args)[0]
        summary = summarise(study_dir, args.threshold, args.cluster_cpus)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    show(summary)
    run.finish(summary, args.out or RESULTS / "repeated.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
