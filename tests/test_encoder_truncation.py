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
