"""IEMOCAP: Session{n}/sentences/wav/<dialog>/<utt>.wav, labelled by Session{n}/dialog/EmoEvaluation/<dialog>.txt.

A label line looks like
    [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]
(start - end, utterance id, category, [valence, activation, dominance] on a 1-5 scale).
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import CorpusError
from .common import Scan, corpus_files, existing_folder, label_for

TITLE = "IEMOCAP"   # in messages about its folder

LABEL_LINE = re.compile(
    r"^\[\s*(?P<start>[\d.]+)\s*-\s*(?P<end>[\d.]+)\s*\]\s+(?P<utt>\S+)\s+(?P<code>\S+)\s+"
    r"\[\s*(?P<v>[\d.]+)\s*,\s*(?P<a>[\d.]+)\s*,\s*(?P<d>[\d.]+)\s*\]\s*$")
# Ses01F_impro01_F000, Ses03M_script02_1_M012: session, dialog, speaker gender letter + turn number.
UTTERANCE = re.compile(r"^(?P<session>Ses\d{2})[FM]_.+_(?P<gender>[FM])\d+[a-z]?$")


def read_labels(files: list[Path]) -> dict[str, dict]:
    labels: dict[str, dict] = {}
    for file in files:
        text = file.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.startswith("["):
                continue   # headers, per-annotator lines (C-E1:, A-E1:, ...) and blank lines
            m = LABEL_LINE.match(line.strip())
            if m is None:
                raise CorpusError(f"{file}:{number}: malformed IEMOCAP label line: {line.strip()!r}")
            # IEMOCAP's activation is the arousal dimension
            labels[m["utt"]] = {"code": m["code"], "valence": float(m["v"]), "arousal": float(m["a"]),
                                "dominance": float(m["d"])}
    return labels


def scan(root: Path, view: str | None) -> Scan:
    existing_folder(root, TITLE)
    everything = corpus_files(root)
    # the per-dialog evaluation files (EmoEvaluation/*.txt, not its Categorical/Attribute subfolders)
    evaluations = [p for p in everything if p.suffix == ".txt" and p.parent.name == "EmoEvaluation"]
    if not evaluations:
        raise CorpusError(f"{root}: no IEMOCAP label files found "
                          f"(expected Session*/dialog/EmoEvaluation/*.txt)")
    labels = read_labels(evaluations)
    dialogs = {p.stem for p in evaluations}
    result = Scan()
    files = result.take_wavs(everything)
    matched = 0
    for path in files:
        utt = path.stem
        if utt in dialogs:
            result.skip(path, "dialog-level recording, not an utterance")
            continue
        m = UTTERANCE.match(utt)
        if m is None:
            result.skip(path, "not an IEMOCAP utterance file name (expected e.g. Ses01F_impro01_F000.wav)")
            continue
        matched += 1
        entry = labels.get(utt)
        if entry is None:
            result.skip(path, f"no label for utterance {utt} in any EmoEvaluation file")
            continue
        result.add(path, label_for(entry["code"], "iemocap", view, "IEMOCAP category"),
                   {"speaker": m["session"] + m["gender"], "gender": m["gender"].lower(),
                    "session": m["session"], **{k: entry[k] for k in ("arousal", "valence", "dominance")}})
    if matched == 0:
        raise CorpusError(f"{root}: no IEMOCAP utterance wavs found ({len(files)} .wav files, none named "
                          f"like Ses01F_impro01_F000.wav)")
    return result
