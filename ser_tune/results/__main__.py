"""python -m ser_tune.results STUDY_DIR [STUDY_DIR ...] [--threshold 0.9 ...] [--json] [--out DIR]"""
from __future__ import annotations

import argparse
import json
import sys

from .report import write_report
from ..study.folder import StudyFormatError
from .tables import summary_json


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ser_tune.results",
        description="Compare the search strategies of one or more ser_tune study folders.")
    parser.add_argument("study_dirs", nargs="+", metavar="STUDY_DIR")
    parser.add_argument("--threshold", type=float, action="append", dest="thresholds", metavar="T",
                        help="validation threshold to time (repeatable; default: each study's own, "
                             "else 0.8 and 0.9)")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as JSON on stdout and write no files")
    parser.add_argument("--out", help="folder for report.md, summary.json and plots/ "
                                      "(default: the first study's folder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.json:
            json.dump(summary_json(args.study_dirs, args.thresholds), sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            path = write_report(args.study_dirs[0], thresholds=args.thresholds,
                                others=args.study_dirs[1:], out_dir=args.out)
            from ..launch import print_comparison   # the launcher's table (a command line beside this one)

            summary = json.loads((path.parent / "summary.json").read_text())
            for entry in summary["studies"]:   # each study's comparison, as the launcher prints it
                if len(summary["studies"]) > 1:
                    print(f"\n{entry['name']}:")
                print_comparison({"studies": [entry]})
            print(f"report: {path}")
    except StudyFormatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
