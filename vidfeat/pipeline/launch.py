"""Running one extraction as many processes: a shard of the collection per process (``--shard``,
torchrun, SLURM), ``--gpus G`` on one machine, and the final merge.

* A sharded process runs the ordinary :func:`vidfeat.pipeline.driver.extract` on its shard's videos
  (:mod:`vidfeat.pipeline.shard`) into its own shard file, with the usual crash safety and resume.
* Under torchrun the ranks then meet in a ``torch.distributed`` barrier (gloo, so CPU-only
  machines work too) and rank 0 merges every shard file into the final output
  (:func:`vidfeat.store.merge.merge_shards`). A rank that dies loses only its in-flight videos;
  the same command again resumes every shard and merges.
* ``--gpus G`` starts G ranks through torch's own launcher (``torch.distributed.run``) with the
  same command line; the machine's default decode workers (cores - 1, at most 16) are divided
  between them (:func:`vidfeat.pipeline.workers.default_workers`).
* SLURM job arrays and srun tasks have no barrier: each task writes its shard, and
  ``vidfeat merge`` (a dependent job) builds the final file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from ..errors import VidfeatError
from .shard import Shard, select, shard_output, shards_dir

__all__ = ["dispatch", "run_sharded", "launch_gpus", "strip_gpus", "shard_options"]

# The ranks wait for the slowest shard at the barrier: shards of a big collection take hours.
_BARRIER_TIMEOUT = timedelta(days=30)


def dispatch(videos, output: Path, options, progress, *, shard: Shard | None = None, ray: str | None = None,
             echo=print):  # fmt: skip
    """Run an extraction the way it was asked: on Ray (``ray`` not None: an address, or "" for
    a local cluster), as one shard (``shard``, else the launcher's, see
    :func:`vidfeat.pipeline.shard.detect_shard`), or as one ordinary run. Returns the ExtractReport."""
    if ray is not None:
        if shard is not None:
            raise VidfeatError("--ray hands out videos itself: drop --shard")
        from .driver import extract
        from .ray import RayExecutor

        return extract(videos, output, options, progress, RayExecutor(address=ray or None, echo=echo))
    from .shard import detect_shard

    shard = shard or detect_shard()
    if shard is None:
        from .driver import extract

        return extract(videos, output, options, progress)
    if shard.distributed and shard.index != 0 and progress is not None:
        from .progress import Progress

        progress = Progress(enabled=False)  # one progress display (rank 0's); failures still print
    return run_sharded(videos, output, options, progress, shard, echo=echo)


def shard_options(options, shard: Shard):
    """The options of one rank: its GPU (``cuda:LOCAL_RANK``) and its share of the decode cores."""
    import torch

    from .workers import default_workers

    changes = {}
    if shard.local_rank is not None and options.device is None and torch.cuda.is_available():
        changes["device"] = f"cuda:{shard.local_rank % torch.cuda.device_count()}"
    ranks_here = shard.local_count or 1
    if ranks_here > 1:
        cores = os.cpu_count() or 2
        if options.workers is None:
            changes["workers"] = default_workers(ranks_here)
        torch.set_num_threads(max(1, cores // ranks_here))
    return replace(options, **changes) if changes else options


def run_sharded(videos, output: Path, options, progress, shard: Shard, echo=print):
    """Extract ``shard``'s videos into its shard file; under torchrun, rank 0 then merges all.

    Returns the shard's ExtractReport (``report.output`` is the shard file).
    """
    from .driver import extract

    mine = select(videos, shard)
    target = shard_output(output, shard)
    echo(f"shard {shard.index}/{shard.count} (from {shard.source}): {len(mine)} of {len(videos)} videos -> {target}")
    try:
        target.parent.mkdir(exist_ok=True)
    except OSError as exc:
        raise VidfeatError(f"cannot create {target.parent}: {exc.strerror or exc}; choose another -o") from exc
    options = shard_options(options, shard)
    if shard.distributed:
        _init_group()
    report = extract(mine, target, options, progress)
    if shard.distributed:
        _barrier_and_merge(output, shard, report, echo)
        report.failures_exit = 0  # see ExtractReport.failures_exit
    return report


def _init_group() -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=_BARRIER_TIMEOUT)


def _barrier_and_merge(output: Path, shard: Shard, report, echo) -> None:
    """Wait for every rank; rank 0 merges the shard files into ``output`` if all finished."""
    import torch
    import torch.distributed as dist

    from ..store.merge import merge_shards, shard_files

    # Each rank says whether its shard file is final (an interrupted rank's is, with fewer videos).
    finished = torch.tensor([0 if report.interrupted else 1], dtype=torch.int64)
    dist.all_reduce(finished, op=dist.ReduceOp.MIN)  # also the barrier
    try:
        if shard.index == 0:
            if int(finished.item()) == 0:
                echo(f"not merging {output}: a rank was interrupted; rerun the same command to finish")
            else:
                counts = merge_shards(output, shard_files(shards_dir(output)))
                echo(f"merged {shard.count} shards into {output}: {counts['videos']} videos, {counts['clips']} clips")
        dist.barrier()  # the other ranks exit after the final file exists
    finally:
        dist.destroy_process_group()


def launch_gpus(gpus: int, argv: list[str], output: Path, echo: Callable[[str], None] = lambda line: None) -> int:
    """Run ``vidfeat <argv>`` as ``gpus`` ranks on this machine with torch's launcher; the exit
    status of `vidfeat extract` for the final file ``output`` (3 when it holds failed videos).
    A failed rank is said in one line to ``echo``."""
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--nproc-per-node", str(gpus), "--standalone", "--module", "vidfeat", *argv]
    )
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from ..store import summarize
    from .driver import failures_exit_code

    try:
        run(args)
    except ChildFailedError as exc:  # the ranks printed their own errors
        codes = {f.exitcode for f in exc.failures.values()}
        echo(f"vidfeat: a rank failed (exit {', '.join(map(str, sorted(codes)))}); rerun the same command to resume")
        return 1
    return failures_exit_code(summarize(output)["status"])  # every rank finished: rank 0 merged the final file


def strip_gpus(argv: list[str]) -> list[str]:
    """``argv`` without ``--gpus G`` / ``--gpus=G`` (the ranks must not launch again)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--gpus":
            skip = True
        elif not arg.startswith("--gpus="):
            out.append(arg)
    return out
