"""``vidfeat extract``, ``vidfeat info`` and ``vidfeat verify``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..video.inputs import discover, read_list
from ..video.remote import RETRY_NOTE
from ..store import parts_path, summarize, verify
from .group import main
from .scale import scale_options

# torch, timm and PyAV are imported inside extract_cmd only, so that `--help`, `info` and
# `verify` start fast.


@main.command(name="extract")
@click.argument("inputs", nargs=-1)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The HDF5 file to write.")
@click.option("--list", "list_file", metavar="FILE",
              help="A file with one video path, URL or .tar shard per line ('-' reads stdin); relative paths are "
                   "relative to the list file's folder (to the working directory for stdin). A listed path that does not "
                   "exist is a failed video ('not found').")  # fmt: skip
@click.option("--root",
              help="The folder (or URL prefix) video names are relative to (default: the common folder of the first "
                   "run's inputs). Stored in the file; reruns keep it.")  # fmt: skip
@click.option("--model", "--weights", "model",
              help="A model name (vidfeat models), a checkpoint file, a Hugging Face or vidfeat directory, or a hub id "
                   "(default: the bundled demo model).")  # fmt: skip
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), help="Frames sampled per second (default: the model's).")
@click.option("--num-frames", type=click.IntRange(min=1), help="Frames per clip (default: the model's).")
@click.option("--stride", type=click.FloatRange(min=0, min_open=True), help="Seconds between clip starts (default: half a clip).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Clips per model step (default: as many as fit).")
@click.option("--device", help="cpu, cuda or cuda:N (default: cuda if available).")
@click.option("--dtype", type=click.Choice(["bf16", "fp32"]), help="Model precision (default: bf16 on GPU, fp32 on CPU).")
@click.option("--workers", type=click.IntRange(min=0), help="Decode processes (default: cores - 1, at most 16, shared by the ranks of one machine; 0 = in-process).")
@click.option("--crops", type=click.Choice(["1", "3"]), default="1", show_default=True,
              help="Spatial views per clip, averaged (3 = the official test protocol).")  # fmt: skip
@click.option("--embedding-dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--commit-every", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds between commits of finished videos to disk (a kill loses at most this much work).")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace an output made with another model or setting.")
@click.option("--retry-failed", is_flag=True, help="Try again the videos that failed in an earlier run.")
@click.option("--quiet", is_flag=True, help="No progress display (failures are still printed).")
@click.option("--decoder", type=click.Choice(["pyav", "torchcodec", "nvdec"]), default="pyav", show_default=True,
              help="Video decoder: PyAV, torchcodec on the CPU, or NVDEC on the GPU beside PyAV workers (extra vidfeat[torchcodec]). "
                   "Stored in the file: a rerun must use the same.")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the model (a slower start for faster steps).")
@click.option("--captions", "captions_source", type=click.Path(exists=True, path_type=Path),
              help="Speech captions to add when the run ends (as `vidfeat captions` does): caption.json, a folder of "
                   "<id>.csv or .vtt/.srt files. On a rerun that adds videos to a file with captions, only the "
                   "added videos get theirs (the others keep what they have). Without it, subtitle sidecars beside "
                   "the videos (name.vtt, name.en.vtt, name.srt) are added when there are any and the run added "
                   "videos.")  # fmt: skip
@scale_options
def extract_cmd(inputs, output, list_file, root, model, fps, num_frames, stride, batch_size, device, dtype, workers, crops,
                embedding_dtype, commit_every, overwrite, retry_failed, quiet, shard, gpus, ray_address, decoder="pyav",
                compile_model=False, captions_source=None) -> None:  # fmt: skip
    """Extract per-clip embeddings and class scores of every video in INPUTS into one HDF5 file.

    INPUTS are folders (searched recursively for video files), video files, or --list. Videos
    are named by their path relative to the input root (--root; by default the common folder
    of the first run's inputs), which the file records: reruns name videos against it and refuse
    inputs outside it. Rerunning resumes: finished videos are kept and skipped, even after a
    crash or a kill.

    Videos are also read in place, never copied to disk: webdataset tar shards as
    video2dataset writes them (a .tar, a brace pattern 'shards/{00000..00999}.tar' or a folder
    of .tar files; each sample's video is named <shard file>/<key>.<ext>, its .json kept in the
    file, its .txt added as a caption spanning the video), and s3://, gs:// or http(s):// URLs
    (a prefix is listed, an object read with range requests; credentials come from the
    environment as the cloud SDKs read them; extra vidfeat[cloud]). Network failures are
    {retry}; a video that still fails is recorded as failed and tried again by a rerun.

    Exit status: 0 every video in the file is ok; 3 the file holds failed or partial videos,
    from this run or an earlier one (listed on stderr and in the file, see `vidfeat info`); 1 a
    fatal error (bad argument, weights or output); 2 a usage error; 130 stopped by Ctrl-C (the
    file then holds every video that finished); 143 stopped by SIGTERM (a scheduler's time
    limit: what finished is committed within seconds, and the rerun assembles the file).

    \b
    Examples:
      vidfeat extract videos/ -o feats.h5
      vidfeat extract videos/ -o feats.h5 --model large --crops 3
      vidfeat extract --list todo.txt -o feats.h5 --workers 14 --batch-size 32
      find /data -name '*.mp4' | vidfeat extract --list - -o feats.h5 --root /data
      vidfeat extract videos/ -o feats.h5 --model runs/my-finetune --fps 4 --stride 2
      vidfeat extract videos/ -o feats.h5 --gpus 8
      vidfeat extract videos/ -o feats.h5 --shard 3/64
      vidfeat merge feats.h5 --from feats.h5.shards
      vidfeat extract videos/ -o feats.h5 --ray
      vidfeat extract videos/ -o feats.h5 --model large --decoder nvdec --compile
      vidfeat extract videos/ -o feats.h5 --captions caption.json
      vidfeat extract 'shards/{00000..00999}.tar' -o feats.h5
      vidfeat extract s3://bucket/videos/ -o feats.h5
    """
    if gpus is not None and (shard is not None or ray_address is not None):
        raise click.UsageError("--gpus starts its own ranks: drop --shard / --ray")
    if gpus is not None:
        from ..pipeline.launch import launch_gpus, strip_gpus

        code = launch_gpus(gpus, strip_gpus(sys.argv[1:]), output, echo=lambda line: click.echo(line, err=True))
        if captions_source is not None and code in (0, 3) and output.exists():  # the ranks leave captions to us
            _add_captions(output, captions_source, [], added=False)
        sys.exit(code)
    import torch  # noqa: F401 - its slow import comes before any output: a Ctrl-C during it prints one line

    from ..model.cards import DEFAULT_MODEL, find_card
    from ..pipeline.driver import ExtractOptions, stored_root
    from ..pipeline.launch import dispatch
    from ..pipeline.progress import Progress

    inputs = [item if _is_url(item) else Path(item) for item in inputs]
    listed = read_list(list_file) if list_file else []
    if not inputs and not listed:
        if list_file:
            where = "standard input" if list_file == "-" else list_file
            raise click.UsageError(f"--list {list_file}: {where} holds no paths (one video path a line; # comments)")
        raise click.UsageError("give at least one folder or video, or --list FILE")
    demo = model is None
    model = model or DEFAULT_MODEL
    if demo and find_card(DEFAULT_MODEL) is None:
        raise click.UsageError(
            f"the default demo model {DEFAULT_MODEL!r} is not bundled in this version; choose one with --model "
            "(a name from `vidfeat models`, a checkpoint file or directory, or a Hugging Face hub id)"
        )
    if root is not None and not _is_url(root):
        if Path(root).exists() and not Path(root).is_dir():
            raise click.UsageError(f"--root {root} is a file; give the folder video names are relative to")
        root = Path(root)
    if output.exists() and output.is_dir():
        raise click.UsageError(f"-o {output} is a directory; give the .h5 file to write")
    if demo and not quiet:
        click.echo(
            f"note: --model not given, so this uses the bundled demo model {DEFAULT_MODEL!r}: a tiny TimeSformer that knows "
            "8 synthetic motion classes (vidfeat synth), not real actions. For real videos pass --model, e.g. "
            "--model base (TimeSformer Kinetics-400) or --model timesformer_large_96x224.howto100m; `vidfeat models` lists them all.",
            err=True,
        )
    if root is None and not overwrite:
        root = stored_root(output)
    found = discover(list(inputs), listed, root=root)
    options = ExtractOptions(
        model=model,
        fps=fps,
        num_frames=num_frames,
        stride_sec=stride,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        workers=workers,
        crops=int(crops),
        embedding_dtype=embedding_dtype,
        commit_seconds=commit_every,
        overwrite=overwrite,
        retry_failed=retry_failed,
        root=str(found.root),
        decoder=decoder,
        compile=compile_model,
    )
    progress = Progress(enabled=not quiet, notes=True)  # run notes (a decoder fallback) even with --quiet
    if not quiet:
        progress.console.print(f"{len(found.videos)} videos under {found.root} -> {output}")
    from ..store import segments

    before = segments.state(output)
    report = dispatch(found.videos, output, options, progress, shard=shard, ray=ray_address,
                      echo=lambda line: click.echo(line, err=True))  # fmt: skip
    c, f = report.counts, report.in_file
    message = (
        f"{report.output}: {c['ok']} ok, {c['partial']} partial, {c['failed']} failed this run, "
        f"{report.skipped} already done; {report.clips} clips"
    )
    if f.get("failed") or f.get("partial"):
        message += f"; the file holds {f.get('failed', 0)} failed, {f.get('partial', 0)} partial (vidfeat info {report.output})"
    if report.terminated:
        message += (f" (stopped by SIGTERM: what finished is committed in {parts_path(report.output)}, the file is "
                    "not assembled; rerun the same command to finish)")  # fmt: skip
    elif report.deferred:
        message += (f" (interrupted: what finished is committed in {parts_path(report.output)}; the file, some of "
                    "whose videos this run replaces, is left as it was; rerun the same command to finish)")  # fmt: skip
    elif report.interrupted:
        message += " (interrupted: rerun the same command to finish)"
    click.echo(message, err=True)
    if not report.interrupted and report.output == output and output.exists():
        after = segments.state(output)
        grew = before[1] and after[1] and after[0] > max(before[0], 1)  # a new segment beside captioned ones
        _add_captions(output, captions_source, found.videos, added=sum(c.values()) > 0, last_growth=grew)
    elif captions_source is not None and report.output != output:  # a shard: merge refuses captioned shards
        click.echo(f"vidfeat: --captions: this run wrote the shard {report.output}; once the shards are merged, "
                   f"add them with: vidfeat captions {output} {captions_source}", err=True)
    sys.exit(report.exit_code)


extract_cmd.help = extract_cmd.help.replace("{retry}", RETRY_NOTE)


def _is_url(item) -> bool:
    from ..video.remote import is_url

    return is_url(item)


def _add_captions(output: Path, source: Path | None, videos, *, added: bool, last_growth: bool = False) -> None:
    """The end of an extraction that wrote ``output``: add the captions of ``source``; else the
    .txt members of tar shard samples when the run added videos (one caption spanning each
    video); else the sidecars beside local ``videos`` when there are any and the run added
    videos (the captions of the videos it kept are carried through every rerun).
    ``last_growth``: the run added its videos to a file with captions as a new segment; only
    they get captions, by rewriting that segment (the file's other captions stay)."""
    from ..captions import has_sidecars

    texts = {v.name: v.caption for v in videos if v.caption}
    if source is None and texts:
        if added:
            from ..captions.attach import add_whole_video_captions
            from .captions import echo_caption_report

            echo_caption_report(add_whole_video_captions(output, texts, last_growth=last_growth))
        return
    if source is None and not (added and has_sidecars(v.path for v in videos if v.local)):
        return
    from ..captions.attach import add_captions
    from .captions import echo_caption_report

    echo_caption_report(add_captions(output, source, last_growth=last_growth))


@main.command(name="info")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON for scripts. Its failed, partial and warned lists hold the first 5 videos of "
                   "each unless --failures is given; the counts by reason are always whole.")  # fmt: skip
@click.option("--failures", is_flag=True, help="List every failed, partial and warned video (not only the first 5).")
def info_cmd(path: Path, as_json: bool, failures: bool) -> None:
    """Show a features file: model and settings, counts by status, failed videos by reason.

    Failed, partial and warned videos are counted by reason (paths and numbers in the
    messages are left out so that one cause reads the same), and the first 5 of each are
    listed; --failures lists them all. Memory does not grow with the file but for that list.

    \b
    Examples:
      vidfeat info feats.h5
      vidfeat info feats.h5 --failures
      vidfeat info feats.h5 --json | jq '.reasons.failed'
    """
    summary = summarize(path, failures=failures)
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    click.echo(_format_summary(summary))


_REASONS_SHOWN = 10  # reasons printed per status by `vidfeat info` (--json has them all)


def _format_summary(summary: dict) -> str:
    """Human-readable ``vidfeat info``: scalars, then settings and counts, then per status the
    listed videos and, when not all are listed or they have several reasons, the counts by reason."""
    listed = ("failed", "partial", "warned")
    skip = {*listed, "reasons", "listed"}
    lines = [f"{k}: {v}" for k, v in summary.items() if k not in skip and not isinstance(v, (list, dict))]
    for key, value in summary.items():
        if isinstance(value, dict) and key not in skip:
            lines.append(f"{key}:")
            lines.extend(f"  {k}: {v}" for k, v in value.items())
    for key in listed:
        rows = summary.get(key) or []
        reasons = summary.get("reasons", {}).get(key, [])
        total = sum(r["count"] for r in reasons) or len(rows)
        if not total:
            continue
        lines.append(f"{key} ({total}):")
        for row in rows:
            clips = f" [{row['clips']} clips kept]" if row.get("clips") else ""
            lines.append(f"  {row['path']}: {row.get('error', row.get('warning', ''))}{clips}")
        if total > len(rows):
            lines.append(f"  ... and {total - len(rows)} more (vidfeat info --failures lists them all)")
        if total > len(rows) or len(reasons) > 1:
            lines.append(f"  {key} by reason:")
            width = len(str(reasons[0]["count"]))
            lines.extend(f"    {r['count']:>{width}}  {r['reason']}" for r in reasons[:_REASONS_SHOWN])
            if len(reasons) > _REASONS_SHOWN:
                rest = sum(r["count"] for r in reasons[_REASONS_SHOWN:])
                lines.append(f"    {rest:>{width}}  ({len(reasons) - _REASONS_SHOWN} other reasons: see --json)")
    return "\n".join(lines)


@main.command(name="verify")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def verify_cmd(path: Path) -> None:
    """Check a features file's internal consistency; exit 1 on any fault.

    Checks shapes, clip offsets and counts, NaN/inf, clip times inside video durations.

    \b
    Examples:
      vidfeat verify feats.h5 && echo ok
    """
    faults = verify(path)
    for fault in faults:
        click.echo(f"fault: {fault}", err=True)
    if faults:
        raise click.ClickException(f"{path}: {len(faults)} fault(s)")
    click.echo(f"{path}: ok")


@main.command(name="compact")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def compact_cmd(path: Path) -> None:
    """Rewrite a grown features file as one plain file and remove its segments folder.

    A rerun that adds videos to a finished file adds them as a segment file in
    PATH.segments/ (it writes the new videos, not the whole file again), which PATH reads
    through HDF5 virtual datasets: the folder must stay beside it. compact writes one file
    sorted by path, the same as one run over every video, as durably as every final file
    (it needs the file's size free). `vidfeat info` shows the segment count.

    \b
    Examples:
      vidfeat compact feats.h5
      vidfeat compact feats.h5 && cp feats.h5 /archive/
    """
    from ..store.amend import compact

    clips = compact(path)
    click.echo(f"{path}: one file already" if clips is None else f"{path}: compacted, {clips} clips")
