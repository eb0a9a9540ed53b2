"""The shared encode spread over a Ray cluster: an entry's clips in shards, one Ray task per shard.

:class:`RayShardedEncode` is a ``FeatureCache`` ``encode_clips``: the cache still takes the entry's
lock, checks it and writes it (``cache.write_entry``, renamed into place at the end); only the
encoding itself runs on the cluster. The driver cuts the entry's clips into the very batches a
local encode makes (``cache.equal_length_batches``, planned from the lengths the files' headers
predict), deals whole batches out to shards, sends each shard as soon as its audio is decoded and
gathers each shard's features as it finishes, so every clip is encoded in the same batch as
locally: the features are the same bits wherever a shard ran, as long as the encoder's kernels do
not depend on torch's thread count (the tiny encoders; a real encoder's float32 sums may round
differently at another thread count, as they already do between trials of different
``cpus_per_trial``).

How the work is sized:

- **1-CPU tasks** (``cpus_per_task``), as many at a time as the cluster has CPUs: every CPU of every
  node is busy whatever the node sizes, each with one torch thread on clips of its own: independent
  clips parallelise without the synchronisation that intra-op threads pay on the short, one-clip
  batches real corpora give (their clips rarely share a length);
- **several shards per CPU** (``shards_per_slot``, dealt out by audio length so shards cost about
  the same): Ray hands the next shard to whichever CPU frees first, so a slower or busier node
  simply takes fewer; the progress line moves as shards finish; a shard lost with its node is
  retried elsewhere (``max_retries``) at the cost of that shard only.

Each task loads the encoder once for its shard and drops it when it returns, so no Ray worker
keeps a copy into the trials that follow. Reloading costs little after a worker's first shard
(its modules are imported and the weights sit in the page cache: about 0.1 s for Whisper-base);
the first one's imports and load (seconds) are started by :meth:`RayShardedEncode.warm_up`, and the
first warm-up to finish describes the encoder to the driver, which never loads it.

On one node a short corpus is encoded faster by the driver alone (:func:`spreading_pays`): each task's
worker pays seconds of imports and an encoder load before its first clip, more than a few minutes of
audio take on the driver's own threads.
"""
from __future__ import annotations

import heapq
from typing import Sequence

import numpy as np
import torch

from . import load_encoder
from .cache import ClipWaves, EncodedClips, batches_by_length, encode_batches

SHARDS_PER_SLOT = 4
MAX_RETRIES = 3   # a shard whose node or worker died runs again elsewhere


class LengthMismatch(Exception):
    """A decoded wave is not as long as its file's header predicted."""


def plan_shards(costs: Sequence[float], count: int) -> list[list[int]]:
    """Deal items (batches) of the given costs into at most ``count`` shards of about equal cost: the
    dearest item goes to the cheapest shard so far. Shards come dearest first, so the big ones start first."""
    count = max(1, min(int(count), len(costs)))
    heap = [(0.0, s) for s in range(count)]
    shards: list[list[int]] = [[] for _ in range(count)]
    totals = [0.0] * count
    for item in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        total, s = heapq.heappop(heap)
        shards[s].append(item)
        totals[s] = total + costs[item]
        heapq.heappush(heap, (totals[s], s))
    return [shards[s] for s in sorted(range(count), key=lambda s: -totals[s]) if shards[s]]


def encode_shard(encoder_spec: str, waves: list[np.ndarray], batches: list[list[int]], boundaries: list[int],
                 need_pooled: bool, threads: int, averages: Sequence[int] = (),
                 precision: str = "fp32") -> EncodedClips | dict:
    """One shard: load the encoder, encode the batches (positions in ``waves``). No batches: only load
    it and describe it (a warm-up: the worker's imports are done once the next shard comes)."""
    torch.set_num_threads(max(1, int(threads)))   # torch ignores Ray's CPU count
    encoder = load_encoder(encoder_spec)
    if not batches:
        return encoder.describe()
    parts = list(encode_batches(encoder, waves, batches, boundaries, need_pooled, averages, precision))
    return EncodedClips.join(parts, len(waves))


def shard_task(*args) -> tuple[str, EncodedClips]:
    """The Ray task: :func:`encode_shard` and the node it ran on."""
    import ray

    return ray.get_runtime_context().get_node_id(), encode_shard(*args)


# Below this much audio a one-node study encodes in its driver (the tiny corpora of tests and quickstarts).
SPREAD_MIN_AUDIO_S = 600.0


