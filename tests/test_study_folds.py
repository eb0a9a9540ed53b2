"""Outer and inner speaker folds, the linear probe on them, and feature normalisation without labels."""
from __future__ import annotations

import numpy as np
import pytest

from ser_tune.data import make_split
from ser_tune.study.prepare import fold_plan
from ser_tune.training.finetune import FineTuner, TrialData
from ser_tune.training.normalize import FeatureNorm
from ser_tune.training.probe import linear_probe
from ser_tune.training.settings import TrialSettings

SPEC = {"kind": "speaker", "val_speakers": 1, "test_speakers": 2, "seed": 0}


def _speakers(table, assignment, part) -> set[str]:
    return set(table.loc[(assignment == part).to_numpy(), "speaker"].astype(str))


@pytest.fixture(scope="module")
def plan(synthetic_corpus):
    split = make_split(synthetic_corpus.table, SPEC)
    return fold_plan(synthetic_corpus, split, outer_folds=4, cv_folds=3, split_spec=SPEC, over_split=True)


def test_every_speaker_is_tested_once_and_folds_never_share_a_speaker(plan, synthetic_corpus):
    table = synthetic_corpus.table
    tested = [_speakers(table, outer, "test") for outer in plan.outer]
    assert sorted(s for fold in tested for s in fold) == sorted(table["speaker"].astype(str).unique())
    for f, outer in enumerate(plan.outer):
        parts = [_speakers(table, outer, p) for p in ("train", "val", "test")]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        inner = plan.inner(f)
        assert len(inner) == 3
        held = [_speakers(table, a, "val") for a in inner]
        # the inner folds partition the non-test speakers; the outer test speakers stay test
        assert sorted(s for h in held for s in h) == sorted(set(table["speaker"].astype(str)) - tested[f])
        for a in inner:
            assert _speakers(table, a, "test") == tested[f]
            assert not _speakers(table, a, "train") & (_speakers(table, a, "val") | tested[f])


def test_repeats_over_the_split_draw_other_inner_folds_reproducibly(plan):
    first, again, other = plan.inner(0, 0), plan.inner(0, 0), plan.inner(0, 1)
    assert all(a.equals(b) for a, b in zip(first, again))
    assert any(not a.equals(b) for a, b in zip(first, other))


def test_one_outer_fold_and_one_inner_fold_is_the_study_split(synthetic_corpus):
    split = make_split(synthetic_corpus.table, SPEC)
    plan = fold_plan(synthetic_corpus, split, outer_folds=1, cv_folds=1, split_spec=SPEC, over_split=False)
    assert plan.outer[0].equals(split.assignment) and plan.inner(0)[0].equals(split.assignment)
    described = plan.describe(repeats=1)
    assert described["outer"][0]["test_speakers"] == split.speakers(synthetic_corpus.table, "test")


@pytest.mark.parametrize("outer, inner, message", [
    (1, 50, r"objective\.cv_folds: 50 folds need an integer from 2 to the number of speakers \(\d+\)"),
    (40, 1, r"evaluation\.outer_folds: 40 folds need an integer from 2 to the number of speakers \(\d+\)"),
])
def test_too_few_speakers_for_the_folds_names_the_field(synthetic_corpus, outer, inner, message):
    from ser_tune.data import DataError

    split = make_split(synthetic_corpus.table, SPEC)
    with pytest.raises(DataError, match=message):
        fold_plan(synthetic_corpus, split, outer_folds=outer, cv_folds=inner, split_spec=SPEC, over_split=False)


def test_the_probe_chooses_on_the_folds_it_is_given():
    rng = np.random.default_rng(1)
    y = np.tile([0, 1, 2], 30)
    pooled = rng.normal(size=(90, 3, 4))
    pooled[:60, 2] += 4 * np.eye(3)[y[:60], :].repeat(2, axis=1)[:, :4]    # layer 2 separates the classes
    folds = [(np.arange(0, 30), np.arange(30, 60)), (np.arange(30, 60), np.arange(0, 30))]
    result = linear_probe(pooled, y, folds, train=np.arange(60), test=np.arange(60, 90))
    assert result.layer == 2 and result.cv_bca > 0.9
    # the test clips (no signal added) never took part in the choice: chance level, not the CV score
    assert result.test_bca < 0.7


def test_normalisation_statistics_never_use_labels(synthetic_corpus, feature_cache_root):
    table = synthetic_corpus.table
    split = make_split(table, SPEC)
    shuffled = table.assign(label=np.random.default_rng(0).permutation(table["label"].to_numpy()))
    for kind in ("corpus", "speaker"):
        norms = []
        for frame in (table, shuffled):
            data = TrialData.from_table(frame, split.assignment, sorted(table["label"].unique()))
            tuner = FineTuner(TrialSettings(unfreeze="none", max_length=1.0, normalize=kind), data,
                              encoder_spec="tiny-whisper", cache_root=feature_cache_root)
            norms.append(tuner.norm)
        assert np.array_equal(norms[0].mean, norms[1].mean) and np.array_equal(norms[0].std, norms[1].std)


