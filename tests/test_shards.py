"""vidfeat.video.shards: video2dataset's webdataset shards, read in place (local and over HTTP)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import av
import pytest

from servers import moto_s3, range_server
from videos import frame_index_of, make_noise_video, make_video

from vidfeat.errors import VidfeatError, VideoError
from vidfeat.video import shards
from vidfeat.video.shards import ShardError, expand_shards, iter_samples

REPO = Path(__file__).resolve().parents[1]


def write_v2d_shard(folder: Path, shard_id: int, samples: list[tuple[Path | None, str]], clips: bool = False) -> Path:
    """A shard as video2dataset writes one (webdataset's TarWriter via its WebDatasetSampleWriter):
    tar stream mode "w|", USTAR headers, mode 0444, user and group "bigdata"; per sample the
    members ``<key>.json`` (json.dumps(meta, indent=4)), ``<key>.mp4`` and ``<key>.txt`` (the
    caption) in sorted extension order; keys are shard id * 10**4 + index on 9 digits (default
    oom_shard_count 5, oom_sample_per_shard 4), clips add ``_<clip:05d>``. A failed download
    (video None) is written as its .json and .txt only. Beside the tar: ``<shard>_stats.json``."""
    name = f"{shard_id:05d}"
    path = folder / f"{name}.tar"
    with open(path, "wb") as fd, tarfile.open(fileobj=fd, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for i, (video, caption) in enumerate(samples):
            key = f"{shard_id * 10**4 + i:09d}" + ("_00000" if clips else "")
            meta = {
                "url": f"https://example.com/watch?v={key}",
                "caption": caption,
                "key": key,
                "status": "success" if video is not None else "failed_to_download",
                "error_message": None if video is not None else "HTTP Error 404: Not Found",
                "yt_meta_dict": {"info": {"title": caption, "duration": 4}} if video is not None else None,
            }
            if clips:
                meta["clips"] = [[0.0, 4.0]]
            members = {"json": json.dumps(meta, indent=4), "txt": caption}
            if video is not None:
                members["mp4"] = video.read_bytes()
            for ext in sorted(members):
                data = members[ext]
                data = data.encode("utf-8") if isinstance(data, str) else data
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o444
                info.uname = info.gname = "bigdata"
                tar.addfile(info, io.BytesIO(data))
    (folder / f"{name}_stats.json").write_text(json.dumps({"count": len(samples), "successes": 0}))
    return path


def frame_indices(source) -> list[int]:
    with av.open(source) as container:
        return [frame_index_of(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def digests(source) -> list[str]:
    with av.open(source) as container:
        return [hashlib.sha1(f.to_ndarray().tobytes()).hexdigest() for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two shards: 00000.tar with videos of 20, 35 and 50 frames and a failed download between
    them; 00001.tar with one clip sample (key with a clip suffix)."""
    root = tmp_path_factory.mktemp("v2d")
    videos = {}
    for n in (20, 35, 50, 12):
        videos[n] = root / f"src{n}.mp4"
        make_video(videos[n], num_frames=n, size=(64, 48), gop=10)
    out = root / "shards"
    out.mkdir()
    first = write_v2d_shard(out, 0, [(videos[20], "a cat"), (None, "gone"), (videos[35], "a dog"), (videos[50], "rain")])
    second = write_v2d_shard(out, 1, [(videos[12], "a clip")], clips=True)
    return {"root": root, "folder": out, "shards": [first, second], "videos": videos}


def test_expand_shards(dataset):
    folder = dataset["folder"]
    expected = [str(p) for p in dataset["shards"]]
    assert expand_shards(folder) == expected  # the _stats.json beside them is not a shard
    assert expand_shards(f"{folder}/{{00000..00001}}.tar") == expected
    assert expand_shards(dataset["shards"][1]) == [expected[1]]
    with pytest.raises(VidfeatError, match=r"^shard not found: .*00002.tar$"):
        expand_shards(f"{folder}/{{00000..00002}}.tar")
    empty = dataset["root"] / "empty"
    empty.mkdir(exist_ok=True)
    with pytest.raises(VidfeatError, match=r"^no .tar shards in "):
        expand_shards(empty)


def test_iter_samples_as_video2dataset_writes_them(dataset):
    first, second = dataset["shards"]
    samples = list(iter_samples(first))
    assert [s.key for s in samples] == ["000000000", "000000002", "000000003"]  # the failed one has no video
    assert [s.video_name for s in samples] == ["00000.tar/000000000.mp4", "00000.tar/000000002.mp4", "00000.tar/000000003.mp4"]
    assert [s.video_ext for s in samples] == [".mp4"] * 3
    assert [s.txt_text for s in samples] == ["a cat", "a dog", "rain"]
    meta = json.loads(samples[1].json_text)
    assert (meta["key"], meta["status"], meta["caption"]) == ("000000002", "success", "a dog")
    for sample, n in zip(samples, (20, 35, 50)):
        assert sample.size == dataset["videos"][n].stat().st_size
        with sample.open_video() as f:
            assert f.read() == dataset["videos"][n].read_bytes()
        with sample.open_video() as f:
            assert frame_indices(f) == list(range(n)) == frame_indices(str(dataset["videos"][n]))
    (clip,) = iter_samples(second)
    assert (clip.key, clip.video_name) == ("000010000_00000", "00001.tar/000010000_00000.mp4")
    assert json.loads(clip.json_text)["clips"] == [[0.0, 4.0]]
    named = next(iter_samples(second, name="batch7/00001.tar"))
    assert named.video_name == "batch7/00001.tar/000010000_00000.mp4"


def test_sample_pickles_and_opens_in_another_process(dataset):
    sample = list(iter_samples(dataset["shards"][0]))[2]
    script = (
        "import pickle, sys, av\n"
        "s = pickle.loads(sys.stdin.buffer.read())\n"
        "with s.open_video() as f, av.open(f) as c: print(sum(1 for _ in c.decode(video=0)))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(sample), env=env, capture_output=True, check=True)
    assert out.stdout.split() == [b"50"]


def test_webdataset_key_rule():
    assert shards._split("000000001.mp4") == ("000000001", ".mp4")
    assert shards._split("a.b/c.d.mp4") == ("a.b/c", ".d.mp4")
    assert shards._split("noext") == ("noext", "")


# --- damaged shards --------------------------------------------------------------------------


def offsets(path: Path) -> dict[str, tuple[int, int, int]]:
    """member name -> (header offset, data offset, data end)."""
    with tarfile.open(path) as tar:
        return {m.name: (m.offset, m.offset_data, m.offset_data + m.size) for m in tar.getmembers()}


def damaged_copy(src: Path, dst: Path, cut: int | None = None, garbage_at: int | None = None) -> Path:
    data = bytearray(src.read_bytes())
    if garbage_at is not None:
        data[garbage_at : garbage_at + 512] = b"\x7fnot a tar header".ljust(512, b"#")
    if cut is not None:
        data = data[:cut]
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize(
    "damage, keys, last_txt, reason",
    [
        ("mid-video", ["000000000", "000000002"], "a dog", r"its member 000000003.mp4 is cut short"),
        ("between-samples", ["000000000", "000000002"], "a dog", r"without the end-of-archive marker"),
        ("after-video", ["000000000", "000000002", "000000003"], None, r"without the end-of-archive marker"),
        ("bad-header", ["000000000", "000000002"], "a dog", r"unreadable member header|checksum|header"),
    ],
)
def test_damaged_shard_yields_complete_samples_then_shard_error(dataset, tmp_path, damage, keys, last_txt, reason):
    src = dataset["shards"][0]
    at = offsets(src)
    dst = tmp_path / "00000.tar"
    if damage == "mid-video":
        damaged_copy(src, dst, cut=(at["000000003.mp4"][1] + at["000000003.mp4"][2]) // 2)
    elif damage == "between-samples":
        damaged_copy(src, dst, cut=at["000000003.json"][0])
    elif damage == "after-video":
        damaged_copy(src, dst, cut=at["000000003.txt"][0])
    else:
        damaged_copy(src, dst, garbage_at=at["000000003.json"][0])
    got = []
    with pytest.raises(ShardError, match=reason) as caught:
        for sample in iter_samples(dst):
            got.append(sample)
    assert [s.key for s in got] == keys
    assert got[-1].txt_text == last_txt
    for sample in got:  # what was yielded decodes in full
        with sample.open_video() as f:
            assert len(frame_indices(f)) == {"000000000": 20, "000000002": 35, "000000003": 50}[sample.key]
    error = caught.value
    assert isinstance(error, VideoError)
    assert (error.samples, error.last_key, error.row_name) == (len(keys), keys[-1], "00000.tar/*")
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"shard {dst} failed after key {keys[-1]} at byte ")
    assert message.endswith("its remaining samples were not read")


def test_shard_damaged_before_its_first_sample(tmp_path, dataset):
    dst = damaged_copy(dataset["shards"][0], tmp_path / "00000.tar", cut=300)
    with pytest.raises(ShardError, match=r"failed before its first sample at byte 0: ") as caught:
        list(iter_samples(dst))
    assert caught.value.samples == 0 and caught.value.last_key is None
    with pytest.raises(ShardError, match=r"missing.tar failed before its first sample: cannot open it: No such file or directory; "):
        list(iter_samples(tmp_path / "missing.tar"))


# --- remote shards ---------------------------------------------------------------------------


def test_remote_shard_over_http_reads_in_place(tmp_path):
    videos = []
    for i, seconds in enumerate((40, 60, 50)):
        videos.append(tmp_path / f"v{i}.mp4")
        make_noise_video(videos[-1], seconds)
    shard = write_v2d_shard(tmp_path, 3, [(v, f"caption {i}") for i, v in enumerate(videos)])
    size = shard.stat().st_size
    with range_server({"/shards/00003.tar": shard}) as server:
        url = server.url("/shards/00003.tar")
        samples = list(iter_samples(url))
        listing = server.bytes_served
        assert [s.video_name for s in samples] == [f"00003.tar/00003000{i}.mp4" for i in range(3)]
        assert [s.txt_text for s in samples] == ["caption 0", "caption 1", "caption 2"]
        server.reset_counts()
        for sample, video in zip(samples, videos):
            with sample.open_video() as f:
                assert digests(f) == digests(str(video))
        decoding = server.bytes_served
    # Listing reads the headers and the small members, not the videos; decoding reads each
    # video member once (its cache blocks start at the member).
    assert listing < 0.25 * size, (listing, size)
    assert decoding == sum(v.stat().st_size for v in videos)


def test_shards_in_s3(monkeypatch, dataset):
    with moto_s3(monkeypatch) as endpoint:
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="data")
        for shard in dataset["shards"]:
            client.upload_file(str(shard), "data", f"v2d/{shard.name}")
            client.upload_file(str(shard), "data", f"v2d/old/{shard.name}")  # a subfolder: not listed
        client.put_object(Bucket="data", Key="v2d/00000_stats.json", Body=b"{}")
        expected = ["s3://data/v2d/00000.tar", "s3://data/v2d/00001.tar"]
        assert expand_shards("s3://data/v2d/") == expected
        assert expand_shards("s3://data/v2d") == expected
        assert expand_shards("s3://data/v2d/{00000..00001}.tar") == expected
        with pytest.raises(VidfeatError, match=r"^no .tar shards under s3://data/v2d/old/nothing/$"):
            expand_shards("s3://data/v2d/old/nothing/")
        with pytest.raises(VidfeatError, match=r"^no .tar shards under s3://data/$"):
            expand_shards("s3://data")  # those in subfolders are not taken
        samples = list(iter_samples("s3://data/v2d/00000.tar"))
        assert [s.video_name for s in samples] == [f"00000.tar/00000000{i}.mp4" for i in (0, 2, 3)]
        for sample, n in zip(samples, (20, 35, 50)):
            with sample.open_video() as f:
                assert frame_indices(f) == list(range(n))
        with pytest.raises(ShardError, match=r"^shard s3://data/v2d/00009.tar failed before its first sample: not found: s3://data/v2d/00009.tar; "):
            list(iter_samples("s3://data/v2d/00009.tar"))


# --- memory ----------------------------------------------------------------------------------

_TAR_PEAK = """
import sys, av
from vidfeat.video.shards import iter_samples
(sample,) = iter_samples(sys.argv[1])
with sample.open_video() as f, av.open(f) as c:
    n = sum(1 for _ in c.decode(video=0))
# VmHWM: this process's own peak (ru_maxrss would include the forking parent's)
peak = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))
print(n, peak * 1024)
"""


def test_tar_peak_memory_does_not_grow_with_video_length(tmp_path):
    if not Path("/proc/self/status").exists():
        pytest.skip("peak memory is read from /proc (Linux)")
    peaks = {}
    for seconds in (60, 600):
        video = tmp_path / f"v{seconds}.mp4"
        size = make_noise_video(video, seconds, size="96x72")
        folder = tmp_path / str(seconds)
        folder.mkdir()
        shard = write_v2d_shard(folder, 0, [(video, "noise")])
        env = dict(os.environ, PYTHONPATH=str(REPO))
        out = subprocess.run([sys.executable, "-c", _TAR_PEAK, str(shard)], env=env, capture_output=True, text=True, check=True)
        frames, rss = map(int, out.stdout.split())
        assert frames == seconds * 5
        peaks[seconds] = (rss, size)
    (rss_short, _), (rss_long, size_long) = peaks[60], peaks[600]
    assert rss_long <= 1.2 * rss_short, peaks
    assert rss_long - rss_short < size_long / 2, peaks  # the member is never held whole
