"""python -m ser_tune.crosscorpus: the command line (see the package's docstring)."""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..data import DataError
from ..data.corpus import CORPORA
from ..training.export import to_jsonable
from . import __doc__ as ABOUT
from .evaluate import RANDOM_SEEDS, evaluate_cross_corpus
from .report import markdown, without_predictions
from .targets import CrossCorpusError


class TargetAction(argparse.Action):
    """--corpus starts a target; --root / --label-map fill in the last one."""

    def __call__(self, parser, namespace, value, option_string=None):
        targets = getattr(namespace, "targets", None) or []
        if self.dest == "corpus":
            targets.append({"name": value, "root": None, "label_map": None})
        elif not targets:
            parser.error(f"{option_string} must follow a --corpus")
        else:
            field = "root" if self.dest == "root" else "label_map"
            if targets[-1][field] is not None:
                parser.error(f"{option_string} given twice for --corpus {targets[-1]['name']}")
            targets[-1][field] = value
        namespace.targets = targets


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ser_tune.crosscorpus", description=ABOUT.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  python -m ser_tune.crosscorpus studies/emodb-*/best_model "
                                       "--corpus ravdess --root data/ravdess --json")
    p.add_argument("model_dir", help="an exported model folder (a study's best_model/)")
    p.add_argument("--corpus", action=TargetAction, dest="corpus", metavar="NAME",
                   help=f"a target corpus ({', '.join(CORPORA)}); repeat for more targets")
    p.add_argument("--root", action=TargetAction, dest="root", metavar="DIR", help="the last --corpus's folder (or CSV)")
    p.add_argument("--label-map", action=TargetAction, dest="label_map", metavar="VIEW",
                   help="the last --corpus's label view (default: the corpus's own default)")
    p.add_argument("--source-corpus", metavar="NAME", help="corpus the frozen-feature baseline trains on "
                                                           "(default: the model's study corpus)")
    p.add_argument("--source-root", metavar="DIR")
    p.add_argument("--source-label-map", metavar="VIEW")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-seeds", type=int, default=RANDOM_SEEDS, help="seeds of the random-head baseline")
    p.add_argument("--cache", metavar="DIR", help="feature cache for the original encoder's features "
                                                  "(default: the model's study's, else a temporary folder)")
    p.add_argument("--out", metavar="DIR", help="write crosscorpus.json/.md, PNGs and prediction CSVs here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(targets=[])
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from ..encoders import EncoderError
    from ..training.export import ModelFolderError
    from ..training.settings import SettingsError
    from ..training.trainable import set_threads

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    if not args.targets:
        return fail("give at least one target: --corpus NAME --root DIR")
    for t in args.targets:
        if t["root"] is None:
            return fail(f"--corpus {t['name']}: no --root given")
    source = None
    if args.source_corpus or args.source_root:
        if not (args.source_corpus and args.source_root):
            return fail("--source-corpus and --source-root go together")
        source = {"name": args.source_corpus, "root": args.source_root, "label_map": args.source_label_map}
    set_threads(os.cpu_count() or 1)
    try:
        result = evaluate_cross_corpus(args.model_dir, args.targets, source=source, out_dir=args.out,
                                       seed=args.seed, random_seeds=args.random_seeds, cache_root=args.cache)
    except (CrossCorpusError, DataError, ModelFolderError, EncoderError, SettingsError, OSError) as err:
        return fail(str(err))
    if args.json:
        print(json.dumps(without_predictions(result), default=to_jsonable))
    else:
        print(markdown(result), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
