"""Encoders: every family loads from a saved tiny model through the same code as a real one."""
from __future__ import annotations

import textwrap

import pytest
import torch

from ser_tune.encoders import EncoderError, check_spec, load_encoder, spec_fingerprint
from ser_tune.encoders.tiny import TINY_FAMILIES, build_tiny_model
from ser_tune.training.head import masked_mean


def _waves():
    g = torch.Generator().manual_seed(0)
    waves = torch.randn(2, 16000, generator=g) * 0.1
    return waves, torch.tensor([16000, 12000])


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_hf_folder_loads_each_family(tmp_path, family):
    model = build_tiny_model(family)
    model.save_pretrained(tmp_path / family)
    if family == "whisper":
        from transformers import WhisperFeatureExtractor

        WhisperFeatureExtractor(feature_size=80).save_pretrained(tmp_path / family)
    enc = load_encoder(f"hf:{tmp_path / family}")
    assert enc.family == family
    waves, lengths = _waves()
    with torch.no_grad():
        states, mask = enc(waves, lengths)
    assert len(states) == enc.num_layers + 1 == 4
    assert all(s.shape == (2, mask.shape[1], enc.hidden_size) for s in states)
    # the shorter clip has fewer real frames
    assert mask[0].sum() > mask[1].sum() > 0
    # the same weights as the tiny spec: a saved folder goes through the real loading path
    tiny = load_encoder(f"tiny-{family}")
    with torch.no_grad():
        ref, _ = tiny(waves, lengths)
    assert torch.allclose(ref[-1], states[-1], atol=1e-5)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_split_forward_equals_whole(family):
    """embed + layers [0, b) + layers [b, L) must equal one forward: the cache relies on it."""
    enc = load_encoder(f"tiny-{family}")
    waves, lengths = _waves()
    with torch.no_grad():
        states, mask = enc(waves, lengths)
        for b in range(1, enc.num_layers):
            top = enc.run_layers(states[b], mask, b)
            assert torch.allclose(top[-1], states[-1], atol=1e-5), f"boundary {b}"


def test_whisper_uses_only_the_clips_frames():
    enc = load_encoder("tiny-whisper")
    waves = torch.randn(1, 32000) * 0.1
    with torch.no_grad():
        states, mask = enc(waves, torch.tensor([32000]))
    # 2 s at 16 kHz: 200 mel frames, 100 positions after the stride-2 convolution (not 1500 for 30 s)
    assert states[0].shape[1] == 100 and mask.all()


def test_speechbrain_folder_loads_wrapped_wav2vec2(tmp_path):
    pytest.importorskip("speechbrain")
    hf_dir = tmp_path / "tiny-w2v"
    build_tiny_model("wav2vec2").save_pretrained(hf_dir)
    from transformers import Wav2Vec2FeatureExtractor

    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(hf_dir)
    from speechbrain.lobes.models.huggingface_transformers.wav2vec2 import Wav2Vec2

    sb_dir = tmp_path / "sb-model"
    sb_dir.mkdir()
    wrapper = Wav2Vec2(str(hf_dir), save_path=str(tmp_path / "sb-save"), freeze=True, output_norm=True)
    with torch.no_grad():  # the checkpoint must win over the source weights: shift one tensor
        wrapper.model.encoder.layers[0].attention.q_proj.bias.add_(0.5)
    torch.save(wrapper.state_dict(), sb_dir / "wav2vec2.ckpt")
    # Same shape as speechbrain/emotion-recognition-wav2vec2-IEMOCAP's hyperparams.yaml.
    (sb_dir / "hyperparams.yaml").write_text(textwrap.dedent(f"""
        wav2vec2_hub: {hf_dir}
        wav2vec2: !new:speechbrain.lobes.models.huggingface_transformers.wav2vec2.Wav2Vec2
            source: !ref <wav2vec2_hub>
            output_norm: True
            freeze: True
            save_path: {tmp_path / "sb-save2"}
        avg_pool: !new:speechbrain.nnet.pooling.StatisticsPooling
            return_std: False
        modules:
            wav2vec2: !ref <wav2vec2>
            avg_pool: !ref <avg_pool>
        pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
            loadables:
                wav2vec2: !ref <wav2vec2>
            paths:
                wav2vec2: {sb_dir / "wav2vec2.ckpt"}
        """))
    enc = load_encoder(f"speechbrain:{sb_dir}")
    assert enc.family == "wav2vec2" and enc.output_norm
    loaded = enc.model.encoder.layers[0].attention.q_proj.bias
    assert torch.allclose(loaded, wrapper.model.encoder.layers[0].attention.q_proj.bias)
    waves, lengths = _waves()
    with torch.no_grad():
        states, mask = enc(waves, lengths)
    last = states[-1][0, : int(mask[0].sum())]
    # SpeechBrain's output_norm: the last layer is layer-normalised
    assert torch.allclose(last.mean(-1), torch.zeros(last.shape[0]), atol=1e-4)


def test_masked_mean_ignores_padding():
    hidden = torch.ones(2, 5, 3)
    hidden[0, 3:] = 1e6  # garbage in the padded frames
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    pooled = masked_mean(hidden, mask)
    assert torch.allclose(pooled, torch.ones(2, 3))


@pytest.mark.parametrize("spec", ["", "bert", "tiny-bert", "hf:", "speechbrain:"])
def test_bad_specs_are_named(spec):
    with pytest.raises(EncoderError):
        check_spec(spec)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(EncoderError, match="does not exist"):
        load_encoder(f"hf:{tmp_path}/nope")


def test_fingerprint_follows_folder_contents(tmp_path):
    build_tiny_model("hubert").save_pretrained(tmp_path / "m")
    before = spec_fingerprint(f"hf:{tmp_path / 'm'}")
    (tmp_path / "m" / "extra.txt").write_text("changed")
    assert spec_fingerprint(f"hf:{tmp_path / 'm'}") != before


def test_relative_folder_specs_become_absolute(tmp_path, monkeypatch):
    """Ray workers run in other working directories: a folder spec must name the same folder there."""
    from ser_tune.encoders import resolve_spec

    (tmp_path / "models" / "enc").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_spec("hf:models/enc") == f"hf:{tmp_path / 'models' / 'enc'}"
    assert resolve_spec("hf:enc", [tmp_path / "models"]) == f"hf:{tmp_path / 'models' / 'enc'}"
    assert resolve_spec("hf:facebook/wav2vec2-base") == "hf:facebook/wav2vec2-base"   # a hub id stays
    assert resolve_spec("tiny-hubert") == "tiny-hubert"
