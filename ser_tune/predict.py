"""``python -m ser_tune.predict MODEL_DIR FILE.wav [FILE.wav ...]``: the emotion of each file.

``--max-latency MS_PER_S`` with a study's exported Pareto front (``STUDY/front`` or the study folder)
as MODEL_DIR: the front model with the best validation metric among those whose measured latency is
at most MS_PER_S milliseconds per second of audio (front.json lists them, and names the latency its
front was searched on: the wall-clock ``latency_ms_per_s`` or the CPU-time ``latency_cpu_ms_per_s``)
predicts.

Any sample rate or channel count. Files are predicted together: a model trained on speaker-normalised
features takes its statistics from them (``--speakers`` says whose each file is). A file the corpus loader would skip (missing, unreadable,
truncated, shorter than data.MIN_DURATION, silent, of an audio format that is not read) gets an
error line naming it and the reason; the other files are still predicted (exit code 1 when any
file failed).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def predict_files(model, paths, speakers=None) -> list[dict]:
    """One row per file: its prediction, or the reason it was refused. The files that decode are
    predicted together, so a model trained on speaker-normalised features uses their own statistics
    (per speaker when ``speakers`` names each file's; else as one speaker)."""
    from .data import MIN_DURATION, AudioError, audio_info, load_audio

    rows, waves, who = [], [], []
    for i, path in enumerate(paths):
        try:
            audio_info(path, scan_samples=False, min_duration=MIN_DURATION)   # the loaders' header checks
            waves.append(load_audio(path, model.sample_rate))                  # and their sample checks
        except AudioError as exc:
            rows.append({"file": str(path), "error": str(exc)})
            continue
        who.append(speakers[i] if speakers is not None else "speaker")
        rows.append({"file": str(path)})
    predicted = iter(model.predict_many(waves, who) if waves else [])
    return [row if "error" in row else {**row, **next(predicted)} for row in rows]


def provenance_warnings(meta: dict, asked: list[str] | None = None) -> list[str]:
    """What the user should know before trusting the predictions: a model trained on the synthetic stand-in
    (or with a tiny random encoder), and emotions asked about (``asked``) that the model cannot name, or names
    it was trained on that were not asked about."""
    warnings = []
    source = meta.get("source") or {}
    encoder = str(meta.get("encoder") or "")
    if source.get("name") == "synthetic":
        tiny = f" with the tiny random encoder {encoder}" if encoder.startswith("tiny-") else ""
        warnings.append(f"this model was trained on the synthetic stand-in corpus (generated voices, not recorded "
                        f"speech){tiny}: a smoke test, its predictions on real speech mean nothing; train on a real "
                        f"corpus (e.g. python -m ser_tune.launch experiments/emodb.yaml)")
    labels = [str(label) for label in meta.get("labels") or []]
    if asked:
        missing = [label for label in asked if label not in labels]
        extra = [label for label in labels if label not in asked]
        corpus = f" on {source['name']}" if source.get("name") else ""
        if missing:
            warnings.append(f"the model was trained{corpus} on {', '.join(labels)}; it can never answer "
                            f"{', '.join(missing)}")
        if extra:
            warnings.append(f"the model also names {', '.join(extra)}, which were not asked about")
    return warnings


def choose_front_model(folder, max_latency: float) -> tuple[Path, dict]:
    """The folder and front.json entry (with ``chosen_by``: the latency column compared) of the most accurate
    front model within ``max_latency`` ms per second of audio; a ValueError naming the folder when there is
    no front or none is fast enough."""
    from .study.folder import FRONT_DIR, FRONT_FILE

    folder = Path(folder)
    listing = folder / FRONT_FILE if (folder / FRONT_FILE).is_file() else folder / FRONT_DIR / FRONT_FILE
    if not listing.is_file():
        raise ValueError(f"{folder}: --max-latency needs a study's exported front (STUDY/front/{FRONT_FILE}); "
                         "there is none (its study measured no latency, or has not finished)")
    front = json.loads(listing.read_text())
    clock = front.get("latency", "latency_ms_per_s")   # the latency the front was searched on
    timed = [m for m in front.get("models", []) if m.get(clock) is not None]
    fast = [m for m in timed if m[clock] <= max_latency]
    if not fast:
        quickest = min(timed, key=lambda m: m[clock], default=None)
        fastest = (f"the fastest, trial {quickest['trial_id']}, takes {quickest[clock]:.1f} ms/s ({clock})"
                   if quickest else "none has a measured latency")
        raise ValueError(f"{listing}: no front model within {max_latency:g} ms per second of audio; {fastest}")
    best = max(fast, key=lambda m: m.get(front["metric"], float("-inf")))
    return listing.parent / best["path"], {**best, "chosen_by": clock}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ser_tune.predict", description=__doc__.splitlines()[0])
    p.add_argument("model_dir", help="an exported model folder (a study's best_model/ or train --export)")
    p.add_argument("files", nargs="+", help="audio files")
    p.add_argument("--speakers", nargs="+", metavar="SPEAKER",
                   help="each file's speaker, in order (for a model trained on speaker-normalised features: "
                        "statistics per speaker; default: all files are one speaker)")
    p.add_argument("--max-latency", type=float, metavar="MS_PER_S",
                   help="with a study's front (STUDY/front or STUDY): the most accurate front model whose latency "
                        "is at most MS_PER_S ms per second of audio")
    p.add_argument("--labels", nargs="+", metavar="EMOTION",
                   help="the emotions you want told apart: a warning names any the model was not trained on")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.speakers is not None and len(args.speakers) != len(args.files):
        p.error(f"--speakers: {len(args.speakers)} given for {len(args.files)} files; give one per file")
    from .encoders import EncoderError
    from .training.export import ModelFolderError, load_model
    from .training.trainable import set_threads

    set_threads(2)
    chosen = None
    try:
        if args.max_latency is not None:
            args.model_dir, chosen = choose_front_model(args.model_dir, args.max_latency)
            clock = chosen["chosen_by"]
            print(f"front model {chosen['trial_id']} ({chosen['strategy']}): {chosen[clock]:.1f} ms per second of "
                  f"audio ({clock})", file=sys.stderr)
        model = load_model(args.model_dir)
    except (ModelFolderError, EncoderError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    warnings = provenance_warnings(model.meta, args.labels)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    rows = predict_files(model, args.files, args.speakers)
    if args.json:
        print(json.dumps({"model": str(args.model_dir), "labels": model.labels, "predictions": rows,
                          "warnings": warnings, **({"front_model": chosen} if chosen else {})}))
    else:
        for row in rows:
            if "error" in row:
                print(f"{row['file']}: error: {row['error']}", file=sys.stderr)
                continue
            parts = []
            if "emotion" in row:
                top = sorted(row["probabilities"].items(), key=lambda kv: -kv[1])[:3]
                parts.append(f"{row['emotion']}  (" + ", ".join(f"{k} {v:.2f}" for k, v in top) + ")")
            if "dimensions" in row:
                parts.append("  ".join(f"{k} {v:.2f}" for k, v in row["dimensions"].items()))
            print(f"{row['file']}: " + "   ".join(parts))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
