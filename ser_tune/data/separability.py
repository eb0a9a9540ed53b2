"""Sanity check of a corpus's difficulty: how well simple features separate emotions across unseen speakers.

Features are each clip's mean log-mel spectrum (plus its standard deviation over time); a
logistic regression is trained on some speakers and scored (balanced accuracy) on held-out ones,
over leave-speakers-out folds. Used to check that the synthetic corpus is learnable but not trivial:

    python -m ser_tune.data.separability --corpus synthetic --root /tmp/synthetic
"""
from __future__ import annotations

import argparse
import json

import numpy as np
from scipy.signal import stft

from .audio import load_audio
from .corpus import Corpus, load_corpus
from .splits import leave_speakers_out_folds


def logmel_stats(wave: np.ndarray, sample_rate: int, n_mels: int = 40) -> np.ndarray:
    from transformers.audio_utils import mel_filter_bank   # HTK-scale triangles, unnormalised

    n_fft = int(0.025 * sample_rate)
    _, _, spec = stft(wave, fs=sample_rate, nperseg=n_fft, noverlap=n_fft - int(0.01 * sample_rate))
    bank = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=0,
                           max_frequency=sample_rate / 2, sampling_rate=sample_rate, norm=None, mel_scale="htk")
    mel = np.log(bank.T @ np.abs(spec) ** 2 + 1e-10)
    return np.concatenate([mel.mean(axis=1), mel.std(axis=1)])


def separability(corpus: Corpus, *, sample_rate: int = 16000, k: int = 4, seed: int = 0,
                 mean_only: bool = False) -> dict:
    """Balanced accuracy of a logistic regression on log-mel statistics over speaker folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    table = corpus.table
    features = np.stack([logmel_stats(load_audio(p, sample_rate), sample_rate) for p in table["path"]])
    if mean_only:
        features = features[:, : features.shape[1] // 2]
    labels = table["label"].to_numpy()
    scores = []
    for split in leave_speakers_out_folds(table, k=k, seed=seed, val_speakers=0):
        train = (split.assignment != "test").to_numpy()
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
        model.fit(features[train], labels[train])
        scores.append(balanced_accuracy_score(labels[~train], model.predict(features[~train])))
    return {"bca_mean": float(np.mean(scores)), "bca_per_fold": [float(s) for s in scores],
            "chance": 1.0 / table["label"].nunique(), "folds": k,
            "features": "mean log-mel" if mean_only else "mean+std log-mel"}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="synthetic")
    parser.add_argument("--root", required=True)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mean-only", action="store_true", help="mean log-mel only (no std over time)")
    args = parser.parse_args(argv)
    corpus = load_corpus(args.corpus, args.root)
    print(json.dumps(separability(corpus, k=args.folds, seed=args.seed, mean_only=args.mean_only), indent=1))


if __name__ == "__main__":
    main()
