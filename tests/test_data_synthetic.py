"""The synthetic stand-in corpus: deterministic, EmoDB-named, learnable across speakers but not trivial."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from ser_tune.data import EMOTIONS, CorpusError, DataError, generate_synthetic, load_corpus
from ser_tune.data.corpora.emodb import SPEAKER_GENDER


def test_default_corpus_shape(synthetic_corpus):
    t = synthetic_corpus.table
    assert synthetic_corpus.synthetic is True and synthetic_corpus.name == "synthetic"
    assert set(t["corpus"]) == {"synthetic"}
    assert synthetic_corpus.labels == sorted(EMOTIONS)
    assert t["speaker"].nunique() == 8 and len(t) == 8 * 7 * 4
    assert t.groupby("speaker")["gender"].first().value_counts().to_dict() == {"f": 4, "m": 4}
    assert not set(t["speaker"]) & set(SPEAKER_GENDER)       # never EmoDB's speaker ids
    assert set(t["sample_rate"]) == {16000}
    assert t["duration"].between(1.0, 2.0).all()
    assert synthetic_corpus.skipped == []
    for column in ("arousal", "valence", "dominance"):
        assert t[column].between(1, 5).all() and t[column].notna().all()
    assert set(t["intensity"]) == {"normal", "strong"}


def test_dimensions_follow_emotions(synthetic_corpus):
    means = synthetic_corpus.table.groupby("label")[["arousal", "valence", "dominance"]].mean()
    assert means.loc["anger", "arousal"] > means.loc["neutral", "arousal"] > means.loc["sadness", "arousal"]
    assert means.loc["happiness", "valence"] > means.loc["neutral", "valence"] > means.loc["anger", "valence"]
    assert means.loc["anger", "dominance"] > means.loc["fear", "dominance"]


def test_loads_through_the_emodb_loader(synthetic_root, synthetic_corpus):
    as_emodb = load_corpus("emodb", synthetic_root)
    assert len(as_emodb.table) == len(synthetic_corpus.table)
    assert (as_emodb.table["label"] == synthetic_corpus.table["label"]).all()
    names = synthetic_corpus.table["path"].str.rsplit("/", n=1).str[-1]
    assert names.str.fullmatch(r"\d{2}[ab]\d{2}[WLEAFTN][a-z]\.wav").all()
    anger = synthetic_corpus.table[names.str[5] == "W"]
    assert set(anger["label"]) == {"anger"}


def test_same_seed_same_files(tmp_path, synthetic_root):
    other = generate_synthetic(tmp_path / "again", seed=0)
    names = [p.name for p in sorted(synthetic_root.glob("*.wav"))[::50]]
    assert len(names) >= 4
    for name in names:
        a, sr_a = sf.read(str(synthetic_root / name))
        b, sr_b = sf.read(str(other / name))
        assert sr_a == sr_b and np.array_equal(a, b)
    assert (pd.read_csv(synthetic_root / "labels.csv")).equals(pd.read_csv(other / "labels.csv"))


def test_different_seed_different_data(tmp_path, synthetic_root):
    other = generate_synthetic(tmp_path / "seed1", seed=1, n_speakers=2, clips_per_cell=1)
    same_names = sorted(p.name for p in other.glob("*.wav"))
    a, _ = sf.read(str(synthetic_root / same_names[0]))
    b, _ = sf.read(str(other / same_names[0]))
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_options_and_idempotence(tmp_path):
    root = tmp_path / "small"
    corpus = load_corpus("synthetic", root, n_speakers=3, clips_per_cell=2, sample_rate=8000,
                         duration_range=(0.5, 0.8))
    assert len(corpus.table) == 3 * 7 * 2 and set(corpus.table["sample_rate"]) == {8000}
    assert corpus.table["duration"].between(0.5, 0.8).all()
    params = json.loads((root / "synthetic.json").read_text())
    assert params["n_speakers"] == 3 and params["files"] == 42
    first = sorted(root.glob("*.wav"))[0]
    mtime = first.stat().st_mtime_ns
    again = load_corpus("synthetic", root)                       # reads, does not regenerate
    assert len(again.table) == 42 and first.stat().st_mtime_ns == mtime
    with pytest.raises(CorpusError, match="n_speakers=3, not 8"):
        load_corpus("synthetic", root, n_speakers=8)


def test_refuses_foreign_wavs_and_bad_options(tmp_path):
    (tmp_path / "x").mkdir()
    sf.write(str(tmp_path / "x" / "03a01Wa.wav"), np.ones(100) * 0.1, 16000)
    with pytest.raises(CorpusError, match="not a generated synthetic corpus"):
        generate_synthetic(tmp_path / "x")
    with pytest.raises(DataError, match="n_speakers"):
        generate_synthetic(tmp_path / "y", n_speakers=0)
    with pytest.raises(DataError, match="unknown synthetic-corpus option 'speakers'"):
        load_corpus("synthetic", tmp_path / "z", speakers=3)


def test_emotions_separable_across_held_out_speakers(synthetic_corpus):
    """Mean+std log-mel + logistic regression over speaker folds: well above chance, not perfect."""
    from ser_tune.data.separability import separability

    result = separability(synthetic_corpus, k=4)
    assert result["chance"] == pytest.approx(1 / 7)
    assert 0.5 < result["bca_mean"] < 0.98, result
