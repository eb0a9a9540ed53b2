"""Tiny randomly initialised encoders of the real classes, for tests and the quickstart.

Initialised from a fixed seed, so every process (every Ray trial) builds the same weights
and the feature cache stays valid across them.
"""
from __future__ import annotations

import torch

from .base import SpeechEncoder, freeze_for_inference
from .spec import TINY_FAMILIES, EncoderError
_TINY_SEED = 1234


def tiny_config(family: str):
    import transformers

    common = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
                  conv_dim=(32, 32, 32, 32, 32, 32, 32), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
                  conv_stride=(5, 2, 2, 2, 2, 2, 2), num_conv_pos_embeddings=16,
                  num_conv_pos_embedding_groups=4, hidden_dropout=0.0, attention_dropout=0.0,
                  activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0,
                  vocab_size=32)
    if family == "whisper":
        return transformers.WhisperConfig(d_model=64, encoder_layers=3, encoder_attention_heads=4,
                                          encoder_ffn_dim=128, decoder_layers=1, decoder_attention_heads=4,
                                          decoder_ffn_dim=64, vocab_size=64, num_mel_bins=80,
                                          max_source_positions=1500, max_target_positions=32,
                                          dropout=0.0, attention_dropout=0.0)
    if family == "wav2vec2":
        # A small codebook and projection for Wav2Vec2ForPreTraining (TAPT, ser_tune.active.tapt);
        # the base Wav2Vec2Model (what the encoder is) ignores these fields.
        return transformers.Wav2Vec2Config(**common, num_codevectors_per_group=32, num_codevector_groups=2,
                                           codevector_dim=32, proj_codevector_dim=32, num_negatives=20)
    if family == "hubert":
        return transformers.HubertConfig(**common)
    if family == "wavlm":
        return transformers.WavLMConfig(**common, num_buckets=32, max_bucket_distance=64)
    raise EncoderError(f"tiny-{family}: unknown tiny family; choose from "
                       + ", ".join(f"tiny-{f}" for f in TINY_FAMILIES))


def build_tiny_model(family: str):
    """The Hugging Face model behind ``tiny-<family>`` (what tests ``save_pretrained``)."""
    from .hf import quiet_transformers

    transformers = quiet_transformers()
    config = tiny_config(family)
    with torch.random.fork_rng():
        torch.manual_seed(_TINY_SEED)
        if family == "whisper":
            return transformers.WhisperForAudioClassification(config)
        return transformers.AutoModel.from_config(config)


def load_tiny_encoder(family: str) -> SpeechEncoder:
    import transformers

    from .hf import Wav2Vec2FamilySpeechEncoder, WhisperSpeechEncoder

    model = build_tiny_model(family)
    if family == "whisper":
        fe = transformers.WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
        return freeze_for_inference(WhisperSpeechEncoder(model.encoder, fe, f"tiny-{family}"))
    return freeze_for_inference(Wav2Vec2FamilySpeechEncoder(model, f"tiny-{family}"))
