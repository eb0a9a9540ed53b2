"""An encoder spec, the text that names an encoder, parsed once: ``hf:<hub id or folder>``,
``speechbrain:<hub id or folder>`` or ``tiny-<family>`` (see the package's docstring)."""
from __future__ import annotations

from dataclasses import dataclass


class EncoderError(ValueError):
    """An encoder spec cannot be loaded or used; the message names the spec or folder."""


# The architectures of the tiny randomly initialised encoders (``tiny-<family>``: see .tiny).
TINY_FAMILIES = ("whisper", "wav2vec2", "hubert", "wavlm")

# The families named "<family>:<hub id or folder>": the module that loads each and its loader, called
# with (source, spec) and returning a SpeechEncoder.
LOADERS = {"hf": ("hf", "load_hf_encoder"), "speechbrain": ("speechbrain", "load_speechbrain_encoder")}
SPEC_FORMS = "'hf:<hub id or folder>', 'speechbrain:<hub id or folder>' or " + ", ".join(
    f"'tiny-{f}'" for f in TINY_FAMILIES)


@dataclass(frozen=True)
class EncoderSpec:
    family: str    # "hf", "speechbrain" or "tiny"
    source: str    # the hub id or folder; for "tiny", the architecture (whisper, wav2vec2, ...)

    @classmethod
    def parse(cls, spec: str) -> "EncoderSpec":
        """The spec's family and source, checked without loading anything; one clear line otherwise."""
        if not isinstance(spec, str) or not spec:
            raise EncoderError(f"encoder spec must be a non-empty string, one of {SPEC_FORMS}")
        family, colon, source = spec.partition(":")
        if colon and family in LOADERS:
            if not source:
                raise EncoderError(f"encoder spec '{spec}' names no model")
            return cls(family, source)
        if spec.startswith("tiny-"):
            if spec[5:] not in TINY_FAMILIES:
                raise EncoderError(f"unknown encoder '{spec}'; tiny encoders: "
                                   + ", ".join(f"tiny-{f}" for f in TINY_FAMILIES))
            return cls("tiny", spec[5:])
        raise EncoderError(f"unknown encoder '{spec}'; use {SPEC_FORMS}")

    @property
    def is_tiny(self) -> bool:
        return self.family == "tiny"

    def __str__(self) -> str:
        return f"tiny-{self.source}" if self.is_tiny else f"{self.family}:{self.source}"
