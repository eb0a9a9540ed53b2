"""Tiny fixture corpora written in each corpus's own naming (a few short tones per corpus)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def write_wav(path: Path, *, sr: int = 16000, seconds: float = 0.3, channels: int = 1,
              freq: float = 220.0, amplitude: float = 0.3, subtype: str = "PCM_16") -> Path:
    """A short sine tone (stereo: the right channel at half amplitude)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(sr * seconds)) / sr
    tone = amplitude * np.sin(2 * np.pi * freq * t)
    data = tone if channels == 1 else np.stack([tone] + [0.5 * tone] * (channels - 1), axis=1)
    sf.write(str(path), data.astype(np.float32), sr, subtype=subtype)
    return path


EMODB_FILES = ("03a01Wa.wav", "03a01Aa.wav", "08a02Fb.wav", "08b01Ta.wav", "09a04Nc.wav",
               "09a05La.wav", "10b02Ea.wav", "10b03Wb.wav")


def make_emodb(root: Path, *, distribution_layout: bool = True) -> Path:
    """EmoDB as shipped (root/wav/*.wav) or flat; plus a non-EmoDB wav and an unknown letter X."""
    folder = root / "wav" if distribution_layout else root
    for i, name in enumerate(EMODB_FILES):
        write_wav(folder / name, freq=200 + 20 * i)
    write_wav(folder / "03a01Xa.wav")          # unknown emotion letter
    write_wav(folder / "readme_tone.wav")      # not an EmoDB name
    (folder / "notes.txt").write_text("not audio")
    return root


RAVDESS_FILES = (
    "Actor_01/03-01-01-01-01-01-01.wav",   # neutral, male (odd actor)
    "Actor_01/03-01-05-02-01-01-01.wav",   # angry, strong
    "Actor_02/03-01-02-01-02-01-02.wav",   # calm -> boredom, female
    "Actor_02/03-01-03-01-01-02-02.wav",   # happy
    "Actor_03/03-01-04-02-02-01-03.wav",   # sad
    "Actor_03/03-01-06-01-01-01-03.wav",   # fearful
    "Actor_04/03-01-07-01-01-01-04.wav",   # disgust
    "Actor_04/03-01-08-01-01-01-04.wav",   # surprised -> dropped in emodb7
    "Actor_04/03-02-05-01-01-01-04.wav",   # song, not speech
)
RAVDESS_STEREO = "Actor_02/03-01-02-01-02-01-02.wav"


def make_ravdess(root: Path) -> Path:
    for i, rel in enumerate(RAVDESS_FILES):
        write_wav(root / rel, sr=48000, channels=2 if rel == RAVDESS_STEREO else 1, freq=180 + 15 * i)
    return root


CREMAD_FILES = ("1001_DFA_ANG_XX.wav", "1001_IEO_HAP_LO.wav", "1002_TIE_SAD_HI.wav",
                "1002_DFA_NEU_MD.wav", "1040_ITH_SAD_X.wav", "1040_DFA_FEA_HI.wav",
                "1091_IEO_DIS_LO.wav")


def make_cremad(root: Path, *, demographics: bool = True) -> Path:
    for i, name in enumerate(CREMAD_FILES):
        write_wav(root / "AudioWAV" / name, freq=190 + 10 * i)
    write_wav(root / "AudioWAV" / "1001_DFA_BOR_XX.wav")   # unknown emotion code
    if demographics:
        (root / "VideoDemographics.csv").write_text(
            "ActorID,Age,Sex,Race,Ethnicity\n"
            "1001,51,Male,Caucasian,Not Hispanic\n"
            "1002,21,Female,Caucasian,Not Hispanic\n"
            "1040,23,Male,African American,Not Hispanic\n"
            "1091,29,Female,Asian,Not Hispanic\n")
    return root


IEMOCAP_EVAL = {
    ("Session1", "Ses01F_impro01"): [
        ("Ses01F_impro01_F000", "neu", "2.5000, 2.5000, 2.5000"),
        ("Ses01F_impro01_M000", "ang", "1.5000, 4.0000, 4.5000"),
        ("Ses01F_impro01_F001", "exc", "4.0000, 3.5000, 3.0000"),
        ("Ses01F_impro01_M001", "xxx", "2.0000, 3.0000, 3.0000"),
    ],
    ("Session2", "Ses02M_script01_1"): [
        ("Ses02M_script01_1_F000", "sad", "1.5000, 2.0000, 2.0000"),
        ("Ses02M_script01_1_M000", "hap", "4.5000, 3.0000, 3.5000"),
        ("Ses02M_script01_1_M001", "fru", "2.0000, 3.5000, 3.0000"),
    ],
}


