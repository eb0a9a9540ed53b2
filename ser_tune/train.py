"""``python -m ser_tune.train``: one fine-tuning run outside any search.

Prints validation and test BCA, seconds spent loading, encoding and training, and cache hits;
``--export DIR`` saves the model in the folder format ``predict`` and ``crosscorpus`` read.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .training.settings import TrialSettings

# Every trial setting is a flag but seed and encoder, which --seed and --encoder (the run's own) set.
SETTING_FLAGS = [name for name in TrialSettings.field_names() if name not in ("seed", "encoder")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m ser_tune.train", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True, help="emodb ravdess cremad iemocap csv synthetic")
    p.add_argument("--root", help="corpus folder (synthetic: generated there if empty)")
    p.add_argument("--label-map", help="label view, e.g. emodb7 or iemocap4")
    p.add_argument("--encoder", default="tiny-whisper", help="hf:<id or folder>, speechbrain:<id or folder>, tiny-<family>")
    p.add_argument("--split", default="speaker", choices=["speaker", "random"],
                   help="speaker: speaker-independent (default); random: the paper's speaker-dependent 80/20")
    p.add_argument("--val-speakers", type=float, default=2)
    p.add_argument("--test-speakers", type=float, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default="studies/_feature_cache", help="feature cache folder")
    p.add_argument("--cpus", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--export", help="save the trained model to this folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    for name in SETTING_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), dest=f"set_{name}", metavar="VALUE",
                       help=f"trial setting {name} (default {getattr(TrialSettings, name)!r})")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from .data import DataError, load_corpus, make_split
    from .encoders import EncoderError
    from .training.finetune import FineTuner, TrialData, TrialError
    from .training.settings import SettingsError
    from .training.trainable import set_threads

    set_threads(args.cpus or os.cpu_count() or 1)
    values = {name: _parse(getattr(args, f"set_{name}")) for name in SETTING_FLAGS
              if getattr(args, f"set_{name}") is not None}
    values["seed"] = args.seed
    try:
        settings = TrialSettings.from_config(values)
        root = args.root or ("studies/_synthetic" if args.corpus == "synthetic" else None)
        if root is None:
            raise DataError("--root: the corpus folder is required")
        corpus = load_corpus(args.corpus, root, label_map=args.label_map)
        spec = {"kind": args.split, "seed": args.seed}
        if args.split == "speaker":
            spec.update(val_speakers=_count(args.val_speakers), test_speakers=_count(args.test_speakers))
        split = make_split(corpus.table, spec)
        data = TrialData.from_table(corpus.table, split.assignment)
        start = time.perf_counter()
        from .encoders import resolve_spec

        tuner = FineTuner(settings, data, encoder_spec=resolve_spec(args.encoder), cache_root=args.cache)
        result = tuner.run(report=None if args.json else _print_epoch)
        seconds = time.perf_counter() - start
        source = {"name": corpus.name, "root": str(corpus.root), "label_map": args.label_map, "options": {},
                  "train_speakers": split.speakers(corpus.table, "train")}
        exported = str(tuner.export(result, args.export, source=source)) if args.export else None
    except (DataError, EncoderError, SettingsError, TrialError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = {"val_bca": result.val_bca, "test_bca": result.test_bca, "best_epoch": result.best_epoch,
           "test_accuracy": result.test_accuracy, "seconds": seconds,
           "seconds_by_part": result.seconds, "cache": result.cache, "trainable_params": result.trainable_params,
           "split": split.kind, "speaker_dependent": split.speaker_dependent, "synthetic": corpus.synthetic,
           "labels": data.labels, "test_confusion": result.test_confusion, "exported": exported,
           "settings": settings.to_dict()}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"validation BCA {result.val_bca:.3f} (best epoch {result.best_epoch}), "
              f"test BCA {_f(result.test_bca)} on speakers never trained on"
              + (" [SPEAKER-DEPENDENT split]" if split.speaker_dependent else "")
              + (" [synthetic stand-in corpus]" if corpus.synthetic else ""))
        print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()) + f", total {seconds:.1f}")
        print(f"cache: {result.cache or 'not used (naive path)'}; trainable parameters {result.trainable_params:,}")
        if exported:
            print(f"model exported to {exported}")
    return 0


def _print_epoch(metrics: dict) -> None:
    print(f"epoch {metrics['epoch']}: train loss {metrics['train_loss']:.3f}, val BCA {metrics['epoch_val_bca']:.3f}"
          + (" (encoder training)" if metrics.get("encoder_trained") else ""), flush=True)


def _parse(text: str):
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def _count(value: float):
    return int(value) if float(value).is_integer() and value >= 1 else float(value)


def _f(v):
    return "-" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
