"""The store and retrieval at HowTo100M shape: time, peak memory and bytes of every step.

Simulates a collection of V videos shaped like HowTo100M (11-character YouTube ids, a long tail
of clip counts around 60, about 1% failed and 0.3% partial videos, a few very long videos),
writes it through the real FeatureWriter as ``--shards`` shard files (as ``extract --shard I/N``
would), merges them, grows the merged file by 1% new videos (a rerun over a grown collection),
then runs info, verify, an exact clip search, export --format npy, index
(with a search through the index and its recall@10 against exact search) and the viewer's
endpoints; then adds captions to every video from a HowTo100M-shaped caption.json (about two
captions a clip, as HowTo100M's 136 M captions for 72 M clips), grows the captioned file by 1%
more videos and gives them their captions (``extract --captions`` on that rerun), and verifies
the captioned file. Every step runs in a fresh process, so its peak RSS is its own; bytes written are the
process's write() bytes (/proc/self/io wchar). Prints one table per size and, with two sizes,
the ratio of each figure between them (a step that is linear in the size has a time ratio close
to the size ratio; a flat memory has an RSS ratio close to 1).

    python bench/store_scale.py --videos 2000                 # one size, a quick run
    python bench/store_scale.py --videos 10000 100000         # two sizes and their ratios
    python bench/store_scale.py --videos 100000 --keep /tmp/s # keep the files
    python bench/store_scale.py --videos 500 --json out.json  # the figures as JSON too
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STEPS = ("write", "merge", "grow", "info", "verify", "search", "export", "index", "view", "captions", "capgrow",
         "capverify")
_ID_CHARS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
_ERRORS = ("cannot decode {p}: no video stream", "{p}: moov atom not found", "download of {p} is empty (0 bytes)")
SETTINGS = {"model": "bench-model", "weights_sha256": "ab12" * 16, "num_frames": 8, "fps": 0.9375,
            "stride_sec": 4.2666, "input_size": 224, "mean": [0.45] * 3, "std": [0.225] * 3, "crops": 1,
            "decoder": "pyav"}  # fmt: skip


def collection(n_videos: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths sorted, clip counts, status codes 0 ok / 1 partial / 2 failed) of a HowTo100M-shaped
    collection: ids of 11 characters, clip counts log-normal around 45 (mean about 60), 0.1% of
    videos 20x longer, 1% failed, 0.3% partial."""
    rng = np.random.default_rng(seed)
    ids = {"".join(rng.choice(_ID_CHARS, 11)) for _ in range(int(n_videos * 1.01) + 10)}
    paths = [f"{i}.mp4" for i in sorted(ids)[:n_videos]]  # sorted before the cut: not by hash order
    counts = np.clip(rng.lognormal(np.log(45), 0.75, n_videos), 1, 2000).astype(np.int64)
    long = rng.random(n_videos) < 0.001
    counts[long] *= 20
    status = np.zeros(n_videos, np.int8)
    status[rng.random(n_videos) < 0.003] = 1
    status[rng.random(n_videos) < 0.01] = 2
    counts[status == 2] = 0
    return paths, counts, status


def _io() -> dict[str, int]:
    try:
        fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
        return {"wchar": int(fields["wchar"]), "rchar": int(fields["rchar"])}
    except (OSError, KeyError, ValueError):
        return {"wchar": 0, "rchar": 0}


