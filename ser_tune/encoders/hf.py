"""Hugging Face speech encoders: Whisper (encoder only), wav2vec2, HuBERT, WavLM, data2vec-audio.

Loaded by hub id or local folder through ``from_pretrained``; a tiny model saved with
``save_pretrained`` goes through exactly this code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .base import EncoderError, SpeechEncoder, freeze_for_inference, lengths_to_mask

WAV2VEC2_FAMILY = {"wav2vec2", "hubert", "wavlm", "data2vec-audio"}


def quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


class WhisperSpeechEncoder(SpeechEncoder):
    """Whisper's encoder with the position table cut to the clip's frames.

    Whisper expects 30 s of log-mel; a 3 s clip padded to 30 s pays for ten times the
    frames it has. Feeding only the clip's mel frames and the first T rows of the position
    table is much faster; the features differ from the 30 s-padded ones, so the head (and
    any fine-tuning) is trained on the same setting. Frames past a clip's end in a batch are
    masked out of attention, so a clip's features do not depend on its batch.
    """

    family = "whisper"

    def __init__(self, encoder: nn.Module, feature_extractor, spec: str):
        super().__init__()
        self.encoder = encoder
        self.feature_extractor = feature_extractor
        self.spec = spec
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.hop_length = int(feature_extractor.hop_length)
        self.frame_stride = stride = encoder.conv1.stride[0] * encoder.conv2.stride[0]
        self.max_seconds = encoder.config.max_source_positions * stride * self.hop_length / self.sample_rate

    @property
    def hidden_size(self) -> int:
        return self.encoder.config.d_model

    def transformer_layers(self) -> nn.ModuleList:
        return self.encoder.layers

    def frontend_modules(self) -> Sequence[nn.Module]:
        return [self.encoder.conv1, self.encoder.conv2, self.encoder.embed_positions]

    def remove_final_norm(self) -> None:
        # WhisperEncoder.forward applies layer_norm once, after the last layer: not a layer's own.
        self.encoder.layer_norm = nn.Identity()

    def embed(self, waves, lengths):
        lengths = lengths.cpu()
        batch = [waves[i, : int(n)].detach().cpu().numpy() for i, n in enumerate(lengths)]
        with torch.autocast("cpu", enabled=False):   # the log-mel spectrogram in fp32 whatever the layers run in
            feats = self.feature_extractor(batch, sampling_rate=self.sample_rate, padding="longest",
                                           return_tensors="pt").input_features
        feats = feats.to(self.encoder.conv1.weight.dtype)
        if feats.shape[-1] % 2:  # conv2's stride needs an even frame count to keep frames aligned
            feats = nn.functional.pad(feats, (0, 1))
        x = nn.functional.gelu(self.encoder.conv1(feats))
        x = nn.functional.gelu(self.encoder.conv2(x)).permute(0, 2, 1)
        frames = x.shape[1]
        if frames > self.encoder.embed_positions.num_embeddings:
            raise EncoderError(f"{self.spec}: clip longer than Whisper's {self.max_seconds:.0f} s window; "
                               "set max_length <= 30")
        x = x + self.encoder.embed_positions.weight[:frames]
        x = nn.functional.dropout(x, p=self.encoder.dropout, training=self.training)
        frame_lengths = torch.clamp(
            torch.div(lengths // self.hop_length + self.frame_stride - 1, self.frame_stride, rounding_mode="floor"),
            min=1, max=frames)
        return x, lengths_to_mask(frame_lengths, frames)

    def run_layers(self, hidden, mask, start, end=None):
        return _run_masked(self.encoder.layers, hidden, mask, start, self.num_layers if end is None else end,
                           lambda h, index: self.encoder.layer_norm(h) if index == self.num_layers - 1 else h)


def _additive_mask(mask: torch.Tensor, dtype) -> torch.Tensor:
    """(B, T) bool -> (B, 1, T, T) additive mask hiding padded keys."""
    key = mask[:, None, None, :]
    return torch.zeros(key.shape, dtype=dtype).masked_fill(~key, torch.finfo(dtype).min).expand(
        -1, 1, mask.shape[1], -1)


def _run_masked(layers, hidden, mask, start: int, end: int, finish) -> list[torch.Tensor]:
    """Layers ``start .. end-1`` with padded keys hidden from attention; each output goes through
    ``finish(hidden, index)`` (what follows the last layer)."""
    attn = _additive_mask(mask, hidden.dtype)
    out = []
    for index in range(start, end):
        hidden = layers[index](hidden, attention_mask=attn)
        hidden = finish(hidden[0] if isinstance(hidden, tuple) else hidden, index)
        out.append(hidden)
    return out


class Wav2Vec2FamilySpeechEncoder(SpeechEncoder):
    """wav2vec2, HuBERT, WavLM and data2vec-audio share one layout:
    CNN feature extractor -> projection -> positional conv -> transformer layers."""

    def __init__(self, model: nn.Module, spec: str, normalize: bool = True, output_norm: bool = False):
        super().__init__()
        self.model = model
        self.spec = spec
        self.family = model.config.model_type
        self.normalize = normalize
        self.output_norm = output_norm  # SpeechBrain's wrapper layer-normalises the last layer
        self.sample_rate = 16000
        self.stable_layer_norm = bool(getattr(model.config, "do_stable_layer_norm", False))

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def transformer_layers(self) -> nn.ModuleList:
        return self.model.encoder.layers

    def frontend_modules(self) -> Sequence[nn.Module]:
        mods = [self.model.feature_extractor, self.model.feature_projection, self.model.encoder.pos_conv_embed]
        if not self.stable_layer_norm:
            mods.append(self.model.encoder.layer_norm)
        return mods

    def remove_final_norm(self) -> None:
        # The stable-layer-norm variant (wav2vec2-large, WavLM-large) normalises after the last
        # layer; the other variant normalises before layer 0 (in ``embed``), which stays.
        if self.stable_layer_norm:
            self.model.encoder.layer_norm = nn.Identity()
        self.output_norm = False

    def embed(self, waves, lengths):
        sample_mask = lengths_to_mask(lengths, waves.shape[1])
        if self.normalize:  # per-utterance zero mean, unit variance over the real samples
            m = sample_mask.to(waves.dtype)
            n = m.sum(1, keepdim=True).clamp(min=1)
            mean = (waves * m).sum(1, keepdim=True) / n
            var = (((waves - mean) * m) ** 2).sum(1, keepdim=True) / n
            waves = (waves - mean) / torch.sqrt(var + 1e-7) * m
        feats = self.model.feature_extractor(waves).transpose(1, 2)
        frame_lengths = self.model._get_feat_extract_output_lengths(lengths).clamp(min=1, max=feats.shape[1])
        mask = lengths_to_mask(frame_lengths, feats.shape[1])
        projected = self.model.feature_projection(feats)
        hidden = projected[0] if isinstance(projected, tuple) else projected
        hidden = hidden * mask[..., None].to(hidden.dtype)
        encoder = self.model.encoder
        hidden = hidden + encoder.pos_conv_embed(hidden)
        if not self.stable_layer_norm:
            hidden = encoder.layer_norm(hidden)
        hidden = encoder.dropout(hidden)
        return hidden, mask

    def run_layers(self, hidden, mask, start, end=None):
        end = self.num_layers if end is None else end
        layers = self.model.encoder.layers
        out = []
        if self.family == "wavlm":
            position_bias = None
            if start > 0:  # layer 0 owns the relative position table; later layers reuse its bias
                attention = layers[0].attention
                t = hidden.shape[1]
                bias = attention.compute_bias(t, t)
                position_bias = bias.unsqueeze(0).repeat(hidden.shape[0], 1, 1, 1).view(
                    hidden.shape[0] * attention.num_heads, t, t)
            key_mask = mask.long()
            for index in range(start, end):
                hidden, position_bias = layers[index](hidden, attention_mask=key_mask,
                                                      position_bias=position_bias, index=index)
                out.append(self._finish(hidden, index))
            return out
        return _run_masked(layers, hidden, mask, start, end, self._finish)

    def _finish(self, hidden, index):
        if index == self.num_layers - 1:
            if self.stable_layer_norm:
                hidden = self.model.encoder.layer_norm(hidden)
            if self.output_norm:
                hidden = nn.functional.layer_norm(hidden, hidden.shape[-1:])
        return hidden


def load_hf_encoder(source: str, spec: str | None = None) -> SpeechEncoder:
    """Load a Hugging Face speech encoder from a hub id or a local folder."""
    transformers = quiet_transformers()
    spec = spec or f"hf:{source}"
    local = Path(source).expanduser()
    if local.exists():
        source = str(local.resolve())
    elif source.startswith((".", "/", "~")):
        raise EncoderError(f"{spec}: folder {source} does not exist")
    try:
        config = transformers.AutoConfig.from_pretrained(source)
    except OSError as exc:
        raise EncoderError(f"{spec}: cannot load a model config from '{source}' "
                           f"(no such folder, and the hub is unreachable or has no such id): {exc}") from None
    model_type = config.model_type
    if model_type == "whisper":
        return _load_whisper(transformers, source, config, spec)
    if model_type in WAV2VEC2_FAMILY:
        model = transformers.AutoModel.from_pretrained(source, config=config)
        if hasattr(model, "wav2vec2") and not hasattr(model, "feature_extractor"):
            model = model.wav2vec2
        try:
            normalize = bool(getattr(transformers.AutoFeatureExtractor.from_pretrained(source), "do_normalize", True))
        except (OSError, ValueError):
            normalize = True
        return freeze_for_inference(Wav2Vec2FamilySpeechEncoder(model, spec, normalize=normalize))
    raise EncoderError(f"{spec}: model type '{model_type}' is not a supported speech encoder "
                       f"(supported: whisper, {', '.join(sorted(WAV2VEC2_FAMILY))})")


def _load_whisper(transformers, source, config, spec):
    archs = config.architectures or []
    if "WhisperForAudioClassification" in archs:
        encoder = transformers.WhisperForAudioClassification.from_pretrained(source, config=config).encoder
    else:
        encoder = transformers.WhisperModel.from_pretrained(source, config=config).get_encoder()
    encoder = encoder.float()
    try:
        fe = transformers.WhisperFeatureExtractor.from_pretrained(source)
    except OSError:
        fe = transformers.WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    return freeze_for_inference(WhisperSpeechEncoder(encoder, fe, spec))
