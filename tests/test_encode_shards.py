"""The shared encode: shards as Ray tasks give the local encode's bits; entries appear whole or not at all."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from ser_tune.data import SAMPLE_RATE, AudioStore, crop, decoded_length, load_audio
from ser_tune.encoders import load_encoder, spec_fingerprint
from ser_tune.encoders.cache import STAGING_PREFIX, EncodedClips, FeatureCache
from ser_tune.encoders.distributed import RayShardedEncode, plan_shards
from ser_tune.study.prepare import encode_once

SPEC = "tiny-whisper"


@pytest.fixture(scope="module")
def clips(synthetic_corpus):
    table = synthetic_corpus.table.iloc[:60].reset_index(drop=True)
    audio = AudioStore(SAMPLE_RATE)
    return table, [str(p) for p in table["path"]], audio


def _cache(root: Path, **kwargs) -> FeatureCache:
    return FeatureCache(root, SPEC, spec_fingerprint(SPEC), lambda: load_encoder(SPEC), **kwargs)


def _wave(clips, max_length):
    _, paths, audio = clips
    return lambda i: crop(audio.get(paths[i]), max_length, SAMPLE_RATE)


def test_shards_cover_every_batch_once_at_about_equal_cost():
    costs = [9.0, 1.0, 1.0, 5.0, 3.0, 3.0, 2.0, 8.0, 4.0, 4.0]
    shards = plan_shards(costs, 3)
    assert sorted(i for s in shards for i in s) == list(range(len(costs)))
    totals = [sum(costs[i] for i in s) for s in shards]
    assert max(totals) - min(totals) <= max(costs)
    assert totals == sorted(totals, reverse=True), "dearest shard first"
    assert len(plan_shards(costs, 50)) == len(costs)        # never an empty shard
    assert plan_shards([2.0], 0) == [[0]]


def test_joined_parts_must_cover_each_clip_once():
    part = EncodedClips(index=np.array([1, 0]), lengths=np.array([3, 4]), pooled=np.zeros((2, 1, 2), np.float32))
    joined = EncodedClips.join([part], 2)
    assert joined.lengths.tolist() == [4, 3]
    with pytest.raises(ValueError, match="exactly once"):
        EncodedClips.join([part, part], 4)
    with pytest.raises(ValueError, match="exactly once"):
        EncodedClips.join([part], 3)


def test_a_killed_encode_leaves_no_entry_a_trial_would_read(clips, tmp_path, monkeypatch):
    table, paths, _ = clips
    cache = _cache(tmp_path)
    folder = tmp_path / cache.key(paths, 1.0)
    real_replace = os.replace
    moved = []

    def killed_after_two(src, dst):   # the process dies while renaming the files into place
        if len(moved) == 2:
            raise KeyboardInterrupt
        moved.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        cache.get(paths, _wave(clips, 1.0), 1.0, [1])
    monkeypatch.setattr(os, "replace", real_replace)
    assert moved and "meta.json" not in moved and not (folder / "meta.json").exists()
    assert not any(folder.glob(f"{STAGING_PREFIX}*")), "the staging folder goes with the failed encode"

    (folder / f"{STAGING_PREFIX}killed").mkdir()            # as a SIGKILL would leave it
    again = _cache(tmp_path)
    assert not again.has(paths, 1.0)
    feats = again.get(paths, _wave(clips, 1.0), 1.0, [1])
    assert again.has(paths, 1.0, [1]) and not again.has(paths, 1.0, [0])
    assert again.stats.misses == 1 and feats.pooled.shape[0] == len(paths)
    assert not any(folder.glob(f"{STAGING_PREFIX}*"))


def test_concurrent_misses_encode_an_entry_once(clips, tmp_path):
    _, paths, _ = clips
    calls = []
    started = threading.Event()

    def slow_encode(cache):
        def encode(waves, boundaries, need_pooled, progress, averages=(), *, precision):
            calls.append(1)
            started.set()
            threading.Event().wait(0.5)                      # the other caller queues on the lock meanwhile
            return cache.encode_here(waves, boundaries, need_pooled, progress, averages, precision=precision)
        return encode

    caches = [_cache(tmp_path), _cache(tmp_path)]
    for cache in caches:
        cache.encode_clips = slow_encode(cache)
    first = threading.Thread(target=caches[0].get, args=(paths, _wave(clips, 1.0), 1.0))
    first.start()
    started.wait(30)
    caches[1].get(paths, _wave(clips, 1.0), 1.0)
    first.join(30)
    assert len(calls) == 1 and caches[1].stats.hits == 1 and caches[1].stats.misses == 0


def test_local_encode_shows_progress_on_stderr_only(clips, tmp_path, capsys):
    table, paths, _ = clips
    done = encode_once(table, SPEC, tmp_path, [1.0], [None])
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{len(paths)}/{len(paths)}" in err and "clip/s" in err
    assert done["cache"]["misses"] == 1


def test_a_study_whose_features_are_all_cached_never_loads_the_encoder(clips, tmp_path, monkeypatch):
    table, _, _ = clips
    first = encode_once(table, SPEC, tmp_path, [1.0], [None])
    import ser_tune.study.prepare as prepare

    def no_encoder(spec, *args, **kwargs):
        raise AssertionError(f"loaded {spec} on a warm cache")

    monkeypatch.setattr(prepare, "load_encoder", no_encoder)
    again = encode_once(table, SPEC, tmp_path, [1.0], [None])
    assert again["encoder"] == first["encoder"] and again["cache"]["hits"] == 1 and again["cache"]["misses"] == 0
    np.testing.assert_array_equal(again["pooled"], first["pooled"])


@pytest.mark.slow
def test_shards_on_ray_give_the_local_bits(clips, tmp_path, capfd):
    """Several shards on a 2-CPU Ray, against this process's encode: the same pooled features, frames and
    lengths, bit for bit, on cropped (equal-length batches) and whole clips (varied lengths). In bf16 on
    every CPU (emulated where it is not in hardware): the shards run in the cache's precision."""
    import ray

    table, paths, _ = clips
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        spread = RayShardedEncode(SPEC, batch_size=4)
        assert spread.slots() == 2
        # shards planned from the headers' lengths and sent as they are decoded; and from a wrong
        # prediction, which sends shards, finds the first decoded length that differs and plans again
        hints = {"decoded": None, "header": lambda ml: lambda i: decoded_length(paths[i], SAMPLE_RATE, ml),
                 "wrong": lambda ml: lambda i: 7}
        for max_length, boundaries, averages in ((1.0, [0, 1], []), (None, [2], [1, 2])):
            here = _cache(tmp_path / "here", precision="bf16").get(paths, _wave(clips, max_length), max_length,
                                                                   boundaries, averages=averages)
            for name, hint in hints.items():
                shards = _cache(tmp_path / "ray" / name, encode_clips=spread, progress=True, precision="bf16")
                there = shards.get(paths, _wave(clips, max_length), max_length, boundaries,
                                   length_hint=hint(max_length) if hint else None, averages=averages)
                assert shards.stats.misses == 1
                assert np.array_equal(here.pooled, there.pooled) and np.array_equal(here.lengths, there.lengths), name
                for b in boundaries:
                    assert np.array_equal(here.frames[b][0], there.frames[b][0]), name
                    assert np.array_equal(here.frames[b][1], there.frames[b][1]), name
                for a in averages:   # every hidden state's frames, in float16
                    assert np.array_equal(here.layer_frames[a][0], there.layer_frames[a][0]), name
                    assert np.array_equal(here.layer_frames[a][1], there.layer_frames[a][1]), name
        err = capfd.readouterr().err
        assert f"{len(paths)}/{len(paths)}" in err
        summary = spread.summary()
        assert summary["tasks"] > 2 and sum(summary["clips_per_node"].values()) == 6 * len(paths)
        # encode_once takes the Ray path when Ray is up, and a second study finds the entries
        done = encode_once(table, SPEC, tmp_path / "ray" / "header", [1.0], [None], precision="bf16")
        assert done["cache"]["hits"] == 1 and done["cache"]["misses"] == 0 and "ray" not in done["cache"]
    finally:
        ray.shutdown()



@pytest.mark.parametrize("rate,channels", [(16000, 1), (22050, 1), (44100, 2), (8000, 1)])
@pytest.mark.parametrize("max_length", [None, 0.5, 3.0])
def test_the_header_predicts_the_decoded_length(tmp_path, rate, channels, max_length):
    import soundfile as sf

    rng = np.random.default_rng(rate)
    for frames in (rate, rate + 7, 3 * rate // 2 + 1):
        path = tmp_path / f"{rate}-{channels}-{frames}.wav"
        sf.write(path, 0.1 * rng.standard_normal((frames, channels)), rate)
        decoded = crop(load_audio(path, SAMPLE_RATE), max_length, SAMPLE_RATE)
        assert decoded_length(path, SAMPLE_RATE, max_length) == len(decoded), (frames, rate)
