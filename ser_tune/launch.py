"""``python -m ser_tune.launch [CONFIG]``: run a hyper-parameter study, one Ray Tune Tuner per strategy.

With no CONFIG it runs the quickstart (synthetic corpus, tiny encoder, two strategies).
The study folder is printed first; Ray's trial table shows progress; the strategy
comparison and the report's path come at the end (with ``--json``, one JSON object last).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EPILOG = """examples:
  python -m ser_tune.launch                                   # quickstart on the embedded synthetic corpus
  python -m ser_tune.launch experiments/emodb.yaml --strategies tpe gp --trials 15
  python -m ser_tune.launch experiments/emodb.yaml --address auto   # on a running Ray cluster
  python -m ser_tune.launch experiments/emodb.yaml --resume         # continue the latest interrupted study
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ser_tune.launch", description=__doc__.splitlines()[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="experiment YAML (default: the quickstart)")
    p.add_argument("--strategies", nargs="+", metavar="NAME", help="subset/override: tpe gp skopt grid random")
    p.add_argument("--trials", type=int, help="trial budget per strategy")
    p.add_argument("--minutes", type=float, help="optional time budget per strategy")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs each trial gets (torch threads follow)")
    p.add_argument("--concurrency", type=int, help="max concurrent trials per strategy")
    p.add_argument("--address", help="join a running Ray cluster: 'auto' or HOST:PORT")
    p.add_argument("--storage", help="folder of study folders (shared by every node on a cluster)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="STUDY_DIR",
                   help="continue an interrupted study (default: the latest of this experiment)")
    p.add_argument("--seed", type=int)
    p.add_argument("--ray-verbose", type=int, choices=(0, 1, 2), default=0,
                   help="Ray Tune's own trial tables (0: off, one line per finished trial instead; 1: status; "
                        "2: status and results)")
    p.add_argument("--json", action="store_true", help="end with one JSON object")
    return p.parse_args(argv)


def _fail(message: str) -> "NoReturn":  # noqa: F821
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def load(args):
    from .config import ConfigError, default_experiment, experiment_from_dict, load_experiment

    try:
        exp = load_experiment(args.config) if args.config else default_experiment()
        overrides = {}
        if args.strategies:
            overrides["strategies"] = args.strategies
        if args.trials is not None:
            overrides["budget.trials"] = args.trials
        if args.minutes is not None:
            overrides["budget.minutes"] = args.minutes
        if args.cpus_per_trial is not None:
            overrides["resources.cpus_per_trial"] = args.cpus_per_trial
        if args.concurrency is not None:
            overrides["concurrency"] = args.concurrency
        if args.storage:
            overrides["storage"] = args.storage
        if args.seed is not None:
            overrides["seed"] = args.seed
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
        _fail(str(exc))


class JoinError(RuntimeError):
    """The cluster named by --address (or RAY_ADDRESS) could not be joined."""


def start_ray(address: str | None, quiet: bool) -> tuple[float, float, str | None, int]:
    """Start a local Ray (dashboard on 127.0.0.1) or join a cluster; returns (total CPUs, largest node CPUs,
    dashboard URL, nodes)."""
    import ray

    if address is None:
        address = os.environ.get("RAY_ADDRESS") or None   # a `ray job submit` driver: join that cluster
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local Ray, dashboard on 127.0.0.1 only
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Keeping one checkpoint per trial forces an experiment snapshot per epoch; that is intended
    # (resume loses nothing), so Ray's warning about it is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Snapshot the experiment after every result, so a killed study resumes with every completed
    # trial recorded (trials keep their own epoch state in the study folder).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    kwargs = dict(log_to_driver=not quiet, configure_logging=True, logging_level="WARNING")
    if address:
        try:
            context = ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError) as exc:
            chain = f"{exc} {exc.__cause__}"
            hint = ("the cluster requires its auth token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH "
                    "(or RAY_AUTH_TOKEN) to the nodes' token") if "InvalidAuthToken" in chain \
                else str(exc).splitlines()[0]
            raise JoinError(f"cannot join the Ray cluster at {address}: {hint}") from None
    else:
        context = ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=True,
                           dashboard_host="127.0.0.1", **kwargs)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = [n.get("Resources", {}).get("CPU", 0.0) for n in nodes]
    url = getattr(context, "dashboard_url", None)
    return float(sum(cpus)), float(max(cpus) if cpus else 0), (f"http://{url}" if url else None), len(nodes)


