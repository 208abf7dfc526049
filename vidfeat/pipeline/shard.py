"""Who runs which videos: the partition of a collection into N shards, and the shard a process
gets from its launcher (torchrun, SLURM job arrays, srun tasks) or from ``--shard I/N``.

The partition. A video's shard is a hash of its name (its path relative to the input root, the
key the output file uses) and of N alone::

    shard = int.from_bytes(sha1(name.encode("utf-8")).digest()[:8], "big") % N

It never depends on the listing order, file sizes or the other inputs, so adding videos to a
collection never moves a finished video to another shard, and rerunning any shard resumes it.
sha1 (not Python's ``hash``, which is salted per process) gives the same shard in every process,
Python version and machine. Videos of a webdataset tar shard (``VideoFile.group``) hash their
tar's file name instead of their own: each tar is read by one process only.

Each shard writes an ordinary vidfeat file beside the final one (``feats.h5`` ->
``feats.h5.shards/00003-of-00008.h5``) with the usual crash safety and resume; ``vidfeat merge``
(:mod:`vidfeat.store.merge`) builds the final file from them.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import VidfeatError
from ..store.format import shard_file_name
from ..video.inputs import VideoFile

__all__ = ["Shard", "TorchrunEnv", "torchrun_env", "shard_of", "parse_shard", "detect_shard", "shard_output", "shards_dir", "select"]


@dataclass(frozen=True)
class Shard:
    index: int  # 0 <= index < count
    count: int
    source: str  # where it came from, for the start-up line ("--shard", "torchrun RANK/WORLD_SIZE", ...)
    local_rank: int | None = None  # torchrun: the rank on this machine (selects cuda:LOCAL_RANK)
    local_count: int | None = None  # torchrun: ranks on this machine (they share its decode cores)
    distributed: bool = False  # started by torchrun: the ranks meet in a barrier and rank 0 merges

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(name: str, count: int) -> int:
    """The shard (0 .. count - 1) of the video named ``name`` (see the module docstring)."""
    digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count


def select(videos: Sequence[VideoFile], shard: Shard) -> list[VideoFile]:
    """The videos of ``shard``, in their given order (a tar shard's videos by the tar's name)."""
    return [v for v in videos if shard_of(v.group or v.name, shard.count) == shard.index]


def parse_shard(text: str) -> Shard:
    """``"I/N"`` -> Shard; ValueError with a one-line reason otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise ValueError(f"--shard {text!r}: expected I/N, e.g. 3/8 (shard 3 of 8, counting from 0)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise ValueError(f"--shard {text}: need 0 <= I < N, got I={index}, N={count}")
    return Shard(index, count, "--shard")


def _int(env: Mapping[str, str], key: str) -> int | None:
    value = env.get(key, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise VidfeatError(f"the environment variable {key}={value!r} is not an integer") from None


@dataclass(frozen=True)
class TorchrunEnv:
    """This process's place under torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``LOCAL_WORLD_SIZE``); one process on its own without them."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def torchrun_env(env: Mapping[str, str] | None = None) -> TorchrunEnv:
    """The torchrun variables of ``env`` (default: ``os.environ``); a VidfeatError names one that
    is not an integer. Missing ones take the values of a single process."""
    env = os.environ if env is None else env
    values = {key: _int(env, name) for key, name in (("rank", "RANK"), ("world_size", "WORLD_SIZE"),
                                                     ("local_rank", "LOCAL_RANK"), ("local_world_size", "LOCAL_WORLD_SIZE"))}  # fmt: skip
    return TorchrunEnv(**{key: value for key, value in values.items() if value is not None})


def detect_shard(env: Mapping[str, str] | None = None) -> Shard | None:
    """The shard the launcher gave this process, or None (a single run).

    In order: torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``), a SLURM job
    array (``SLURM_ARRAY_TASK_ID`` - ``SLURM_ARRAY_TASK_MIN`` of ``SLURM_ARRAY_TASK_COUNT``, refused if the array has gaps), srun
    tasks (``SLURM_PROCID`` of ``SLURM_NTASKS``). One process in all (world size 1, one task)
    is a single run.
    """
    env = os.environ if env is None else env
    ranks = torchrun_env(env)
    if _int(env, "RANK") is not None and ranks.distributed:
        return _checked(Shard(ranks.rank, ranks.world_size, "torchrun RANK/WORLD_SIZE", ranks.local_rank,
                              ranks.local_world_size, distributed=True))  # fmt: skip
    task, count = _int(env, "SLURM_ARRAY_TASK_ID"), _int(env, "SLURM_ARRAY_TASK_COUNT")
    if task is not None and count is not None and count > 1:
        first, last = _int(env, "SLURM_ARRAY_TASK_MIN") or 0, _int(env, "SLURM_ARRAY_TASK_MAX")
        if last is not None and last - first + 1 != count:
            raise VidfeatError(
                f"the SLURM array {first}-{last} has gaps ({count} tasks): pass the shard explicitly, "
                "e.g. --shard $SLURM_ARRAY_TASK_ID/N"
            )
        return _checked(Shard(task - first, count, "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT"))
    proc, tasks = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS")
    if proc is not None and tasks is not None and tasks > 1:
        return _checked(Shard(proc, tasks, "srun SLURM_PROCID/SLURM_NTASKS"))
    return None


def _checked(shard: Shard) -> Shard:
    if not 0 <= shard.index < shard.count:
        raise VidfeatError(
            f"{shard.source} gives shard {shard.index} of {shard.count}: an array with gaps (e.g. --array=0,5) "
            "needs an explicit --shard I/N"
        )
    return shard


def shards_dir(output: str | os.PathLike[str]) -> Path:
    """Where the shard files of ``output`` go: ``feats.h5`` -> ``feats.h5.shards``."""
    output = Path(output)
    return output.with_name(output.name + ".shards")


def shard_output(output: str | os.PathLike[str], shard: Shard) -> Path:
    """``feats.h5`` and shard 3/8 -> ``feats.h5.shards/00003-of-00008.h5``."""
    return shards_dir(output) / shard_file_name(shard.index, shard.count)
