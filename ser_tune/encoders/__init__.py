"""Speech encoders behind one interface (see ``base.SpeechEncoder``), chosen by a spec string:

- ``hf:<hub id or folder>``: Hugging Face Whisper / wav2vec2 / HuBERT / WavLM / data2vec-audio;
- ``speechbrain:<hub id or folder>``: a SpeechBrain model wrapping a wav2vec2-family encoder;
- ``tiny-<family>``: a small randomly initialised model of the same class (tests, quickstart).
"""
from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

from .spec import LOADERS, TINY_FAMILIES, EncoderError, EncoderSpec

# The encoder classes import torch (seconds): loaded on first use, so that checking a config's encoder
# spec, or a command's bad input, answers at once.
LAZY = {"SpeechEncoder": "base", "lengths_to_mask": "base", "average_in_time": "base"}


def __getattr__(name: str):
    if name in LAZY:
        return getattr(importlib.import_module(f"{__name__}.{LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_spec(spec: str) -> str:
    """Validate a spec's form without loading anything (for config checks)."""
    EncoderSpec.parse(spec)
    return spec


def resolve_spec(spec: str, bases=()) -> str:
    """Make a local-folder spec absolute (looked up in ``bases``, then the working directory), so the
    same spec names the same folder in every Ray worker, whatever its working directory. Hub ids
    and tiny specs are returned as they are.

    What names a folder is told by its text, since a hub id cannot be checked offline: a source that
    starts with ``/``, ``.`` or ``~``, has two ``/`` or more (a hub id is ``name`` or ``owner/name``), or
    whose first part exists here. Such a folder that does not exist is an EncoderError at once.
    """
    parsed = EncoderSpec.parse(spec)
    if parsed.is_tiny:
        return spec
    source = parsed.source
    path = Path(source).expanduser()
    bases = [] if path.is_absolute() else [Path(base) for base in [*bases, Path.cwd()]]
    found = next((base / path for base in bases if (base / path).exists()), path if path.exists() else None)
    if found is not None:
        return str(EncoderSpec(parsed.family, str(found.resolve())))
    first_part_here = len(path.parts) > 1 and any((base / path.parts[0]).exists() for base in bases)
    if source.startswith(("/", ".", "~")) or source.count("/") > 1 or first_part_here:
        raise EncoderError(f"no encoder folder {(Path.cwd() / path).resolve()} ({spec})")
    return spec


def spec_fingerprint(spec: str) -> str:
    """Identify an encoder's weights without loading it (cache keys; a head-only trial never loads it).

    A local folder is identified by its files' names, sizes and modification times; a hub id or
    tiny spec by its text (tiny weights come from a fixed seed).
    """
    digest = hashlib.sha256(spec.encode())
    parsed = EncoderSpec.parse(spec)
    folder = None if parsed.is_tiny else Path(parsed.source).expanduser()
    if folder is not None and folder.is_dir():
        digest.update(str(folder.resolve()).encode())
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                st = f.stat()
                digest.update(f"{f.relative_to(folder)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return digest.hexdigest()[:16]


def load_encoder(spec: str, num_layers: int | None = None) -> SpeechEncoder:
    """Load an encoder in eval mode with every parameter frozen (training unfreezes what it trains).

    ``num_layers`` truncates it to its first layers (``SpeechEncoder.truncate``): how a model
    folder that stored its layer count re-creates a truncated encoder.
    """
    parsed = EncoderSpec.parse(spec)
    if parsed.is_tiny:
        from .tiny import load_tiny_encoder

        encoder = load_tiny_encoder(parsed.source)
    else:
        module, loader = LOADERS[parsed.family]
        encoder = getattr(importlib.import_module(f"{__name__}.{module}"), loader)(parsed.source, spec)
    if num_layers is not None:
        encoder.truncate(num_layers)
    return encoder


__all__ = ["EncoderError", "EncoderSpec", "SpeechEncoder", "load_encoder", "check_spec", "resolve_spec", "spec_fingerprint", "lengths_to_mask", "average_in_time",
           "TINY_FAMILIES"]