def main(argv=None) -> int:
    args = parse_args(argv)
    exp = load(args)
    from .data import DataError
    from .encoders import EncoderError
    from .study import Study, StudyError

    json_out = _keep_stdout_for_json() if args.json else None
    out = sys.stderr if args.json else sys.stdout
    study = None

    def fail_before_trials(message: str):
        # nothing is computed yet: a new study's folder goes, so --resume never picks up an empty one
        if study is not None and not args.resume:
            study.discard_if_unstarted()
        _fail(message)

    try:
        if args.resume:
            study = Study.latest(exp) if args.resume == "latest" else Study.open(Path(args.resume), exp)
        else:
            study = Study.create(exp)
        print(f"study folder: {study.dir}", file=out, flush=True)
        study.prepare_data()
    except (DataError, StudyError, ValueError) as exc:
        fail_before_trials(str(exc))

    try:
        total_cpus, node_cpus, dashboard, nodes = start_ray(args.address, quiet=args.json)
    except JoinError as exc:
        fail_before_trials(str(exc))
    if exp.resources.cpus_per_trial > node_cpus:
        fail_before_trials(f"resources.cpus_per_trial = {exp.resources.cpus_per_trial:g} but the largest node has "
              f"{node_cpus:g} CPUs; no trial could ever start")
    if dashboard:
        print(f"Ray dashboard: {dashboard}", file=out, flush=True)
    study.meta["machine"]["nodes"] = nodes
    study.meta["machine"]["cluster_cpus"] = total_cpus
    try:
        seconds = study.encode_once()
    except (EncoderError, DataError) as exc:
        fail_before_trials(str(exc))
    print(f"shared encode (frozen features, once per study): {seconds:.1f} s", file=out, flush=True)

    verbose = 0 if args.json else args.ray_verbose
    for strategy in exp.strategies:
        if study.meta["strategies"].get(strategy, {}).get("status") == "done":
            print(f"strategy {strategy}: already done, skipped", file=out, flush=True)
            continue
        print(f"strategy {strategy}: {exp.budget.trials} trials", file=out, flush=True)
        study.run_strategy(strategy, cpus_available=total_cpus, verbose=verbose, progress=verbose == 0)

    import time

    study.meta["finished_at"] = time.time()
    study.save_meta()
    study.export_best()
    if exp.crosscorpus:
        from .crosscorpus import CrossCorpusError, run_for_study

        try:
            run_for_study(study.dir, exp.crosscorpus, seed=exp.seed)
            print(f"cross-corpus evaluation: {study.dir / 'crosscorpus.md'}", file=out)
        except (CrossCorpusError, DataError, EncoderError) as exc:  # the study's own results stay intact
            print(f"cross-corpus evaluation skipped: {exc}", file=out)
    from .results import summary_json, write_report

    report = write_report(study.dir)
    summary = summary_json([study.dir])
    print_comparison(summary, out)
    print(f"report: {report}", file=out)
    if json_out is not None:
        json_out.write(json.dumps(launch_json(summary, study), default=str) + "\n")
        json_out.flush()
    return 0


def _keep_stdout_for_json():
    """With --json, stdout carries one JSON object and nothing else: file descriptor 1 is pointed at
    stderr for the rest of the process, so Ray (its C++ parts, the processes it starts, late log
    lines from a lost node) cannot print after the object; the object goes to a duplicate of the
    real stdout. Only for the command line (``python -m``), which exits right after."""
    sys.stdout.flush()
    real = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return real


def launch_json(summary: dict, study) -> dict:
    """The --json object: per strategy trials, best_val_bca, best_config, seconds_to_0.9, and study_dir."""
    entry = summary["studies"][0]
    strategies = {}
    for name, s in entry["strategies"].items():
        row = dict(s)
        row["seconds_to_0.9"] = (s.get("seconds_to") or {}).get("0.9")
        strategies[name] = row
    return {"study_dir": str(study.dir), "strategies": strategies,
            "best_model": study.meta.get("best_model", {}).get("path")}


def print_comparison(summary: dict, out) -> None:
    entry = summary["studies"][0]
    print("\nstrategy comparison (validation speakers guide the search; test speakers never seen by it):", file=out)
    metric = entry.get("metric", "val_bca")
    test_key = "test_" + metric[4:]
    thresholds = entry.get("thresholds") or [0.9]
    top = max(thresholds)
    header = f"{'strategy':10} {'trials':>6} {'best ' + metric:>14} {test_key:>9}  time to {top:g} (wall-clock)"
    print(header, file=out)
    for name, s in entry["strategies"].items():
        val = s.get("best_" + metric)
        test = s.get(test_key)
        t = (s.get("seconds_to") or {}).get(f"{top:g}")
        reached = f"{t:.1f} s" if t is not None else f"not reached in {s.get('trials')} trials"
        print(f"{name:10} {s.get('trials', 0):>6} {_fmt(val):>14} {_fmt(test):>9}  {reached}", file=out)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