def make_iemocap(root: Path) -> Path:
    base = root / "IEMOCAP_full_release"
    for d, ((session, dialog), lines) in enumerate(IEMOCAP_EVAL.items()):
        text = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for j, (utt, code, vad) in enumerate(lines):
            text += [f"[{1.5 * j:.4f} - {1.5 * j + 1.2:.4f}]\t{utt}\t{code}\t[{vad}]",
                     "C-E1:\tNeutral;\t()", "A-E1:\tval 3; act 2; dom  3;\t()", ""]
            write_wav(base / session / "sentences" / "wav" / dialog / f"{utt}.wav", freq=200 + 10 * j + 5 * d)
        evaluation = base / session / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
        evaluation.parent.mkdir(parents=True, exist_ok=True)
        evaluation.write_text("\n".join(text) + "\n")
        # The per-annotator subfolder uses another format and must be ignored.
        (evaluation.parent / "Categorical").mkdir(exist_ok=True)
        (evaluation.parent / "Categorical" / f"{dialog}_e1_cat.txt").write_text(f"{lines[0][0]} :Neutral; ()\n")
        write_wav(base / session / "dialog" / "wav" / f"{dialog}.wav", seconds=0.5, freq=300 + d)   # whole dialog
    return root


def make_csv_manifest(root: Path) -> Path:
    """manifest.csv with relative paths, optional columns, one missing file and one empty label."""
    for i in range(6):
        write_wav(root / "audio" / f"clip{i}.wav", freq=200 + 30 * i)
    rows = [
        "path,label,speaker,gender,arousal,valence",
        "audio/clip0.wav,happy,s1,female,3.5,4.0",
        "audio/clip1.wav,angry,s1,female,4.5,1.5",
        "audio/clip2.wav,calm,s2,Male,2.0,3.0",
        "audio/clip3.wav,happy,s2,Male,,",
        "audio/clip4.wav,grumpy,s3,f,3.0,2.0",
        "audio/clip5.wav,,s3,f,3.0,2.0",
        "audio/missing.wav,sad,s3,f,1.5,1.5",
    ]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def write_bad_files(folder: Path, names: dict[str, str]) -> dict[str, Path]:
    """Broken files by kind -> the name to give them: garbage, empty, zero_length, silent, nan."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for kind, name in names.items():
        path = folder / name
        if kind == "garbage":
            path.write_bytes(b"this is not a RIFF file at all" * 10)
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "zero_length":
            sf.write(str(path), np.zeros(0, dtype=np.float32), 16000)
        elif kind == "silent":   # 0.5 s: long enough that silence, not the minimum duration, is the reason
            sf.write(str(path), np.zeros(8000, dtype=np.float32), 16000)
        elif kind == "nan":
            wave = np.full(8000, 0.1, dtype=np.float32)
            wave[100] = np.nan
            sf.write(str(path), wave, 16000, subtype="FLOAT")
        else:
            raise ValueError(f"unknown bad-file kind {kind!r}")
        out[kind] = path
    return out


def make_ravdess_linked(root: Path, store: Path) -> Path:
    """RAVDESS whose Actor_XX entries are symbolic links to the actors' folders kept in store."""
    make_ravdess(store)
    root.mkdir(parents=True, exist_ok=True)
    for actor in sorted(store.glob("Actor_*")):
        (root / actor.name).symlink_to(actor, target_is_directory=True)
    return root


def truncate(path: Path, size: int = 1000) -> Path:
    """Cut a file to its first size bytes (a wav keeps its header, which still declares all the audio)."""
    path.write_bytes(path.read_bytes()[:size])
    return path


def wav_with_odd_chunk(path: Path, *, sr: int = 16000, seconds: float = 0.5) -> Path:
    """A 16-bit wav whose header holds an odd-sized chunk (and its pad byte) before the data chunk."""
    import struct

    t = np.arange(int(sr * seconds)) / sr
    data = (0.3 * np.sin(2 * np.pi * 250 * t) * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, sr, sr * 2, 2, 16)
    odd = b"abc"
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"note" + struct.pack("<I", len(odd)) + odd + b"\0"
            + b"data" + struct.pack("<I", len(data)) + data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path