def test_speaker_normalisation_uses_each_speakers_own_clips():
    pooled = np.arange(24, dtype=float).reshape(6, 2, 2) ** 1.5
    speakers = ["a", "a", "a", "b", "b", "c"]          # c has one clip: the reference statistics
    norm = FeatureNorm.fit("speaker", pooled, speakers=speakers, rows=np.arange(5))
    z = norm.apply(pooled, np.arange(6))
    for who in ("a", "b"):
        rows = [i for i, s in enumerate(speakers) if s == who]
        assert np.allclose(z[rows].mean(0), 0) and np.allclose(z[rows].std(0), 1)
    reference_mean = pooled[:5].mean(0)
    assert np.allclose(z[5], (pooled[5] - reference_mean) / pooled[:5].std(0))
    assert FeatureNorm.fit("none", pooled, speakers=speakers, rows=np.arange(5)) is None
    with pytest.raises(ValueError, match="normalize must be one of"):
        FeatureNorm.fit("global", pooled, speakers=speakers, rows=np.arange(5))


def test_corpus_normalisation_takes_the_train_clips_statistics_only():
    pooled = np.random.default_rng(2).normal(size=(10, 1, 3))
    pooled[5:] += 100                                   # the non-train clips are far away
    norm = FeatureNorm.fit("corpus", pooled, speakers=["x"] * 10, rows=np.arange(5))
    assert np.allclose(norm.apply(pooled[:5], np.arange(5)).mean(0), 0)
    assert (norm.apply(pooled[5:], np.arange(5, 10)) > 50).all()
    assert np.allclose(norm.tensors()["mean"].numpy(), pooled[:5].mean(0))


def test_normalised_features_keep_their_dtype():
    pooled = np.random.default_rng(3).normal(size=(6, 2, 3)).astype(np.float32)
    for kind in ("corpus", "speaker"):
        norm = FeatureNorm.fit(kind, pooled, speakers=list("aabbcc"), rows=np.arange(6))
        assert norm.apply(pooled, np.arange(6)).dtype == np.float32


def test_the_study_s_probe_fits_each_normalisation_and_outer_fold_on_its_own_rows(tmp_path, synthetic_root,
                                                                                 monkeypatch):
    """The probes run one process per core (as EmoDB's do); each (normalisation, outer fold) lands in its place."""
    import ser_tune.strategies
    from ser_tune.config import experiment_from_dict
    from ser_tune.strategies import StrategyStudy
    from ser_tune.study.folder import StudyFolder
    from ser_tune.training.probe import CHOSEN, normalised_probe

    exp = experiment_from_dict({
        "name": "probes", "corpus": {"name": "synthetic", "root": str(synthetic_root)},
        "storage": str(tmp_path / "studies"), "strategies": ["random"], "space": {"normalize": {"choice": ["none", "speaker"]}},
        "objective": {"cv_folds": 2}, "evaluation": {"outer_folds": 3}})
    study = StrategyStudy(exp)
    study.prepare(StudyFolder.create(exp.storage, exp.name))
    table = study.corpus.table
    y = table["label"].map({name: i for i, name in enumerate(sorted(table["label"].unique()))}).to_numpy()
    pooled = np.random.default_rng(0).normal(size=(len(table), 2, 3)) + y[:, None, None] * 0.3   # (clips, states, dim)
    pooled[table["speaker"].astype(str).to_numpy() == table["speaker"].astype(str).iloc[0]] += 5.0   # one loud speaker
    monkeypatch.setattr(ser_tune.strategies, "PARALLEL_PROBE_VALUES", 0)
    out = study.probe(pooled)
    assert set(out) == {"none", "speaker", CHOSEN}
    for kind, fold in [("none", 0), ("speaker", 2)]:   # (each probe alone: seconds)
        train, test = study.plan.outer_rows(fold)
        alone = normalised_probe(pooled, y, table["speaker"].to_numpy(), kind, study.plan.inner_rows(fold),
                                 train=train, test=test, seed=exp.seed)
        got = out[kind]["folds"][fold]
        assert {k: got[k] for k in ("layer", "C", "cv_bca", "test_bca")} == \
            {k: alone[k] for k in ("layer", "C", "cv_bca", "test_bca")}, (kind, fold)
    assert out["none"]["folds"] != out["speaker"]["folds"]
