"""CREMA-D: AudioWAV/1001_DFA_ANG_XX.wav = actor_sentence_emotion_level; genders from VideoDemographics.csv."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..errors import CorpusError
from .common import Naming, Scan, corpus_files, existing_folder, scan_named

TITLE = "CREMA-D"   # in messages about its folder

NAME = re.compile(r"^(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<code>[A-Z]{3})_(?P<level>[A-Z]{1,2})$")

# "X" occurs once in the real corpus (1040_ITH_SAD_X.wav) and means the same as "XX".
LEVEL = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified", "X": "unspecified"}
DEMOGRAPHICS = "VideoDemographics.csv"


def find_demographics(root: Path, files: list[Path]) -> Path | None:
    """VideoDemographics.csv next to AudioWAV: in root, its parent, or anywhere below root (among files)."""
    for folder in (root, root.parent):
        if (folder / DEMOGRAPHICS).is_file():
            return folder / DEMOGRAPHICS
    found = [p for p in files if p.name == DEMOGRAPHICS]
    return found[0] if found else None


def read_genders(path: Path) -> dict[str, str]:
    try:
        table = pd.read_csv(path, dtype=str)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise CorpusError(f"{path}: cannot read CREMA-D demographics ({err})") from None
    for column in ("ActorID", "Sex"):
        if column not in table.columns:
            raise CorpusError(f"{path}: missing column '{column}'")
    sex = {"male": "m", "female": "f", "m": "m", "f": "f"}
    return {str(actor).strip(): sex.get(str(s).strip().lower())
            for actor, s in zip(table["ActorID"], table["Sex"]) if isinstance(actor, str)}


def scan(root: Path, view: str | None) -> Scan:
    everything = corpus_files(existing_folder(root, TITLE))
    demographics = find_demographics(root, everything)
    genders = read_genders(demographics) if demographics else {}
    naming = Naming(TITLE, "cremad", NAME, "1001_DFA_ANG_XX.wav", "CREMA-D emotion code")

    def describe(m) -> dict | str:
        if m["level"] not in LEVEL:
            return f"unknown CREMA-D emotion level '{m['level']}'"
        return {"speaker": m["actor"], "gender": genders.get(m["actor"]), "intensity": LEVEL[m["level"]],
                "text": m["sentence"]}

    return scan_named(root, naming, view, describe, everything)
