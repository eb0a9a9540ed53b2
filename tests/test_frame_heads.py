"""Frames in the shared cache (every layer, float16, memory-mapped, optionally averaged in time), the
attentive head that pools them, augmentation of training clips only, and the conditional space that
samples their settings only where they apply."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from ray.tune.search.sample import Domain

from ser_tune.config import QUICKSTART, experiment_from_dict
from ser_tune.crosscorpus import CrossCorpusError, evaluate_cross_corpus
from ser_tune.data import crop, load_corpus, speaker_split
from ser_tune.encoders import load_encoder, spec_fingerprint
from ser_tune.encoders.cache import FeatureCache
from ser_tune.search import make_plan
from ser_tune.search.space import SpaceError, parse_space
from ser_tune.strategies import frame_averages
from ser_tune.study.prepare import encode_once
from ser_tune.training.augment import drop_frames, mask_time
from ser_tune.training.export import load_model
from ser_tune.training.finetune import FineTuner, TrialData
from ser_tune.training.head import AttentiveHead
from ser_tune.training.settings import FRAME_HEADS, ONLY_FOR_HEADS, TrialSettings
from ser_tune.training.trainable import StudyContext

SPEC = "tiny-whisper"
FRAME_SETTINGS = {name for name, heads in ONLY_FOR_HEADS.items() if set(heads) <= set(FRAME_HEADS)}
AUGMENTED = dict(time_mask=4, frame_dropout=0.2, mixup=0.4, feature_noise=0.3)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """A trial runs on its own CPUs (one here, as in a study of 1-CPU trials); two threads on a busy
    2-core machine spend more time waiting on each other than computing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(synthetic_root):
    return load_corpus("synthetic", synthetic_root)


@pytest.fixture(scope="module")
def data(corpus):
    split = speaker_split(corpus.table, val_speakers=2, test_speakers=2, seed=0)
    return TrialData.from_table(corpus.table, split.assignment)


def _no_encoder(spec):
    raise AssertionError("the encoder was loaded although the cache holds every frame the trial reads")


def _attentive(**settings) -> TrialSettings:
    return TrialSettings(**{"head": "attentive", "lr": 3e-3, "num_epochs": 3, "max_length": 1.5, **settings})


