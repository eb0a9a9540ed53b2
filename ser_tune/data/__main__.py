"""python -m ser_tune.data --corpus NAME --root DIR [--json] [--label-map VIEW] [--drop-labels A,B]
[--min-duration S]: summarise a corpus (clips, speakers, classes, skipped files and why, dropped classes)."""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from .audio import MIN_DURATION
from .corpus import CORPORA, load_corpus
from .errors import DataError

MAX_SKIPPED_SHOWN = 20


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # one "error:" line and exit 2, like a data error
        sys.stderr.write(f"error: {message}\n")
        sys.exit(2)


def parse_args(argv=None) -> argparse.Namespace:
    parser = _Parser(prog="python -m ser_tune.data", description="Summarise an emotional-speech corpus.")
    parser.add_argument("--corpus", required=True, choices=CORPORA)
    parser.add_argument("--root", required=True,
                        help="corpus folder (csv: the manifest file or its folder; synthetic: generated there if empty)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--label-map", default=None, help="label view, e.g. emodb7, iemocap4, native")
    parser.add_argument("--no-check-audio", action="store_true",
                        help="read headers only (skip the silent/NaN scan of every file's samples)")
    parser.add_argument("--drop-labels", default=None, metavar="A,B",
                        help="comma-separated classes (after the label view) to leave out")
    parser.add_argument("--min-duration", type=float, default=MIN_DURATION, metavar="S",
                        help=f"skip clips shorter than S seconds (default {MIN_DURATION})")
    parser.add_argument("--seed", type=int, default=None, help="synthetic corpus only: generation seed")
    return parser.parse_args(argv)


def format_summary(s: dict) -> str:
    lines = [f"corpus: {s['corpus']}  ({s['root']})"]
    if s.get("synthetic"):
        lines.append("NOTE: synthetic stand-in corpus (generated signals, not real speech)")
    genders = s.get("speaker_genders")
    gender_text = f"  ({', '.join(f'{k}: {v}' for k, v in genders.items())})" if genders else ""
    lines.append(f"files: {s['files']}   speakers: {s['speakers']}{gender_text}")
    lines.append("labels:")
    width = max(len(k) for k in s["labels"])
    lines += [f"  {label:<{width}}  {count:>6}  ({100 * count / s['files']:.1f}%)"
              for label, count in s["labels"].items()]
    d = s["duration"]
    lines.append(f"duration: {d['min']:.2f}-{d['max']:.2f} s (mean {d['mean']:.2f} s)")
    lines.append("sample rates: " + ", ".join(f"{r} Hz" for r in s["sample_rates"]))
    if s.get("dropped_labels"):
        lines.append("dropped labels: " + ", ".join(f"{k} ({v} clips)" for k, v in s["dropped_labels"].items()))
    skipped = s["skipped"]
    lines.append(f"skipped: {len(skipped)}")
    if len(skipped) > MAX_SKIPPED_SHOWN:
        lines += [f"  {n:>6} x {reason}" for reason, n in Counter(x["reason"] for x in skipped).most_common()]
        lines.append(f"  first {MAX_SKIPPED_SHOWN}:")
    lines += [f"  {x['path']}: {x['reason']}" for x in skipped[:MAX_SKIPPED_SHOWN]]
    if len(skipped) > MAX_SKIPPED_SHOWN:
        lines.append(f"  ... {len(skipped) - MAX_SKIPPED_SHOWN} more (--json lists all)")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    options = {}
    if args.seed is not None:
        if args.corpus != "synthetic":
            sys.stderr.write("error: --seed applies to --corpus synthetic only\n")
            return 2
        options["seed"] = args.seed
    try:
        drop = [x.strip() for x in args.drop_labels.split(",") if x.strip()] if args.drop_labels else None
        corpus = load_corpus(args.corpus, args.root, label_map=args.label_map, check_audio=not args.no_check_audio,
                             min_duration=args.min_duration, drop_labels=drop, **options)
    except DataError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    summary = corpus.summary()
    try:
        print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    except BrokenPipeError:   # e.g. piped into `head`
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
