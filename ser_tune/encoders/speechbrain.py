"""SpeechBrain models (hub id or local folder) whose encoder is a Hugging Face wav2vec2-family model.

The reference paper's encoder, ``speechbrain/emotion-recognition-wav2vec2-IEMOCAP``, is a
wav2vec2-base fine-tuned on IEMOCAP inside SpeechBrain's ``Wav2Vec2`` wrapper. We load the
model's ``hyperparams.yaml`` through SpeechBrain (its pretrainer fetches and loads the
checkpoint), then use the wrapped Hugging Face model behind the common encoder interface,
keeping the wrapper's input normalisation and output layer norm.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .base import EncoderError, SpeechEncoder, freeze_for_inference


def load_speechbrain_encoder(source: str, spec: str | None = None) -> SpeechEncoder:
    spec = spec or f"speechbrain:{source}"
    local = Path(source).expanduser()
    if local.exists():
        if not (local / "hyperparams.yaml").is_file():
            raise EncoderError(f"{spec}: folder {local} has no hyperparams.yaml (not a SpeechBrain model folder)")
        source = str(local.resolve())
    elif source.startswith((".", "/", "~")):
        raise EncoderError(f"{spec}: folder {source} does not exist")
    try:
        from speechbrain.integrations.huggingface.huggingface import HFTransformersInterface
        from speechbrain.inference.interfaces import Pretrained
    except ImportError as exc:  # torchaudio missing or broken
        raise EncoderError(f"{spec}: SpeechBrain cannot be imported here ({exc})") from None
    home = Path(os.environ.get("SER_TUNE_HOME", Path.home() / ".cache" / "ser_tune"))
    savedir = home / "speechbrain" / hashlib.sha1(source.encode()).hexdigest()[:12]
    try:
        pretrained = Pretrained.from_hparams(source=source, savedir=str(savedir))
    except Exception as exc:  # SpeechBrain raises many types for a missing hub/folder/ckpt
        raise EncoderError(f"{spec}: SpeechBrain could not load '{source}': {type(exc).__name__}: {exc}") from None
    wrappers = [m for m in pretrained.mods.values() if isinstance(m, HFTransformersInterface)]
    if not wrappers:
        raise EncoderError(f"{spec}: no Hugging Face speech encoder among the model's modules "
                           f"({', '.join(pretrained.mods.keys())})")
    wrapper = wrappers[0]
    from .hf import WAV2VEC2_FAMILY, Wav2Vec2FamilySpeechEncoder

    model = wrapper.model
    if model.config.model_type not in WAV2VEC2_FAMILY:
        raise EncoderError(f"{spec}: wrapped model type '{model.config.model_type}' is not supported")
    encoder = Wav2Vec2FamilySpeechEncoder(model, spec, normalize=bool(getattr(wrapper, "normalize_wav", True)),
                                          output_norm=bool(getattr(wrapper, "output_norm", False)))
    return freeze_for_inference(encoder)
