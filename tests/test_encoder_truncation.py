"""Encoder truncation: a head reading hidden state k needs only layers 0..k-1.

The truncated encoder's hidden states must equal the full encoder's (the final norm, applied
after the full encoder's last layer only, must not move onto the truncated top).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from ser_tune.encoders import EncoderError, SpeechEncoder, load_encoder
from ser_tune.encoders.base import freeze_for_inference
from ser_tune.encoders.hf import Wav2Vec2FamilySpeechEncoder
from ser_tune.encoders.tiny import TINY_FAMILIES, tiny_config

WHISPER_BASE = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "whisper-base-encoder"


def _waves(seconds: float = 1.0, batch: int = 2):
    g = torch.Generator().manual_seed(0)
    samples = int(seconds * 16000)
    waves = torch.randn(batch, samples, generator=g) * 0.1
    return waves, torch.tensor([samples] + [samples * 3 // 4] * (batch - 1))


def _stable_layer_norm(family: str) -> SpeechEncoder:
    """A tiny wav2vec2-large-style model: layer norm inside each layer and after the last one."""
    import transformers

    config = tiny_config(family)
    config.do_stable_layer_norm = True
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.AutoModel.from_config(config)
    return freeze_for_inference(Wav2Vec2FamilySpeechEncoder(model, f"stable-{family}"))


def _speechbrain_style() -> SpeechEncoder:
    """What the SpeechBrain loader builds: a wav2vec2 whose last layer is layer-normalised."""
    base = load_encoder("tiny-wav2vec2")
    # Each post-LN layer ends in a layer norm; with its initial affine (1, 0) the wrapper's
    # parameter-free norm would change nothing. Trained weights are not at (1, 0): move them there.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in base.transformer_layers():
            norm = layer.final_layer_norm
            norm.weight.copy_(1 + 0.3 * torch.randn(norm.weight.shape, generator=g))
            norm.bias.copy_(0.3 * torch.randn(norm.bias.shape, generator=g))
    return freeze_for_inference(Wav2Vec2FamilySpeechEncoder(base.model, "sb-wav2vec2", output_norm=True))


VARIANTS = {**{f"tiny-{f}": (lambda f=f: load_encoder(f"tiny-{f}")) for f in TINY_FAMILIES},
            "stable-wav2vec2": lambda: _stable_layer_norm("wav2vec2"),
            "stable-wavlm": lambda: _stable_layer_norm("wavlm"),
            "speechbrain-output-norm": _speechbrain_style}


def _check_truncation(full: SpeechEncoder, waves, lengths) -> None:
    """For every k below the top: hidden states 0..k of the truncated copy equal the full ones."""
    with torch.no_grad():
        states, mask = full(waves, lengths)
    params = sum(p.numel() for p in full.parameters())
    for k in range(full.num_layers):
        cut = copy.deepcopy(full)
        cut.truncate(k)
        assert cut.num_layers == k
        assert cut.describe()["num_layers"] == k
        assert cut.describe()["source_num_layers"] == full.num_layers
        with torch.no_grad():
            cut_states, cut_mask = cut(waves, lengths)
        assert len(cut_states) == k + 1
        assert torch.equal(cut_mask, mask)
        for index, hidden in enumerate(cut_states):
            torch.testing.assert_close(hidden, states[index], msg=f"{full.spec}: k={k}, state {index}")
        assert sum(p.numel() for p in cut.parameters()) < params


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_truncated_hidden_states_equal_full(variant):
    _check_truncation(VARIANTS[variant](), *_waves())


@pytest.mark.parametrize("variant", ["tiny-whisper", "stable-wav2vec2", "speechbrain-output-norm"])
def test_dropping_layers_without_the_final_norm_would_differ(variant):
    """Deleting the layers alone keeps the final norm on the new top: the equality above fails,
    so it really tests that ``truncate`` removes the norm."""
    enc = VARIANTS[variant]()
    waves, lengths = _waves()
    naive = copy.deepcopy(enc)
    del naive.transformer_layers()[1:]
    with torch.no_grad():
        states, _ = enc(waves, lengths)
        naive_states, _ = naive(waves, lengths)
    assert not torch.allclose(naive_states[-1], states[1], atol=1e-3)


def test_load_encoder_truncates_and_truncating_to_all_layers_changes_nothing():
    full = load_encoder("tiny-hubert")
    assert load_encoder("tiny-hubert", num_layers=2).num_layers == 2
    same = load_encoder("tiny-hubert", num_layers=full.num_layers)
    waves, lengths = _waves()
    with torch.no_grad():
        torch.testing.assert_close(same(waves, lengths)[0][-1], full(waves, lengths)[0][-1])
    assert same.describe()["source_num_layers"] == full.num_layers
    assert sum(p.numel() for p in same.parameters()) == sum(p.numel() for p in full.parameters())


def test_truncating_twice_keeps_the_source_layer_count():
    enc = load_encoder("tiny-wavlm", num_layers=2)
    enc.truncate(np.int64(1))  # e.g. a layer index taken from a numpy array
    assert enc.describe()["num_layers"] == 1 and enc.describe()["source_num_layers"] == 3


@pytest.mark.parametrize("bad", [-1, 4, 1.5, True, "2"])
def test_bad_layer_counts_are_one_clear_line(bad):
    enc = load_encoder("tiny-whisper")
    with pytest.raises(EncoderError) as err:
        enc.truncate(bad)
    message = str(err.value)
    assert "\n" not in message and "tiny-whisper" in message and "0..3" in message
    assert enc.num_layers == 3


def test_whisper_base_truncates_exactly():
    if not (WHISPER_BASE / "config.json").is_file():
        pytest.skip(f"real Whisper-base encoder not found at {WHISPER_BASE}")
    full = load_encoder(f"hf:{WHISPER_BASE}")
    assert full.num_layers == 6
    _check_truncation(full, *_waves(seconds=3.0, batch=1))


# --- through export and load_model: a head reading layer k ships an encoder cut at k --------------------
EXPORT_CASES = {
    # name: (settings, layer the head reads, PEFT modules kept in the folder, hidden state averaged in time)
    "frozen": (dict(unfreeze="none"), 1, False, None),
    "top layers trained below the cut": (dict(unfreeze="top:2", unfreeze_epoch=0), 2, False, None),
    "lora above the cut": (dict(unfreeze="top:1", unfreeze_epoch=0, peft="lora"), 2, False, None),
    "lora below the cut": (dict(unfreeze="top:2", unfreeze_epoch=0, peft="lora"), 2, True, None),
    "frames averaged above the cut": (dict(unfreeze="top:1", unfreeze_epoch=0, frame_average=2), 2, False, None),
    "frames averaged below the cut": (dict(unfreeze="top:2", unfreeze_epoch=0, frame_average=2), 2, False, 1),
}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from ser_tune.data import generate_synthetic, load_corpus, speaker_split
    from ser_tune.training.finetune import TrialData

    root = generate_synthetic(tmp_path_factory.mktemp("cut"), seed=1, n_speakers=4, clips_per_cell=1,
                              duration_range=(0.5, 0.6))
    table = load_corpus("synthetic", root).table
    return TrialData.from_table(table, speaker_split(table, val_speakers=1, test_speakers=1, seed=0).assignment)


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_an_exported_model_reading_layer_k_is_cut_there_and_gives_the_same_features(case, small_data,
                                                                                       feature_cache_root, tmp_path):
    """The folder's encoder has k layers, its features equal the full encoder's states 0..k, and the
    loaded model predicts what the trained one did."""
    from ser_tune.encoders.precision import compute
    from ser_tune.training.export import load_model
    from ser_tune.training.finetune import FineTuner
    from ser_tune.training.head import masked_mean
    from ser_tune.training.settings import TrialSettings

    changes, k, peft_kept, averaged_from = EXPORT_CASES[case]
    settings = TrialSettings(lr=1e-2, num_epochs=1, max_length=1.0, layer=k, **changes)
    tuner = FineTuner(settings, small_data, encoder_spec="tiny-whisper", cache_root=feature_cache_root)
    result = tuner.run()
    model = load_model(tuner.export(result, tmp_path / "model"))
    assert model.meta["encoder_layers"] == k and model.encoder.num_layers == k
    assert model.meta["num_states"] == k + 1 and bool(model.meta["peft"]) is peft_kept
    assert model.meta["average_frames_from"] == averaged_from
    full = load_encoder("tiny-whisper")
    wave = small_data.audio.get(small_data.paths[0])
    x = torch.from_numpy(np.array(wave, dtype=np.float32))[None]
    with torch.no_grad(), compute(model.precision):   # the trial's precision, as the model runs it here
        states, mask = full(x, torch.tensor([x.shape[1]]))
    expected = torch.stack([masked_mean(h.float(), mask) for h in states[: k + 1]], dim=1)
    if settings.encoder_trains:   # trained layers below the cut change the states above them
        torch.testing.assert_close(model.embed(wave)[:, :k - 1], expected[:, :k - 1])
    else:
        torch.testing.assert_close(model.embed(wave), expected)
    test = small_data.parts["test"]
    before = tuner.class_probabilities(result, test)
    after = np.stack([model.predict_proba(small_data.audio.get(small_data.paths[i])) for i in test])
    np.testing.assert_allclose(after, before, atol=1e-4)


def test_a_head_mixing_every_layer_or_reading_the_top_keeps_the_whole_encoder(small_data, feature_cache_root,
                                                                             tmp_path):
    from ser_tune.training.export import load_model
    from ser_tune.training.finetune import FineTuner
    from ser_tune.training.settings import TrialSettings

    for name, layer in (("mix", "weighted"), ("top", 3), ("negative top", -1)):
        tuner = FineTuner(TrialSettings(lr=1e-2, num_epochs=1, max_length=1.0, unfreeze="none", layer=layer),
                          small_data, encoder_spec="tiny-whisper", cache_root=feature_cache_root)
        model = load_model(tuner.export(tuner.run(), tmp_path / name))
        assert model.meta["encoder_layers"] is None and model.encoder.num_layers == 3, name
