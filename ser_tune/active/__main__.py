"""``python -m ser_tune.active CONFIG [--json] [--storage DIR] [--cpus-per-trial N]``: an active-learning study.

Runs acquisitions x TAPT on/off x seeds (plus a full-label reference) as one Ray Tune grid, one
report per round; writes rounds.csv, active_table.csv, plots and active.md into the study folder.
Prints the study folder first, the table of test BCA and time at 10 %, 20 % and 100 % labels last
(with ``--json``, one JSON object as the last stdout line).
"""
from __future__ import annotations

import argparse
import json
import sys

EPILOG = """examples:
  python -m ser_tune.active experiments/active_quickstart.yaml
  python -m ser_tune.active experiments/active_emodb.yaml --cpus-per-trial 1 --json
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ser_tune.active", description=__doc__.splitlines()[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="active-learning experiment YAML (see experiments/active_*.yaml)")
    p.add_argument("--storage", help="folder of study folders")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs each trial gets (torch threads follow)")
    p.add_argument("--address", help="join a running Ray cluster: 'auto' or HOST:PORT")
    p.add_argument("--resume", nargs="?", const="latest", metavar="STUDY_DIR",
                   help="continue an interrupted study (default: the latest of this experiment): finished "
                        "trials are kept, unfinished ones run again")
    p.add_argument("--json", action="store_true", help="end with one JSON object")
    return p.parse_args(argv)


def _fail(message: str) -> "NoReturn":  # noqa: F821
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def load(args):
    from ..config import ConfigError
    from .config import active_from_dict, load_active

    try:
        cfg = load_active(args.config)
        if args.storage is None and args.cpus_per_trial is None:
            return cfg
        raw = cfg.to_dict()
        raw.pop("source", None)
        raw["active"] = {k: v for k, v in raw["active"].items() if k != "tapt_settings" or v}
        if args.storage is not None:
            raw["storage"] = args.storage
        if args.cpus_per_trial is not None:
            raw["resources"]["cpus_per_trial"] = args.cpus_per_trial
        return active_from_dict(raw, source=cfg.experiment.source)
    except (ConfigError, ValueError) as exc:
        _fail(str(exc))


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load(args)
    from ..data import DataError
    from ..encoders import EncoderError
    from ..launch import JoinError, _keep_stdout_for_json, start_ray
    from ..study import StudyError
    from .report import table_text, write_results
    from .study import ActiveStudy, ActiveStudyError

    json_out = _keep_stdout_for_json() if args.json else None
    out = sys.stderr if args.json else sys.stdout
    study = None

    def fail_before_trials(message: str):
        # nothing is computed yet: a new study's folder goes, so --resume never picks up an empty one
        if study is not None and not args.resume:
            study.study.discard_if_unstarted()
        _fail(message)

    try:
        study = ActiveStudy.resume(cfg, args.resume) if args.resume else ActiveStudy.create(cfg)
        print(f"study folder: {study.dir}", file=out, flush=True)
        study.prepare_data()
    except (DataError, StudyError, ActiveStudyError, ValueError) as exc:
        fail_before_trials(str(exc))
    try:
        total_cpus, node_cpus, dashboard, nodes = start_ray(args.address, quiet=args.json)
    except JoinError as exc:
        fail_before_trials(str(exc))
    if cfg.experiment.resources.cpus_per_trial > node_cpus:
        fail_before_trials(f"resources.cpus_per_trial = {cfg.experiment.resources.cpus_per_trial:g} but the largest node has "
              f"{node_cpus:g} CPUs; no trial could ever start")
    if dashboard:
        print(f"Ray dashboard: {dashboard}", file=out, flush=True)
    study.meta["machine"].update({"nodes": nodes, "cluster_cpus": total_cpus})
    try:
        tapt = study.run_tapt()
        if tapt:
            print(f"TAPT: {tapt['steps']} steps on {tapt['clips']} clips, {tapt['seconds']:.1f} s"
                  f"{' (reused)' if tapt['reused'] else ''} -> {tapt['spec']}", file=out, flush=True)
        seconds = study.encode_once()
    except (EncoderError, DataError, ValueError, OSError) as exc:
        fail_before_trials(str(exc))
    print(f"shared encode (frozen features, once per encoder): {sum(seconds.values()):.1f} s", file=out, flush=True)
    print(f"trials: {len(cfg.active.trial_acquisitions)} acquisitions x {len(cfg.active.tapt)} TAPT x "
          f"{len(cfg.active.seeds)} seeds, {len(cfg.active.fractions)} rounds each", file=out, flush=True)
    rounds = study.run_trials(verbose=0)   # a line per finished trial; Ray's tables are long
    summary = write_results(study.dir, rounds, study.meta)
    print("\ntest BCA (test speakers) and cumulative trial seconds at 10 %, 20 % and 100 % of the pool labelled\n"
          "(each at the nearest scheduled fraction at or above, in brackets when it differs):", file=out)
    print(table_text(summary["table"]), file=out)
    if summary["errors"]:
        print(f"{summary['errors']} trial(s) failed; see {summary['report']}", file=out)
    print(f"report: {summary['report']}", file=out)
    print(f"study folder: {study.dir}", file=out)
    if json_out is not None:
        json_out.write(json.dumps(summary, default=str) + "\n")
        json_out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
