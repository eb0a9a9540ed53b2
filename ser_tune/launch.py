"""``python -m ser_tune.launch [CONFIG]``: run a hyper-parameter study, one Ray Tune Tuner per strategy.

With no CONFIG it runs the quickstart (synthetic corpus, tiny encoder, two strategies).
The study folder is printed first; Ray's trial table shows progress; the strategy
comparison and the report's path come at the end (with ``--json``, one JSON object last).
"""
from __future__ import annotations

import argparse

from .study.session import Cluster, add_common_arguments, cluster_address, fail, prepare_for

EPILOG = """examples:
  python -m ser_tune.launch                                   # quickstart on the embedded synthetic corpus
  python -m ser_tune.launch experiments/emodb.yaml --strategies tpe gp --trials 15
  python -m ser_tune.launch experiments/emodb.yaml --address auto   # on a running Ray cluster
  python -m ser_tune.launch experiments/emodb.yaml --resume         # continue the latest interrupted study
  python -m ser_tune.launch experiments/emodb.yaml --cv-folds 4 --outer-folds 5 --repeats 10
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ser_tune.launch", description=__doc__.splitlines()[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="experiment YAML (default: the quickstart)")
    p.add_argument("--strategies", nargs="+", metavar="NAME", help="subset/override: tpe gp skopt grid random")
    p.add_argument("--trials", type=int, help="trial budget per strategy")
    p.add_argument("--minutes", type=float, help="optional time budget per strategy")
    p.add_argument("--concurrency", type=int, help="max concurrent trials per strategy")
    p.add_argument("--repeats", type=int, help="independent runs of every strategy (budget.repeats)")
    p.add_argument("--warmup", choices=("sized", "library"),
                   help="model-based searchers' random warm-up: sized to the budget, or each library's default "
                        "(budget.warmup)")
    p.add_argument("--cv-folds", type=int, help="speaker folds each trial is scored on (objective.cv_folds)")
    p.add_argument("--outer-folds", type=int, help="outer folds of test speakers (evaluation.outer_folds)")
    p.add_argument("--seed", type=int)
    add_common_arguments(p)
    p.add_argument("--ray-verbose", type=int, choices=(0, 1, 2), default=0,
                   help="Ray Tune's own trial tables (0: off, one line per finished trial instead; 1: status; "
                        "2: status and results)")
    return p.parse_args(argv)


def load(args):
    """The experiment: the YAML (or the quickstart), with the command line's overrides applied."""
    from .config import ConfigError, default_experiment, experiment_from_dict, load_experiment

    overrides = {"strategies": args.strategies, "budget.trials": args.trials, "budget.minutes": args.minutes,
                 "resources.cpus_per_trial": args.cpus_per_trial, "concurrency": args.concurrency,
                 "storage": args.storage, "seed": args.seed, "budget.repeats": args.repeats,
                 "budget.warmup": args.warmup,
                 "objective.cv_folds": args.cv_folds, "evaluation.outer_folds": args.outer_folds}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        exp = load_experiment(args.config) if args.config else default_experiment()
        if not overrides:
            return exp
        raw = exp.to_dict()
        raw.pop("source", None)
        for dotted, value in overrides.items():
            node = raw
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        return experiment_from_dict(raw, source=exp.source)
    except (ConfigError, ValueError) as exc:
        fail(str(exc))


def main(argv=None) -> int:
    args = parse_args(argv)
    prepare_for(args.address)   # before anything imports Ray
    exp = load(args)
    check_before_imports(exp, args)
    from .results import summary_json, write_report
    from .results.report import smoke_test_words
    from .study.cli import finish_cli, run_study_cli
    from .study.folder import TRIALS_FILE
    from .strategies import StrategyStudy

    verbose = 0 if args.json else args.ray_verbose
    outcome = run_study_cli(StrategyStudy(exp), args, name=exp.name, storage=exp.storage, resources=exp.resources,
                            verbose=verbose)
    folder = outcome.folder
    if outcome.interrupted and not (folder.dir / TRIALS_FILE).exists():   # e.g. in the encode: nothing to report
        return finish_cli(outcome, {"study_dir": str(folder.dir), "status": folder.meta.get("status")})
    if exp.crosscorpus and not (outcome.interrupted or outcome.already_done):
        run_crosscorpus(folder, exp)
    report = write_report(folder.dir)
    summary = summary_json([folder.dir])
    print_comparison(summary)
    if (folder.meta.get("corpus") or {}).get("synthetic"):
        print(f"\n{smoke_test_words(folder.meta)}")
    print(f"report: {report}")
    return finish_cli(outcome, launch_json(summary, folder))


