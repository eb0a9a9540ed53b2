"""Deployment objectives: a finished deployment study's models, one per read layer, timed again side by side.

    python bench/deploy_latency.py STUDY_DIR [--rounds 15] [--out FILE]

A study times each trial's exported model once, when the trial ends, on a machine that may be busy
(other trials, other users), so one model can read differently at two moments. Here the most
accurate trial of each ``layer`` value (1..6, and the learned mix of every layer) is loaded once and
all of them are timed in rounds: each round runs every model once, in a shuffled order, over the
study's own latency clips on one thread (``training.latency.measure_latency``, one pass), so a change
of load hits every model alike. Per model: the median over rounds and its interquartile range of
both clocks (wall-clock latency and the timing thread's CPU time, per second of audio), the
layers its encoder keeps, its size and parameters, its validation and test BCA; and, from trials.csv,
the study's own measurements (both clocks) of every trial that read that layer (median, min, max),
how far the same architecture moved between trials. The study's fronts and hypervolumes are copied from its
summary.json.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import BenchError, Run, print_table  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study_dir", metavar="STUDY_DIR", help="a finished study that measured latency (emodb_deploy.yaml)")
    p.add_argument("--rounds", type=int, default=15, help="timed rounds over every model (default 15)")
    p.add_argument("--out", help="JSON output (default bench/results/deploy_latency.json)")
    args = p.parse_args(argv)
    if args.rounds < 2:
        raise BenchError(f"--rounds must be >= 2 (got {args.rounds})")
    return args


def models_by_layer(study) -> list[dict]:
    """The most accurate finished search trial of each layer value, with the study's own latency figures
    of every trial that read that layer."""
    trials = study.trials[study.trials["strategy"].isin(study.strategies) & (study.trials["status"] == "TERMINATED")]
    if "latency_ms_per_s" not in trials or "cfg_layer" not in trials:
        raise BenchError(f"{study.dir}: its trials measured no latency or did not search the layer")
    layer = trials["cfg_layer"].astype(str).str.replace(".0", "", regex=False)
    rows = []
    for value, own in trials.groupby(layer, sort=True):
        best = own.sort_values(study.metric, ascending=False, kind="mergesort").iloc[0]
        rows.append({"layer": value, "trial_id": best["trial_id"], "model_dir": best["model_dir"],
                     "val_bca": round(float(best["val_bca"]), 3), "test_bca": round(float(best["test_bca"]), 3),
                     "model_mb": float(best["model_bytes"]) / 1e6, "total_params": int(best["total_params"]),
                     "study_trials": int(len(own)),
                     **{f"study_{clock}_{stat}": float(getattr(own[column], stat)())
                        for clock, column in (("wall", "latency_ms_per_s"), ("cpu", "latency_cpu_ms_per_s"))
                        if column in own for stat in ("median", "min", "max")}})
    return rows


def time_in_rounds(rows: list[dict], clips: list[str], rounds: int) -> None:
    """Add each model's median and interquartile range over ``rounds`` shuffled rounds (ms per second of audio)."""
    from ser_tune.data import SAMPLE_RATE, load_audio
    from ser_tune.training.export import load_model
    from ser_tune.training.latency import measure_latency

    waves = [load_audio(path, SAMPLE_RATE) for path in clips]
    models = {row["layer"]: load_model(row["model_dir"]) for row in rows}
    for row in rows:
        row["encoder_layers"] = models[row["layer"]].encoder.num_layers
    times: dict[str, list] = {name: [] for name in models}
    order, rng = list(models), random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            result = measure_latency(models[name], waves, SAMPLE_RATE, repeats=1, warmup=1)
            times[name].append((result.latency_ms_per_s, result.cpu_ms_per_s))
    for row in rows:
        for clock, values in zip(("wall", "cpu"), np.asarray(times[row["layer"]]).T):
            q25, median, q75 = np.percentile(values, [25, 50, 75])
            row.update({f"{clock}_median": float(median), f"{clock}_iqr": float(q75 - q25)})


def main(argv=None) -> int:
    args = parse_args(argv)
    from ser_tune.results import StudyFormatError, load_study
    from ser_tune.training.trainable import set_threads

    try:
        study = load_study(Path(args.study_dir))
    except StudyFormatError as exc:
        raise BenchError(str(exc)) from None
    run = Run("deploy_latency", argv)
    set_threads(1)
    rows = models_by_layer(study)
    clips = latency_clips(study)
    time_in_rounds(rows, clips, args.rounds)
    for row in rows:   # two decimals are all the noise allows
        row.update({k: round(v, 2) for k, v in row.items() if isinstance(v, float) and k not in ("val_bca", "test_bca")})
    print_table(rows, ["layer", "encoder_layers", "trial_id", "val_bca", "test_bca", "wall_median", "wall_iqr",
                       "cpu_median", "cpu_iqr", "study_wall_median", "study_wall_min", "study_wall_max",
                       "study_cpu_median", "study_cpu_min", "study_cpu_max", "study_trials", "model_mb",
                       "total_params"])
    summary = json.loads((study.dir / "summary.json").read_text())["studies"][0]["strategies"]
    run.finish({"study_dir": str(study.dir), "rounds": args.rounds, "clips": clips, "models": rows,
                "hypervolume": {name: s.get("hypervolume") for name, s in summary.items()},
                "pareto": {name: s.get("pareto") for name, s in summary.items()}}, args.out)
    return 0


def latency_clips(study) -> list[str]:
    """The clips the study timed its trials on (``StrategyStudy.latency_check``: spread evenly over the table)."""
    from ser_tune.config import experiment_from_dict
    from ser_tune.study.prepare import load_study_corpus
    from ser_tune.strategies import StrategyStudy

    raw = {k: v for k, v in study.experiment.items() if k != "source"}
    kind = StrategyStudy(experiment_from_dict(raw))
    kind.corpus = load_study_corpus(kind.experiment.corpus, kind.experiment.storage)
    return list(kind.latency_check().clips)


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2)