def test_the_cache_holds_every_layers_frames_in_float16_memory_mapped_and_averaged_in_time(data, tmp_path):
    cache = FeatureCache(tmp_path, SPEC, spec_fingerprint(SPEC), lambda: load_encoder(SPEC))
    paths = data.paths[:6]
    states = cache.encoder.num_layers + 1
    wave = lambda i: crop(data.audio.get(paths[i]), 1.5, 16000)   # noqa: E731
    feats = cache.get(paths, wave, 1.5, boundaries=range(states), averages=[1, 2])
    assert cache.has(paths, 1.5, averages=[1, 2]) and not cache.has(paths, 1.0, averages=[1])
    for average in (1, 2):
        stored, offsets = feats.layer_frames[average]
        assert isinstance(stored, np.memmap) and stored.dtype == np.float16 and len(offsets) == len(paths) + 1
    for i in range(len(paths)):
        exact = np.stack([np.asarray(feats.frames_of(b, i)) for b in range(states)], axis=1)   # (T, L+1, D)
        assert len(exact) == feats.lengths[i]
        np.testing.assert_array_equal(feats.clip_frames(1, i), exact.astype(np.float16))
        halves = feats.clip_frames(2, i)
        assert len(halves) == -(-len(exact) // 2)
        np.testing.assert_allclose(halves[0], exact[:2].mean(0), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(halves[-1], exact[2 * (len(halves) - 1):].mean(0), rtol=2e-3, atol=2e-3)


def test_the_frame_cache_is_written_once_per_study_and_read_by_every_trial(corpus, data, tmp_path):
    """The shared encode writes the frames once; trials of other settings then read the entry (one hit each,
    no miss) without loading the encoder, and the frame file is never written again."""
    done = encode_once(corpus.table, SPEC, tmp_path, [1.5], [], frame_averages=[1])
    assert done["cache"]["misses"] == 1 and done["cache"]["frame_averages"] == [1]
    [frames_file] = tmp_path.glob("*/layer_frames_a1.npy")
    written = frames_file.stat().st_mtime_ns
    trials = [_attentive(), _attentive(lr=1e-2, attention_hidden=16, **AUGMENTED), _attentive(normalize="speaker")]
    for settings in trials:
        result = FineTuner(settings, data, encoder_spec=SPEC, cache_root=tmp_path, encoder_loader=_no_encoder).run()
        assert result.cache == {"hits": 1, "misses": 0}
    assert frames_file.stat().st_mtime_ns == written
    again = encode_once(corpus.table, SPEC, tmp_path, [1.5], [], frame_averages=[1])
    assert again["cache"] == {**again["cache"], "hits": 1, "misses": 0}


def test_only_a_study_whose_space_can_choose_a_head_that_reads_frames_caches_frames(corpus, tmp_path):
    def experiment(**changes):
        raw = copy.deepcopy(QUICKSTART)
        raw.update(changes)
        return experiment_from_dict(raw)

    assert frame_averages(experiment()) == []      # the quickstart: linear heads on pooled statistics
    pooled = {"head": {"logreg": {"C": {"loguniform": [0.01, 1.0]}}, "mlp": {}}}
    assert frame_averages(experiment(space=pooled)) == []
    branch = {"head": {"linear": {}, "attentive": {"frame_average": {"choice": [1, 2]}, "mixup": {"uniform": [0, 1]}}}}
    assert frame_averages(experiment(space=branch)) == [1, 2]
    fixed = experiment(trial={"head": "attentive", "frame_average": 2}, space={"lr": {"loguniform": [1e-4, 1e-2]}})
    assert frame_averages(fixed) == [2]
    encode_once(corpus.table, SPEC, tmp_path, [1.5], [])   # a study of pooled heads: no frames on disk
    assert list(tmp_path.glob("*/pooled.npy")) and not list(tmp_path.glob("*/layer_frames_*"))


def test_attentive_pooling_weighs_only_the_unpadded_frames():
    torch.manual_seed(0)
    head = AttentiveHead(3, 5, 4, hidden=8, dropout=0.0).eval()
    frames = torch.randn(2, 7, 3, 5)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    padded = frames.clone()
    padded[1, 4:] = 1e3                                   # padding that would show in any statistic that read it
    pooled = head.pool(padded, mask)
    np.testing.assert_allclose(pooled[1].detach(), head.pool(frames[1:2, :4])[0].detach(), rtol=1e-5, atol=1e-6)
    with torch.no_grad():                                 # uniform attention: the plain mean and std of the layer mix
        head.attention[-1].weight.zero_()
        mixed = torch.einsum("tld,l->td", frames[1, :4], head.layer_weights()).double().numpy()
        pooled = head.pool(padded, mask)[1].double().numpy()
    np.testing.assert_allclose(pooled[:5], mixed.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pooled[5:], mixed.std(0), rtol=1e-4, atol=1e-3)


def test_time_masking_and_frame_dropout_only_remove_real_frames_and_keep_one():
    torch.manual_seed(0)
    mask = torch.arange(10)[None] < torch.tensor([10, 6, 1, 3])[:, None]
    for _ in range(50):
        masked = mask_time(mask, 4)
        assert not (masked & ~mask).any() and (masked.sum(1) >= 1).all()
        removed = (mask.sum(1) - masked.sum(1))
        assert (removed <= 4).all() and removed[2] == 0
        dropped = drop_frames(mask, 0.9)
        assert not (dropped & ~mask).any() and (dropped.sum(1) >= 1).all()


def test_augmentation_never_touches_validation_or_test_clips(data, feature_cache_root, monkeypatch):
    """Every augmented batch holds training clips only (every one of them, each epoch), and the validation
    and test outputs of an augmented trial's model are those of the same weights without augmentation."""
    augmented = []
    original = FineTuner.augmented_forward

    def spy(self, model, idx, live, grad):
        augmented.append(np.asarray(idx).copy())
        return original(self, model, idx, live, grad)

    monkeypatch.setattr(FineTuner, "augmented_forward", spy)
    settings = _attentive(num_epochs=2, **AUGMENTED)
    tuner = FineTuner(settings, data, encoder_spec=SPEC, cache_root=feature_cache_root)
    state = tuner.start()
    tuner.fit_epoch(state)
    tuner.fit_epoch(state)
    seen = np.concatenate(augmented)
    train = data.parts["train"]
    assert set(seen) == set(train) and len(seen) == 2 * len(train)
    assert not set(seen) & (set(data.parts["val"]) | set(data.parts["test"]))

    plain = FineTuner(_attentive(num_epochs=2), data, encoder_spec=SPEC, cache_root=feature_cache_root)
    plain_state = plain.start()
    plain_state.model.head.load_state_dict(state.model.head.state_dict())
    for part in ("val", "test"):
        idx = data.parts[part]
        once = tuner._outputs(state.model, idx, None)
        np.testing.assert_array_equal(once, tuner._outputs(state.model, idx, None))   # nothing random
        np.testing.assert_array_equal(once, plain._outputs(plain_state.model, idx, None))


def test_an_attentive_trial_resumes_from_its_saved_state_to_the_same_result(data, tmp_path, feature_cache_root):
    settings = _attentive(num_epochs=4, frame_average=2, **AUGMENTED)
    full = FineTuner(settings, data, encoder_spec=SPEC, cache_root=feature_cache_root).run()

    class Stop(Exception):
        pass

    def stop_after_two(metrics):
        if metrics["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        FineTuner(settings, data, encoder_spec=SPEC, cache_root=feature_cache_root).run(
            report=stop_after_two, checkpoint_dir=tmp_path)
    seen = []
    resumed = FineTuner(settings, data, encoder_spec=SPEC, cache_root=feature_cache_root).run(
        report=lambda m: seen.append(m["epoch"]), resume_dir=tmp_path)
    assert seen == [3, 4]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    assert resumed.val_bca == full.val_bca and resumed.best_epoch == full.best_epoch
    assert resumed.test_predictions.tolist() == full.test_predictions.tolist()


def test_an_attentive_model_exports_and_predicts_as_its_trial(data, tmp_path, feature_cache_root, synthetic_root):
    tuner = FineTuner(_attentive(frame_average=2), data, encoder_spec=SPEC, cache_root=feature_cache_root)
    result = tuner.run(checkpoint_dir=tmp_path)
    model = load_model(tmp_path / "model")
    preds = [int(model.predict_proba(data.audio.get(data.paths[i])[: 24000]).argmax()) for i in data.parts["test"]]
    assert preds == result.test_predictions.tolist()
    assert model.head(model.embed(data.audio.get(data.paths[0]))).shape == (1, len(data.labels))   # as latency times it
    with pytest.raises(CrossCorpusError, match="attentive head reads frames"):   # a clear line, not a crash
        evaluate_cross_corpus(tmp_path / "model", [{"name": "synthetic", "root": str(synthetic_root)}])


RAW = {
    "normalize": {"choice": ["none", "speaker"]},
    "mixup": {"uniform": [0.0, 1.0]},                       # plain: applies to the attentive trials only
    "head": {
        "logreg": {"C": {"loguniform": [1.0e-4, 10.0]}, "layer": {"choice": ["all", 2]}},
        "mlp": {"head_hidden": {"choice": [16, 32]}, "pooling": {"choice": ["mean", "meanstd"]}},
        "attentive": {"frame_average": {"choice": [1, 2]}, "time_mask": {"int": [0, 8]},
                      "frame_dropout": {"uniform": [0.0, 0.3]}, "feature_noise": {"uniform": [0.0, 0.5]},
                      "attention_hidden": {"choice": [32, 64]}, "weight_decay": {"loguniform": [1.0e-4, 1.0]}},
    },
}
FIXED = {"max_length": 2.0, "num_epochs": 10, "unfreeze": "top:1", "layer": 2}
NOT_FOR_ATTENTIVE = {"C", "head_hidden", "pooling", "layer", "unfreeze", "unfreeze_epoch", "peft"}


@pytest.mark.parametrize("strategy", ["random", "gp", "skopt", "tpe"])
def test_a_frame_setting_that_does_not_apply_is_absent_from_the_trials_config(strategy):
    plan = make_plan(strategy, parse_space(RAW), budget=40, seed=0)
    context = StudyContext(table=pd.DataFrame(), assignments=[], labels=[], encoder_spec=SPEC, cache_root="",
                           fixed=FIXED, decode=plan.decode)
    searcher = plan.searcher.searcher if strategy == "tpe" else None
    heads = set()
    for seed in range(40):
        if searcher is not None:
            config = searcher.suggest(f"t{seed}")
            searcher.on_trial_complete(f"t{seed}", {"val_bca": 0.5})
        else:
            config = {name: domain.sample(random_state=seed) if isinstance(domain, Domain) else domain
                      for name, domain in plan.param_space.items()}
        chosen = context.chosen(config)
        settings = context.settings_for(config)
        heads.add(chosen["head"])
        if settings.reads_frames:
            assert not set(chosen) & NOT_FOR_ATTENTIVE, chosen
            assert {"mixup", "frame_average", "time_mask", "frame_dropout", "feature_noise"} <= set(chosen)
            assert not settings.encoder_trains
        else:
            assert not set(chosen) & FRAME_SETTINGS, chosen
    assert heads == {"logreg", "mlp", "attentive"}


@pytest.mark.parametrize("raw, message", [
    ({"head": {"linear": {"mixup": {"uniform": [0.0, 1.0]}}}}, r"'mixup' does not apply to head linear"),
    ({"head": {"attentive": {"layer": {"choice": [1, 2]}}}}, r"'layer' does not apply to head attentive"),
    ({"head": {"attentive": {"frame_average": {"choice": [1, 3]}}}}, r"frame_average.*1 or 2"),
])
def test_a_frame_setting_in_the_wrong_place_is_named(raw, message):
    with pytest.raises(SpaceError, match=message):
        parse_space(raw)