def _size(path: Path) -> int:
    """Bytes of a file (with a grown file's segments folder) or of a folder's files."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    segments = path.with_name(path.name + ".segments")
    return (path.stat().st_size if path.exists() else 0) + (_size(segments) if segments.is_dir() else 0)


# the steps, each run in its own process ---------------------------------------------------------


def _result(path: str, n: int, status: int, v: int, rng, args):
    """The VideoResult of a simulated video of ``n`` clips (status 0 ok / 1 partial / 2 failed)."""
    from vidfeat.store import VideoResult

    center = rng.standard_normal(args.dim).astype(np.float32)  # a video's clips are alike
    start = np.arange(n) * SETTINGS["stride_sec"]
    failed = status == 2
    return VideoResult(
        path=path, status=("ok", "partial", "failed")[status],
        error=_ERRORS[v % 3].format(p=path) if failed else (
            f"decoding stopped at {n * 4.27:.1f} s" if status == 1 else ""),
        size_bytes=1000 * (n + 1), mtime=1.7e9, duration_sec=n * 4.27 + 4.0, fps=30.0,
        width=640, height=360,
        embedding=center + 0.6 * rng.standard_normal((n, args.dim)).astype(np.float32),
        logits=rng.standard_normal((n, args.classes)).astype(np.float32),
        start_sec=start, end_sec=start + 8.53, valid_frames=np.full(n, 8, np.int32),
    )  # fmt: skip


def _writer(out: Path, args):
    from vidfeat.store import FeatureWriter

    classes = [f"class {i}" for i in range(args.classes)]
    return FeatureWriter(out, settings=SETTINGS, classes=classes, embedding_dim=args.dim, embedding_dtype="float16")


def step_write(work: Path, args) -> tuple[Path, str]:
    from vidfeat.pipeline.shard import shard_of
    from vidfeat.store.format import shard_file_name

    paths, counts, status = collection(args.n, args.seed)
    shards = work / "feats.h5.shards"
    shards.mkdir(exist_ok=True)
    which = np.array([shard_of(p, args.shards) for p in paths])
    rng = np.random.default_rng(args.seed + 1)
    for s in range(args.shards):
        with _writer(shards / shard_file_name(s, args.shards), args) as writer:
            for v in np.flatnonzero(which == s).tolist():
                writer.add(_result(paths[v], int(counts[v]), int(status[v]), v, rng, args))
            writer.finalize()
    return shards, f"{args.shards} shards, {int(counts.sum())} clips"


def step_grow(work: Path, args) -> tuple[Path, str]:
    """Add 1% new videos to the merged file, as a rerun over a grown collection does."""
    paths, counts, status = collection(max(1, args.n // 100), args.seed + 7)
    rng = np.random.default_rng(args.seed + 8)
    new_bytes = 0
    with _writer(work / "feats.h5", args) as writer:
        for v, path in enumerate(paths):
            result = _result("grown/" + path, int(counts[v]), int(status[v]), v, rng, args)
            new_bytes += result.embedding.size * 2 + result.logits.nbytes + 28 * len(result.start_sec)
            writer.add(result)
        start = time.perf_counter()
        writer.finalize()
        took = time.perf_counter() - start
    return work / "feats.h5", (f"{len(paths)} videos, {int(counts.sum())} clips, new clip data "
                               f"{new_bytes / 1e6:,.1f} MB, finalize {took:.2f} s")  # fmt: skip


_CAPTION_TEXT = "and then you take the rope and pull it {}"  # about 40 bytes, as HowTo100M's lines


def _more(args) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The 1% of videos ``capgrow`` adds (paths under more/)."""
    paths, counts, status = collection(max(1, args.n // 100), args.seed + 11)
    return ["more/" + p for p in paths], counts, status


def _write_caption_json(path: Path, args) -> int:
    """A caption.json for every video of the collection, of the grown 1% and of ``_more``: two
    captions of 2.5 s a clip stride. Written a video at a time; returns the caption count."""
    from vidfeat.captions import video_id

    total = 0
    with open(path, "w", encoding="utf-8") as f:
        f.write("{")
        first = True
        for paths, counts, _ in (collection(args.n, args.seed), collection(max(1, args.n // 100), args.seed + 7),
                                 _more(args)):  # fmt: skip
            for p, n in zip(paths, counts.tolist()):
                m = 2 * max(int(n), 1)
                start = np.round(np.arange(m) * SETTINGS["stride_sec"] / 2, 2)
                entry = {"start": start.tolist(), "end": (start + 2.5).tolist(),
                         "text": [_CAPTION_TEXT.format(j) for j in range(m)]}  # fmt: skip
                f.write(("" if first else ",") + json.dumps(video_id(p)) + ":" + json.dumps(entry))
                first, total = False, total + m
        f.write("}")
    return total


def step_captions(work: Path, args) -> tuple[Path, str]:
    """Add captions to every video of the file (vidfeat captions feats.h5 caption.json)."""
    from vidfeat.captions.attach import add_captions

    source = work / "caption.json"
    written = _write_caption_json(source, args)
    start = time.perf_counter()
    report = add_captions(work / "feats.h5", source)
    took = time.perf_counter() - start
    return work / "feats.h5", (f"{report.captions} captions for {report.captioned_videos} videos "
                               f"({written} in the {source.stat().st_size / 1e6:,.0f} MB source), {took:.2f} s")  # fmt: skip


def step_capgrow(work: Path, args) -> tuple[Path, str]:
    """Add 1% more videos to the captioned file and give them their captions, as a rerun of
    `vidfeat extract --captions caption.json` over a grown collection does."""
    from vidfeat.captions.attach import add_captions

    paths, counts, status = _more(args)
    rng = np.random.default_rng(args.seed + 12)
    with _writer(work / "feats.h5", args) as writer:
        for v, path in enumerate(paths):
            writer.add(_result(path, int(counts[v]), int(status[v]), v, rng, args))
        start = time.perf_counter()
        writer.finalize()
        grew = time.perf_counter() - start
    start = time.perf_counter()
    report = add_captions(work / "feats.h5", work / "caption.json", last_growth=True)
    took = time.perf_counter() - start
    return work / "feats.h5", (f"{len(paths)} videos: finalize {grew:.2f} s, their {report.captions} captions "
                               f"{took:.2f} s")  # fmt: skip


def step_capverify(work: Path, args) -> tuple[Path, str]:
    return step_verify(work, args)


def step_merge(work: Path, args) -> tuple[Path, str]:
    from vidfeat.store.merge import merge_shards, shard_files

    out = work / "feats.h5"
    counts = merge_shards(out, shard_files(work / "feats.h5.shards"), replace=True)
    return out, f"{counts['videos']} videos, {counts['clips']} clips"


def step_info(work: Path, args) -> tuple[Path, str]:
    from vidfeat.cli.extract import _format_summary
    from vidfeat.store import summarize

    summary = summarize(work / "feats.h5")
    text = _format_summary(summary)
    return work / "feats.h5", f"{summary['status']['failed']} failed, {len(text.splitlines())} lines"


def step_verify(work: Path, args) -> tuple[Path, str]:
    from vidfeat.store import verify

    faults = verify(work / "feats.h5")
    if faults:
        raise SystemExit(f"verify found faults: {faults[:3]}")
    return work / "feats.h5", "ok"


def step_search(work: Path, args) -> tuple[Path, str]:
    import vidfeat
    from vidfeat.store import open_features

    with open_features(work / "feats.h5") as f:
        hits = vidfeat.search(f, clip=len(f) // 3, k=10, exclude_same_video=True)
    return work / "feats.h5", f"exact, {len(hits)} hits"


def step_export(work: Path, args) -> tuple[Path, str]:
    from vidfeat.retrieval.export import export
    from vidfeat.store import open_features

    out = work / "export"
    shutil.rmtree(out, ignore_errors=True)
    with open_features(work / "feats.h5") as f:
        export(f, out, format="npy", table="csv")
    return out, "npy + csv"


def step_index(work: Path, args) -> tuple[Path, str]:
    from vidfeat.retrieval.index import FaissIndex, build_index
    from vidfeat.retrieval.search import exact_search
    from vidfeat.store import open_features

    with open_features(work / "feats.h5") as f:
        phases: dict[str, float] = {}
        out = build_index(f, work / "feats.faiss", max_memory=args.max_memory, timings=phases)
        factory = json.loads((work / "feats.faiss.json").read_text())["factory"]
        index = FaissIndex(out)
        rows = np.linspace(0, len(f) - 1, args.queries).astype(np.int64)
        found = 0
        for row in rows.tolist():
            query = f.embeddings[row]
            exact = set(exact_search(f.embeddings, query, k=10)[1][0].tolist())
            found += len(exact & set(index.search(query, k=10, n=len(f))[1][0].tolist()))
    split = ", ".join(f"{k} {v:.1f}s" for k, v in phases.items())
    return out, f"{factory}, recall@10 {found / (10 * len(rows)):.2f} ({len(rows)} queries); {split}"


def step_view(work: Path, args) -> tuple[Path, str]:
    import threading
    import urllib.request

    from vidfeat.retrieval.view import make_server

    server = make_server(work / "feats.h5", work)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    times = {}

    def get(name: str, url: str):
        start = time.perf_counter()
        with urllib.request.urlopen(base + url) as r:
            body = json.loads(r.read())
        times[name] = time.perf_counter() - start
        return body

    try:
        first = get("page", "/api/videos?limit=50")["videos"][0]["path"]
        get("type", "/api/videos?limit=50&q=" + first[3:6])
        clips = get("clips", "/api/clips?video=" + urllib.request.quote(first))
        get("click", f"/api/search?k=12&clip={clips[len(clips) // 2]['row']}")
    finally:
        server.shutdown()
        server.server_close()
    return work / "feats.h5", " ".join(f"{k} {v:.2f}s" for k, v in times.items())


def run_step(name: str, work: Path, args) -> dict:
    """Run one step here; its figures."""
    before, start = _io(), time.perf_counter()
    output, note = globals()[f"step_{name}"](work, args)
    seconds = time.perf_counter() - start
    after = _io()
    return {"step": name, "seconds": seconds, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "written": after["wchar"] - before["wchar"], "size": _size(output), "note": note}  # fmt: skip


# the driver ---------------------------------------------------------------------------------------


def run_size(n: int, work: Path, args) -> list[dict]:
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.steps:
        cmd = [sys.executable, __file__, "--step", name, "--work", str(work), "--n", str(n),
               *sum(([f"--{k.replace('_', '-')}", str(getattr(args, k))]
                     for k in ("shards", "dim", "classes", "seed", "max_memory", "queries")), [])]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"step {name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  {n} videos: {name} {rows[-1]['seconds']:.1f} s", file=sys.stderr, flush=True)
    return rows


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f}"


def table(n: int, rows: list[dict]) -> str:
    lines = [f"{n} videos", f"{'step':<8} {'time s':>8} {'peak RSS MB':>12} {'written MB':>11} {'file MB':>9}  note"]
    for r in rows:
        lines.append(f"{r['step']:<8} {r['seconds']:>8.2f} {_mb(r['peak_rss']):>12} {_mb(r['written']):>11} "
                     f"{_mb(r['size']):>9}  {r['note']}")  # fmt: skip
    return "\n".join(lines)


def ratios(a: int, b: int, first: list[dict], second: list[dict]) -> str:
    lines = [f"ratio {b} / {a} videos ({b / a:.1f}x)", f"{'step':<8} {'time':>8} {'peak RSS':>12} {'written':>11} {'file':>9}"]
    for x, y in zip(first, second):
        r = [y[k] / x[k] if x[k] else float("nan") for k in ("seconds", "peak_rss", "written", "size")]
        lines.append(f"{x['step']:<8} {r[0]:>8.2f} {r[1]:>12.2f} {r[2]:>11.2f} {r[3]:>9.2f}")
    return "\n".join(lines)


def _memory(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = str(text).strip().upper().rstrip("B").rstrip("I")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1:] in units else int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, nargs="+", default=[2000], help="one or two collection sizes")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--dim", type=int, default=32, help="embedding width (HowTo100M's Base: 768)")
    parser.add_argument("--classes", type=int, default=4, help="logits a clip")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-memory", type=_memory, default=4 << 30, help="vidfeat index --max-memory")
    parser.add_argument("--queries", type=int, default=5, help="queries of the index's recall")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of " + ",".join(STEPS))
    parser.add_argument("--keep", type=Path, default=None, help="write here and keep the files")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        print(json.dumps(run_step(args.step, args.work, args)))
        return
    args.steps = [s for s in args.steps.split(",") if s]
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown or not 1 <= len(args.videos) <= 2:
        parser.error(f"unknown steps {unknown}" if unknown else "give one or two sizes to --videos")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for n in args.videos:
            results[n] = run_size(n, root / f"v{n}", args)
            print(table(n, results[n]), flush=True)
            print(flush=True)
    if len(args.videos) == 2:
        a, b = args.videos
        print(ratios(a, b, results[a], results[b]), flush=True)
    if args.json:
        args.json.write_text(json.dumps({str(n): rows for n, rows in results.items()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