def check_before_imports(exp, args) -> None:
    """Input that cannot run, said in one line in a second instead of after torch's and Ray's imports: a
    corpus folder that is not there, a trial that needs more CPUs than this machine has."""
    from .data import DataError, check_root

    try:
        check_root(exp.corpus.name, exp.corpus.root)
    except DataError as exc:
        fail(str(exc))
    if cluster_address(args.address) is None:
        why = Cluster.local().cannot_run(exp.resources.cpus_per_trial)
        if why:
            fail(why)


def run_crosscorpus(folder, exp) -> None:
    from .crosscorpus import CrossCorpusError, run_for_study
    from .data import DataError
    from .encoders import EncoderError

    try:
        run_for_study(folder.dir, exp.crosscorpus, seed=exp.seed)
        print(f"cross-corpus evaluation: {folder.dir / 'crosscorpus.md'}")
    except (CrossCorpusError, DataError, EncoderError) as exc:  # the study's own results stay intact
        print(f"cross-corpus evaluation skipped: {exc}")


def launch_json(summary: dict, folder) -> dict:
    """The --json object: per strategy its trials, best validation metric, best config, test metric,
    seconds_to_0.9 (one run) or repeats, ert and verdict (several runs), nested_test_bca and
    gain_over_probe; the baselines and outer folds; study_dir, status, incomplete and best_model."""
    entry = summary["studies"][0]
    strategies = {name: {**s, "seconds_to_0.9": (s.get("seconds_to") or {}).get("0.9")}
                  for name, s in entry["strategies"].items()}
    incomplete = [name for name, s in strategies.items() if s.get("status") != "done"]
    return {"study_dir": str(folder.dir), "status": folder.meta.get("status"), "incomplete": incomplete,
            "strategies": strategies, "targets": entry.get("targets"),
            "baselines": entry.get("baselines"), "outer_folds": entry.get("outer_folds"),
            "best_model": folder.meta.get("best_model", {}).get("path")}


def print_comparison(summary: dict) -> None:
    entry = summary["studies"][0]
    print("\nstrategy comparison (validation speakers guide the search; test speakers never seen by it):")
    metric = entry.get("metric", "val_bca")
    test_key = "test_" + metric[4:]
    top = max(entry.get("thresholds") or [0.9])
    print(f"{'strategy':10} {'runs':>4} {'trials':>6} {'best ' + metric:>14} {test_key + ' (held out)':>22}  "
          f"time to {top:g}")
    complete = {n: s for n, s in entry["strategies"].items() if s.get("status") == "done"}
    for name, s in [*complete.items(), *((n, s) for n, s in entry["strategies"].items() if n not in complete)]:
        nested = s.get("nested_test_bca") or {}
        held = _fmt(nested.get("mean")) + (f" ± {nested['sd']:.3f}" if nested.get("sd") else "")
        print(f"{name:10} {s.get('runs', 1):>4} {s.get('trials', 0):>6} {_fmt(s.get('best_' + metric)):>14} "
              f"{held:>22}  {_time_to(s, top, name in complete)}")
    for name, values in (entry.get("baselines") or {}).items():
        if values:
            sd = f" ± {values['sd']:.3f}" if values.get("sd") else ""
            print(f"{'baseline ' + name:28} {_fmt(values.get('mean')) + sd:>26}")
    for name, s in entry["strategies"].items():
        if s.get("verdict"):
            print(f"  {s['verdict']}")


def _time_to(s: dict, top: float, complete: bool) -> str:
    if not complete:
        return f"INCOMPLETE ({s.get('status')}: {s.get('trials')} trials ended; not ranked; --resume finishes it)"
    ert = (s.get("ert") or {}).get(f"{top:g}")
    if ert is not None:
        seconds = "not reached" if ert.get("seconds") is None else f"ERT {ert['seconds']:.1f} s"
        return f"{seconds} ({ert['reached']}/{ert['runs']} runs reached it)"
    t = (s.get("seconds_to") or {}).get(f"{top:g}")
    return f"{t:.1f} s" if t is not None else f"not reached in {s.get('trials')} trials"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    from .study.session import exit_now

    exit_now(main())
