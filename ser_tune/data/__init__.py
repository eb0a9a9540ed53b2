"""The data layer of ser_tune: corpora -> table of clips, audio decoding, speaker-independent splits."""
from .audio import (MIN_DURATION, SAMPLE_RATE, AudioStore, audio_info, crop, decoded_length, load_audio,
                    pad_batch)
from .corpus import CORPORA, Corpus, check_root, load_corpus
from .errors import AudioError, CorpusError, DataError
from .labels import EMOTIONS, LabelMapper, label_maps, map_labels, pick_view
from .splits import (Split, check_split, leave_speakers_out_folds, make_split, outer_fold_assignments,
                     random_split, speaker_folds, speaker_split)
from .synthetic import generate_synthetic

__all__ = [
    "AudioError", "AudioStore", "CORPORA", "Corpus", "CorpusError", "DataError", "EMOTIONS", "LabelMapper",
    "MIN_DURATION", "SAMPLE_RATE", "Split", "audio_info", "check_root", "check_split", "crop", "generate_synthetic",
    "label_maps", "leave_speakers_out_folds", "load_audio", "load_corpus", "make_split", "map_labels",
    "outer_fold_assignments", "pad_batch", "pick_view", "random_split", "speaker_folds", "speaker_split",
]