def spreading_pays(audio_seconds: float) -> bool:
    """Whether the shared encode should run as Ray tasks (Ray initialised): always when some node other than
    the driver's has CPUs (a cluster's workers do the encode, not its head), else for at least
    SPREAD_MIN_AUDIO_S seconds of audio."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    elsewhere = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0
                 and n.get("NodeID") != here]
    return bool(elsewhere) or audio_seconds >= SPREAD_MIN_AUDIO_S


class RayShardedEncode:
    """A ``FeatureCache`` ``encode_clips`` that runs the entry's batches as Ray tasks (needs Ray initialised)."""

    def __init__(self, encoder_spec: str, *, batch_size: int = 16, cpus_per_task: int = 1,
                 shards_per_slot: int = SHARDS_PER_SLOT):
        self.encoder_spec = encoder_spec
        self.batch_size = batch_size
        self.cpus_per_task = max(1, int(cpus_per_task))
        self.shards_per_slot = max(1, int(shards_per_slot))
        self.clips_per_node: dict[str, int] = {}   # what ran where (node id -> clips), over every call
        self.tasks = 0
        self.warming: list = []                     # warm-up tasks (kept so they are not dropped)

    def slots(self) -> int:
        """Tasks the cluster runs at once: its CPUs // CPUs per task (at least 1)."""
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 0) // self.cpus_per_task))

    def task(self):
        import ray

        return ray.remote(shard_task).options(num_cpus=self.cpus_per_task, max_retries=MAX_RETRIES,
                                              scheduling_strategy="SPREAD")

    def warm_up(self) -> None:
        """One shard without clips per CPU: each worker imports torch and the encoder's library and
        loads the encoder once (seconds) while the driver loads its own copy and decodes the audio,
        so the shards that follow start on warm workers."""
        task = self.task()
        self.warming = [task.remote(self.encoder_spec, [], [], [], False, self.cpus_per_task)
                        for _ in range(self.slots())]

    def describe(self) -> dict | None:
        """The encoder's ``describe()`` as the first warm-up shard to finish loaded it (the driver then
        never loads the encoder itself: seconds of CPU on the head node); None when no warm-up
        succeeded (the caller loads it, and gets its error in its own words)."""
        import ray

        pending = list(self.warming)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                return ray.get(done[0])[1]
            except Exception:   # noqa: BLE001 - a worker that could not load it: try the next, then the caller
                continue
        return None

    def __call__(self, waves: ClipWaves, boundaries: list[int], need_pooled: bool, progress,
                 averages: Sequence[int] = (), *, precision: str) -> EncodedClips:
        """Shards planned from the clips' lengths as their headers predict them, each sent as soon as its
        own clips are decoded, so the cluster encodes while this process decodes the rest; a decoded
        length that differs from its prediction cancels what was sent, and the shards are planned again
        from the decoded lengths (the batches, and so the bits, are always those of a local encode)."""
        expected = waves.expected_lengths() if isinstance(waves, ClipWaves) else None
        asked = (boundaries, need_pooled, list(averages), precision)   # (resolved by the cache: every node alike)
        pending = self.submit(waves, expected, *asked) if expected is not None else None
        if pending is None:
            pending = self.submit(waves, [len(w) for w in waves], *asked)
        self.tasks += len(pending)
        return self.gather(pending, len(waves), progress)

    def submit(self, waves, lengths: list[int], boundaries: list[int], need_pooled: bool,
               averages: Sequence[int], precision: str) -> dict | None:
        """Send every shard (task ref -> the shard's clip positions); None, with nothing left running, when
        a decoded wave is not as long as ``lengths`` says."""
        import ray

        batches = batches_by_length(lengths, self.batch_size)
        costs = [float(sum(lengths[i] for i in batch)) for batch in batches]
        task = self.task()
        pending = {}
        try:
            for shard in plan_shards(costs, self.slots() * self.shards_per_slot):
                index = np.array([i for b in shard for i in batches[b]], dtype=np.int64)
                shard_waves = [waves[i] for i in index]   # decoded here and now: earlier shards already run
                if any(len(w) != lengths[i] for w, i in zip(shard_waves, index)):
                    raise LengthMismatch
                ends = np.cumsum([len(batches[b]) for b in shard])   # its batches as positions in its waves
                local = [list(range(end - len(batches[b]), end)) for b, end in zip(shard, ends)]
                pending[task.remote(self.encoder_spec, shard_waves, local, list(boundaries), need_pooled,
                                    self.cpus_per_task, list(averages), precision)] = index
        except BaseException as exc:   # a wave not as predicted, a file that cannot be decoded, an interrupt
            for ref in pending:
                ray.cancel(ref, force=True)
            if isinstance(exc, LengthMismatch):
                return None
            raise
        return pending

    def gather(self, pending: dict, n: int, progress) -> EncodedClips:
        """The shards' features as they finish (``pending``: task ref -> the shard's clip positions);
        cancels the rest when interrupted or when a shard fails."""
        import ray

        parts = []
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(done[0])
                node, part = ray.get(done[0])
                part.index = index[part.index]
                parts.append(part)
                self.clips_per_node[node] = self.clips_per_node.get(node, 0) + len(part)
                progress.update(len(part))
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
        return EncodedClips.join(parts, n)

    def summary(self) -> dict:
        """For study.json: Ray tasks run and clips encoded per node (node id[:8])."""
        return {"tasks": self.tasks, "slots": self.slots(),
                "clips_per_node": {node[:8]: clips for node, clips in sorted(self.clips_per_node.items())}}
