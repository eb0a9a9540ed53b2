"""Helpers the corpus scanners share: finding wavs, turning a label code into a view's class."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CorpusError
from ..labels import code_table, view_label


@dataclass
class Scan:
    """What a scanner found: usable-looking records (audio not yet checked) and skipped files."""

    records: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    def skip(self, path, reason: str) -> None:
        self.skipped.append({"path": str(path), "reason": reason})


def existing_folder(root: Path, corpus_title: str) -> Path:
    if not root.exists():
        raise CorpusError(f"{root}: {corpus_title} folder not found")
    if not root.is_dir():
        raise CorpusError(f"{root}: not a folder (expected the {corpus_title} corpus folder)")
    return root


def wav_files(root: Path) -> list[Path]:
    """Every *.wav under root (any depth, suffix case-insensitive), sorted for determinism."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() == ".wav" and p.is_file())


def label_for(code: str, corpus: str, view: str | None, what: str) -> tuple[str, str] | str:
    """(native name, view label) for an emotion code, or the reason the clip is skipped."""
    native = code_table(corpus).get(code)
    if native is None:
        return f"unknown {what} '{code}'"
    if view is None:
        return native, native
    label = view_label(native, view)
    if label is None:
        return f"'{native}' (code {code}) has no counterpart in view {view}"
    return native, label
