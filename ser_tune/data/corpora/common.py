"""Helpers the corpus scanners share: walking a corpus folder, finding wavs, code -> a view's class."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..audio import unread_format_reason
from ..errors import CorpusError
from ..labels import code_table, view_label


@dataclass
class Scan:
    """What a scanner found: usable-looking records (audio not yet checked) and skipped files.

    A record may carry "listed_as" (how its source spells it, e.g. a manifest line) for the
    reason given when another record names the same file; source names the manifest in errors.
    """

    records: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    source: Path | None = None

    def skip(self, path, reason: str) -> None:
        self.skipped.append({"path": str(path), "reason": reason})

    def take_wavs(self, files: list[Path]) -> list[Path]:
        """The .wav files among files; audio of formats the loaders do not read is skipped with the reason."""
        wavs = []
        for path in files:
            reason = unread_format_reason(path)
            if reason is not None:
                self.skip(path, reason)
            elif path.suffix.lower() == ".wav":
                wavs.append(path)
        return wavs

    def add(self, path, found: tuple[str, str] | str, fields: dict) -> None:
        """A record of ``path`` with ``found``'s (native name, view label) and ``fields``, or ``path`` skipped
        for the reason ``found`` gives."""
        if isinstance(found, str):
            self.skip(path, found)
        else:   # the path as walked: build_table resolves (and de-duplicates) it
            self.records.append({"path": str(path), "label": found[1], **fields, "original_label": found[0]})


def existing_folder(root: Path, corpus_title: str) -> Path:
    if not root.exists():
        raise CorpusError(f"{root}: {corpus_title} folder not found")
    if not root.is_dir():
        raise CorpusError(f"{root}: not a folder (expected the {corpus_title} corpus folder)")
    return root


def corpus_files(root: Path) -> list[Path]:
    """Every file under root (any depth, sorted), following symbolic links to folders and files.

    Each real folder is walked once, so a link back up the tree (a loop) or two links to one
    folder cannot make the walk endless or list a folder twice.
    """
    seen: set[str] = set()
    found: list[Path] = []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        found.extend(Path(folder) / name for name in files)
    return sorted(p for p in found if p.is_file())


def wav_files(root: Path) -> list[Path]:
    """Every *.wav under root (any depth, suffix case-insensitive, links followed), sorted."""
    return [p for p in corpus_files(root) if p.suffix.lower() == ".wav"]


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


@dataclass(frozen=True)
class Naming:
    """How a corpus names its audio files: ``pattern`` matches a file stem and has a ``code`` group
    (the emotion code of ``corpus`` in label_maps.yaml, described as ``code_name``)."""
    title: str
    corpus: str
    pattern: re.Pattern
    example: str
    code_name: str


def scan_named(root: Path, naming: Naming, view: str | None, describe: Callable[[re.Match], "dict | str"],
               files: list[Path] | None = None) -> Scan:
    """Records of the wav files under ``root`` (or among ``files``, every file under it) whose names follow
    ``naming``; ``describe(match)`` gives a record's other columns (speaker, gender, ...) or the reason to
    skip the file. Stops when no file is named so."""
    result = Scan()
    files = result.take_wavs(corpus_files(existing_folder(root, naming.title)) if files is None else files)
    matched = 0
    for path in files:
        m = naming.pattern.match(path.stem)
        if m is None:
            result.skip(path, f"not {article(naming.title)} {naming.title} file name (expected e.g. {naming.example})")
            continue
        matched += 1
        fields = describe(m)
        result.add(path, fields if isinstance(fields, str) else label_for(m["code"], naming.corpus, view,
                                                                          naming.code_name), fields)
    if matched == 0:
        raise CorpusError(f"{root}: no {naming.title} files found ({len(files)} .wav files, none named "
                          f"like {naming.example})")
    return result


def article(word: str) -> str:
    return "an" if word[:1].upper() in "AEIOU" else "a"
