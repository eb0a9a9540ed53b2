"""``python -m ser_tune.adapt CONFIG [--json]``: two-stage adaptation (see experiments/twostage.yaml).

Prints the study folder first and the table of BCA on each corpus's test speakers after each stage
last (with ``--json``, the report as one JSON object).
"""
from __future__ import annotations

import argparse
import json

from ..study.session import add_common_arguments, fail, prepare_for


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ser_tune.adapt", description=__doc__.splitlines()[0])
    p.add_argument("config", help="two-stage configuration (YAML), e.g. experiments/twostage.yaml")
    add_common_arguments(p)
    args = p.parse_args(argv)
    prepare_for(args.address)   # before anything imports Ray
    from .config import AdaptError, config_from_dict, load_config

    try:
        cfg = load_config(args.config)
        if args.storage:
            cfg = config_from_dict({**cfg.to_dict(), "storage": args.storage}, source=cfg.path)
    except AdaptError as exc:
        fail(str(exc))
    from ..study.cli import finish_cli, run_study_cli
    from ..config import Resources
    from .study import RESULT_FILE, AdaptStudy, table

    resources = Resources(cpus_per_trial=args.cpus_per_trial or 1)
    outcome = run_study_cli(AdaptStudy(cfg), args, name=cfg.name, storage=cfg.storage, resources=resources)
    report = None
    if not outcome.interrupted:
        report = json.loads((outcome.folder.dir / RESULT_FILE).read_text())
        print(table(report["stages"]))
        print(f"written: {outcome.folder.dir / RESULT_FILE}")
    return finish_cli(outcome, report or {"study_dir": str(outcome.folder.dir), "status": "interrupted"})


if __name__ == "__main__":
    from ..study.session import exit_now

    exit_now(main())
