"""The data layer of ser_tune: corpora -> table of clips, audio decoding, speaker-independent splits."""
from .audio import SAMPLE_RATE, AudioStore, audio_info, crop, load_audio, pad_batch
from .corpus import CORPORA, Corpus, load_corpus
from .errors import AudioError, CorpusError, DataError
from .labels import EMOTIONS, label_maps, map_labels
from .splits import Split, leave_speakers_out_folds, make_split, random_split, speaker_split
from .synthetic import generate_synthetic

__all__ = [
    "AudioError", "AudioStore", "CORPORA", "Corpus", "CorpusError", "DataError", "EMOTIONS", "SAMPLE_RATE", "Split",
    "audio_info", "crop", "generate_synthetic", "label_maps", "leave_speakers_out_folds", "load_audio",
    "load_corpus", "make_split", "map_labels", "pad_batch", "random_split", "speaker_split",
]
