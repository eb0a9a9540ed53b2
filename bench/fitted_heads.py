"""The fitted heads against the linear probe outside any search: which model a study's space should hold.

    python bench/fitted_heads.py --corpus emodb --root ../shared/data/emodb \
        --encoder hf:../shared/models/whisper-base-encoder [--max-length 3.0] [--cache DIR] [--out FILE]

Every speaker is tested once (5 outer speaker folds, ``data.speaker_folds`` with seed 0); inside each, a
model's setting (the probe's layer, C and normalisation; a fitted head's C or shrinkage) is chosen by mean
BCA over 4 speaker folds of the other speakers, refit on all of them and scored once on the test speakers.
The models read the frozen encoder's cached pooled statistics (the study's shared encode, ``--cache``) and
are the code a trial runs (``training.fitted.fit_head``); the probe is the study's (``training.probe``).
Printed and written: each model's test BCA per fold, mean ± SD, and the paired gain over the probe.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import Run, print_table  # noqa: E402

OUTER, INNER, SEED = 5, 4, 0
C_GRID = (1e-4, 1e-3, 1e-2, 0.1, 1.0)          # the default experiments' logreg C range, a point a decade
SHRINKAGE_GRID = (0.1, 0.3, 0.5, 0.7, 0.9)     # lda shrinkage over its range
# name -> (normalisation, pooling, head, setting name, grid): every layer's statistics side by side
MODELS = {
    "logreg, meanstd of all layers, speaker": ("speaker", "meanstd", "logreg", "C", C_GRID),
    "lda, mean of all layers, none": ("none", "mean", "lda", "shrinkage", SHRINKAGE_GRID),
    "lda, mean of all layers, speaker": ("speaker", "mean", "lda", "shrinkage", SHRINKAGE_GRID),
    "lda, meanstd of all layers, speaker": ("speaker", "meanstd", "lda", "shrinkage", SHRINKAGE_GRID),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="emodb")
    p.add_argument("--root", required=True)
    p.add_argument("--encoder", required=True)
    p.add_argument("--max-length", type=float, default=None, help="seconds of each clip encoded (the study's)")
    p.add_argument("--cache", default="studies/_feature_cache", help="feature cache folder (a study storage's)")
    p.add_argument("--out", help="JSON output (default bench/results/fitted_heads_<corpus>.json)")
    return p.parse_args(argv)


def features(args) -> tuple:
    """(corpus table, labels as indices, pooled mean (N, L+1, D), pooled std) from the shared encode's cache
    (encoded there first when it is not)."""
    from ser_tune.data import load_corpus
    from ser_tune.encoders import load_encoder, resolve_spec, spec_fingerprint
    from ser_tune.encoders.cache import FeatureCache, effective_max_length
    from ser_tune.study.prepare import encode_once

    table = load_corpus(args.corpus, args.root).table
    spec = resolve_spec(args.encoder)
    encode_once(table, spec, Path(args.cache), [args.max_length], [])
    cache = FeatureCache(args.cache, spec, spec_fingerprint(spec), lambda: load_encoder(spec))
    max_length = effective_max_length(args.max_length, table["duration"].to_numpy(float))
    feats = cache.get([str(p) for p in table["path"]], None, max_length)   # a hit: encode_once wrote it
    labels = sorted(table["label"].unique())
    return table, table["label"].map(labels.index).to_numpy(), feats.pooled, feats.pooled_std


def normalised(kind: str, pooled: np.ndarray, speakers) -> np.ndarray:
    from ser_tune.training.normalize import FeatureNorm

    norm = FeatureNorm.fit(kind, pooled, speakers=speakers, rows=np.arange(len(pooled)))
    return pooled if norm is None else norm.apply(pooled, np.arange(len(pooled)))


def fitted_fold(x, y, train, test, inner, head: str, name: str, grid) -> dict:
    from sklearn.metrics import balanced_accuracy_score

    from ser_tune.training.fitted import fit_head

    def fit(rows, value):
        return fit_head(head, x[rows], y[rows], **{"C": 1.0, "shrinkage": 0.5, name: value}, seed=SEED,
                        class_weighted=True)

    scores = {v: np.mean([balanced_accuracy_score(y[val], fit(tr, v).predict(x[val])) for tr, val in inner])
              for v in grid}
    best = max(scores, key=scores.get)
    return {name: best, "cv_bca": float(scores[best]),
            "test_bca": float(balanced_accuracy_score(y[test], fit(train, best).predict(x[test])))}


def probe_fold(pooled: dict, y, train, test, inner) -> dict:
    from ser_tune.training.probe import choose_normalization, linear_probe

    by_kind = {k: [linear_probe(p, y, inner, train=train, test=test, seed=SEED).to_dict()] for k, p in pooled.items()}
    return choose_normalization(by_kind)[0]


def run(args) -> dict:
    from ser_tune.data import speaker_folds

    table, y, mean, std = features(args)
    speakers = table["speaker"].astype(str).to_numpy()
    probe_inputs = {k: normalised(k, mean, speakers) for k in ("none", "speaker")}
    inputs = {(k, pooling): normalised(k, np.concatenate([mean, std], -1) if pooling == "meanstd" else mean,
                                       speakers).reshape(len(y), -1)
              for k in ("none", "speaker") for pooling in ("mean", "meanstd")}
    folds = {name: [] for name in ["probe", *MODELS]}
    for f, test_mask in enumerate(speaker_folds(table, OUTER, seed=SEED)):
        train, test = np.flatnonzero(~test_mask), np.flatnonzero(test_mask)
        inner = [(np.flatnonzero(~test_mask & ~m), np.flatnonzero(m))
                 for m in speaker_folds(table, INNER, seed=SEED, rows=~test_mask)]
        start = time.perf_counter()
        folds["probe"].append(probe_fold(probe_inputs, y, train, test, inner))
        for name, (kind, pooling, head, setting, grid) in MODELS.items():
            folds[name].append(fitted_fold(inputs[(kind, pooling)], y, train, test, inner, head, setting, grid))
        print(f"fold {f}: " + ", ".join(f"{n} {v[-1]['test_bca']:.3f}" for n, v in folds.items())
              + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    probe = np.array([r["test_bca"] for r in folds["probe"]])
    summary = {}
    for name, rows in folds.items():
        bca = np.array([r["test_bca"] for r in rows])
        gain = bca - probe
        summary[name] = {"folds": rows, "mean": float(bca.mean()), "sd": float(bca.std(ddof=1)),
                         "gain_over_probe": float(gain.mean()), "folds_above_probe": int((gain > 0).sum())}
    return {"corpus": args.corpus, "clips": len(y), "speakers": int(len(set(speakers))), "outer_folds": OUTER,
            "inner_folds": INNER, "models": summary}


def main(argv=None) -> None:
    args = parse_args(argv)
    record = Run(f"fitted_heads_{args.corpus}", argv)
    figures = run(args)
    print_table([{"model": n, "test BCA": f"{s['mean']:.3f} ± {s['sd']:.3f}",
                  "folds": " ".join(f"{r['test_bca']:.2f}" for r in s["folds"]),
                  "gain over the probe": f"{s['gain_over_probe']:+.3f} (> 0 on {s['folds_above_probe']} of {OUTER})"}
                 for n, s in figures["models"].items()], ["model", "test BCA", "folds", "gain over the probe"])
    record.finish(figures, args.out)


if __name__ == "__main__":
    main()
