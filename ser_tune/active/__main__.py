"""``python -m ser_tune.active CONFIG [--json] [--storage DIR] [--cpus-per-trial N]``: an active-learning study.

Runs acquisitions x TAPT on/off x seeds (plus a full-label reference) as one Ray Tune grid, one
report per round; writes rounds.csv, active_table.csv, plots and active.md into the study folder.
Prints the study folder first, the table of test BCA and time at 10 %, 20 % and 100 % labels last
(with ``--json``, one JSON object as the last stdout line).
"""
from __future__ import annotations

import argparse

from ..study.session import add_common_arguments, fail, prepare_for

EPILOG = """examples:
  python -m ser_tune.active experiments/active_quickstart.yaml
  python -m ser_tune.active experiments/active_emodb.yaml --cpus-per-trial 1 --json
"""


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
        fail(str(exc))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ser_tune.active", description=__doc__.splitlines()[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="active-learning experiment YAML (see experiments/active_*.yaml)")
    add_common_arguments(p)
    args = p.parse_args(argv)
    prepare_for(args.address)   # before anything imports Ray
    cfg = load(args)
    from ..study.cli import finish_cli, run_study_cli
    from .report import table_text, write_results
    from .study import ActiveStudy

    active, exp = cfg.active, cfg.experiment
    outcome = run_study_cli(ActiveStudy(cfg), args, name=exp.name, storage=exp.storage, resources=exp.resources)
    if outcome.interrupted:
        return finish_cli(outcome, {"study_dir": str(outcome.folder.dir), "status": "interrupted"})
    summary = write_results(outcome.folder)
    print(f"trials: {len(active.trial_acquisitions)} acquisitions x {len(active.tapt)} TAPT x "
          f"{len(active.seeds)} seeds, {len(active.fractions)} rounds each")
    print("\ntest BCA (test speakers) and cumulative trial seconds at 10 %, 20 % and 100 % of the pool labelled\n"
          "(each at the nearest scheduled fraction at or above, in brackets when it differs):")
    print(table_text(summary["table"]))
    if summary["errors"]:
        print(f"{summary['errors']} trial(s) failed; see {summary['report']}")
    print(f"report: {summary['report']}")
    print(f"study folder: {outcome.folder.dir}")
    return finish_cli(outcome, summary)


if __name__ == "__main__":
    from ..study.session import exit_now

    exit_now(main())
