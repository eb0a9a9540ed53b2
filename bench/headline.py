"""Issue 10, the headline: every strategy under the same trial budget on real EmoDB + Whisper-base.

    python bench/headline.py [--config experiments/emodb.yaml] [--strategies tpe gp skopt random grid]
                             [--trials 15] [--threshold 0.9] [--storage DIR] [--from-study STUDY_DIR]
                             [--out FILE]

Runs ``python -m ser_tune.launch CONFIG --json`` (the quickstart config, on the synthetic corpus,
when ../shared lacks EmoDB or Whisper-base) and prints, per strategy: the strategy's wall-clock
and the cumulative trial time (model loading excluded: the reference paper's measure) to the
first validation BCA >= the threshold -- censored as "not reached in N trials / T min" when never
reached --, trials to reach it, the best validation BCA and that trial's test BCA, plus the
study's shared encode time. The study goes to a fresh storage folder by default, so its feature
cache starts cold and the shared encode is really measured (``--storage studies`` reuses the usual
one). ``--from-study`` re-reads a finished study instead of running one.
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
from benchlib import REPO, RESULTS, BenchError, Run, print_table, real_data_available  # noqa: E402

STRATEGIES = ["tpe", "gp", "skopt", "random", "grid"]
TARGET_MINUTES = 5.0               # 0.9 validation BCA within 5 min of wall-clock (tpe and gp)
TARGET_STRATEGIES = ("tpe", "gp")
# The reference paper (8 cores, speaker-DEPENDENT random 80/20 split, wav2vec2-IEMOCAP):
PAPER = {"gp": {"bca": 0.96, "minutes": 11}, "tpe": {"bca": 0.97, "minutes": 15},
         "grid": {"trials_to_0.9": 143, "minutes_to_0.9": 1680}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="experiment YAML (default: experiments/emodb.yaml when ../shared has the "
                                    "data, else experiments/quickstart.yaml)")
    p.add_argument("--strategies", nargs="+", default=STRATEGIES, metavar="NAME", help="default: all five")
    p.add_argument("--trials", type=int, default=15, help="trial budget per strategy (default 15)")
    p.add_argument("--threshold", type=float, default=0.9, help="validation BCA to time (default 0.9)")
    p.add_argument("--storage", help="study storage folder (default: a fresh studies/bench-headline-<time>, so the "
                                     "feature cache starts cold and the shared encode is measured)")
    p.add_argument("--from-study", metavar="STUDY_DIR", help="summarise a finished study instead of running one")
    p.add_argument("--out", help="JSON output (default bench/results/headline.json, or headline_synthetic.json)")
    args = p.parse_args(argv)
    if args.trials < 1:
        raise BenchError(f"--trials must be >= 1 (got {args.trials})")
    unknown = [s for s in args.strategies if s not in STRATEGIES]
    if unknown:
        raise BenchError(f"--strategies: unknown {', '.join(unknown)} (known: {', '.join(STRATEGIES)})")
    return args


def default_config() -> Path:
    return REPO / "experiments" / ("emodb.yaml" if real_data_available() else "quickstart.yaml")


def run_study(config: Path, strategies: list[str], trials: int, storage: Path) -> tuple[Path, float, list[str]]:
    """Run the launcher (its progress goes to our stderr); returns (study folder, seconds, command)."""
    tail = ["--json", "--strategies", *strategies, "--trials", str(trials), "--storage"]
    command = [sys.executable, "-m", "ser_tune.launch", str(config), *tail, str(storage)]
    shown = ["python", "-m", "ser_tune.launch", _relative(config), *tail, _relative(storage)]
    print(f"running: {' '.join(shown)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise BenchError(f"the launcher exited {done.returncode}: {' '.join(shown)}")
    try:
        study_dir = Path(json.loads(lines[-1])["study_dir"])
    except (ValueError, KeyError, TypeError):
        raise BenchError(f"the launcher's last stdout line is not its JSON object: {lines[-1][:200]!r}") from None
    return study_dir, seconds, shown


def _relative(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def summarise(study_dir: Path, threshold: float) -> dict:
    from ser_tune.results import StudyFormatError, compare, load_study

    try:
        study = load_study(study_dir)
        tables = compare([study], [threshold])
    except StudyFormatError as exc:
        raise BenchError(str(exc)) from None
    marks = {row["strategy"]: row for row in tables["thresholds"].to_dict("records")}
    strategies = {}
    for row in tables["strategies"].to_dict("records"):
        mark = marks[row["strategy"]]
        wall = row["wall_clock_seconds"]
        reached = bool(mark["reached"])
        strategies[row["strategy"]] = {
            "trials": row["trials"], "errors": row["errors"], "trials_started": row["trials_started"],
            "warmup": row["warmup"], "notes": row["notes"],
            "wall_clock_seconds": wall, "trial_seconds": row["trial_seconds"],
            "reached": reached,
            "wall_seconds_to": _num(mark["seconds_to"]),
            "wall_seconds_to_incl_encode": _num(mark["seconds_to_incl_encode"]),
            "trial_seconds_to": _num(mark["trial_seconds_to"]),
            "trials_to": _num(mark["trials_to"]),
            "best_val_bca": _num(row["best_val"]), "test_bca_of_best": _num(row["best_test"]),
            "best_config": row["best_config"],
            "censored": None if reached else
            f"not reached in {row['trials_started']} trials / {wall / 60:.1f} min",
        }
    meta = study.meta
    study_wall = (meta.get("finished_at") or math.nan) - (meta.get("started_at") or math.nan)
    return {"study_dir": str(study.dir), "threshold": threshold, "encode_seconds": study.encode_seconds,
            "study_wall_clock_seconds": _num(study_wall), "corpus": meta.get("corpus", {}),
            "split": {k: v for k, v in (meta.get("split") or {}).items() if k in ("kind", "speaker_dependent", "counts")},
            "encoder": (meta.get("experiment") or {}).get("encoder"),
            "trial_settings": (meta.get("experiment") or {}).get("trial"),
            "cpus_per_trial": ((meta.get("experiment") or {}).get("resources") or {}).get("cpus_per_trial"),
            "cluster_cpus": (meta.get("machine") or {}).get("cluster_cpus"),
            "strategies": strategies}


def _num(value):
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _minutes(seconds) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def print_summary(summary: dict, threshold: float) -> None:
    print()
    print(f"study {summary['study_dir']}")
    synthetic = " (SYNTHETIC stand-in corpus)" if summary["corpus"].get("synthetic") else ""
    print(f"corpus {summary['corpus'].get('name')}{synthetic}, {summary['corpus'].get('files')} clips; split "
          f"{summary['split'].get('kind')} (speaker-dependent: {summary['split'].get('speaker_dependent')}); "
          f"encoder {summary['encoder']}; {summary['cluster_cpus']} CPUs, {summary['cpus_per_trial']} per trial")
    print(f"shared encode (once per study, before any strategy): {summary['encode_seconds']:.1f} s; "
          f"whole study wall-clock {_minutes(summary['study_wall_clock_seconds'])}")
    rows = []
    for name, s in summary["strategies"].items():
        rows.append({
            "strategy": name, "trials": f"{s['trials']}/{s['trials_started']}",
            "wall-clock": _minutes(s["wall_clock_seconds"]),
            f"wall to {threshold:g}": _minutes(s["wall_seconds_to"]) if s["reached"] else s["censored"],
            f"trial time to {threshold:g}": _minutes(s["trial_seconds_to"]) if s["reached"] else "-",
            "trials to": f"{s['trials_to']:.0f}" if s["reached"] else "-",
            "best val BCA": f"{s['best_val_bca']:.3f}" if s["best_val_bca"] is not None else "-",
            "its test BCA": f"{s['test_bca_of_best']:.3f}" if s["test_bca_of_best"] is not None else "-",
        })
    print_table(rows, list(rows[0]) if rows else ["strategy"])
    for name in TARGET_STRATEGIES:
        s = summary["strategies"].get(name)
        if s is None:
            continue
        met = s["reached"] and s["wall_seconds_to"] <= TARGET_MINUTES * 60
        print(f"target {name}: val BCA >= {threshold:g} within {TARGET_MINUTES:g} min wall-clock: "
              f"{'met' if met else 'NOT met'}")
    print("reference paper (8 cores, speaker-DEPENDENT split): GP-BO 0.96 in 11 min, TPE 0.97 in 15 min, "
          "grid 143 trials / 1,680 min to pass 0.9")


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        run = Run("headline", argv)
        if args.from_study:
            study_dir, seconds, launch = Path(args.from_study), None, None
        else:
            config = Path(args.config) if args.config else default_config()
            if not config.is_file():
                raise BenchError(f"--config: {config} does not exist")
            storage = Path(args.storage) if args.storage else REPO / "studies" / time.strftime("bench-headline-%Y%m%d-%H%M%S")
            study_dir, seconds, launch = run_study(config, args.strategies, args.trials, storage)
        summary = summarise(study_dir, args.threshold)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary["launch_command"] = " ".join(launch) if launch else None
    summary["launcher_seconds"] = seconds
    summary["targets"] = {name: {"minutes": TARGET_MINUTES, "threshold": args.threshold,
                                 "met": bool(s["reached"] and s["wall_seconds_to"] <= TARGET_MINUTES * 60)}
                          for name, s in summary["strategies"].items() if name in TARGET_STRATEGIES}
    summary["paper"] = PAPER
    print_summary(summary, args.threshold)
    synthetic = summary["corpus"].get("synthetic")
    run.finish(summary, args.out or RESULTS / ("headline_synthetic.json" if synthetic else "headline.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
