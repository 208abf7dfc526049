"""vidfeat.video.remote: listing and reading videos over S3 (moto's server) and HTTP (a Range
server written here), on 127.0.0.1 only; no test sleeps for a backoff (the sleep is injected)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import av
import pytest

from servers import moto_s3, range_server
from videos import _mp4_box, make_noise_video, make_video

from vidfeat.errors import VidfeatError, VideoError
from vidfeat.video import remote

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")

REPO = Path(__file__).resolve().parents[1]


def frame_digests(source, seek_sec: float | None = None, count: int | None = None) -> list[str]:
    """sha1 of each decoded frame's planes (``count`` of them after seeking to ``seek_sec``)."""
    out = []
    with av.open(source) as container:
        stream = container.streams.video[0]
        if seek_sec is not None:
            container.seek(int(seek_sec / stream.time_base), stream=stream)
        for frame in container.decode(stream):
            out.append(hashlib.sha1(frame.to_ndarray().tobytes()).hexdigest())
            if count is not None and len(out) == count:
                break
    return out


class Sleeps(list):
    """An injected backoff sleep: records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("media")
    files = {
        "/long.mp4": folder / "long.mp4",  # 10 minutes, index (moov) at the end
        "/long-faststart.mp4": folder / "long-faststart.mp4",
        "/short.mp4": folder / "short.mp4",  # 1 minute
    }
    make_noise_video(files["/long.mp4"], 600)
    make_noise_video(files["/long-faststart.mp4"], 600, faststart=True)
    make_noise_video(files["/short.mp4"], 60)
    data = files["/long.mp4"].read_bytes()
    assert _mp4_box(data, b"moov")[0] > _mp4_box(data, b"mdat")[0]  # index at the end
    data = files["/long-faststart.mp4"].read_bytes()
    assert _mp4_box(data, b"moov")[0] < _mp4_box(data, b"mdat")[0]
    return files


# --- names and messages ----------------------------------------------------------------------


def test_is_url():
    assert remote.is_url("s3://bucket/x.mp4")
    assert remote.is_url("https://host/a.mp4?sig=1")
    assert remote.is_url("gs://b/")
    assert not remote.is_url("videos/a.mp4")
    assert not remote.is_url("/abs/a.mp4")
    assert not remote.is_url(r"C:\videos\a.mp4")
    assert not remote.is_url(Path("s3:/x"))


def test_safe_url_and_redact_drop_signatures_and_user_info():
    signed = "https://user:pw@host.example/b/v.mp4?X-Amz-Signature=SECRET&X-Amz-Credential=AKIA"
    assert remote.safe_url(signed) == "https://host.example/b/v.mp4"
    text = f"404, message='Not Found', url='{signed}' Signature=SECRET2 token=T0K"
    clean = remote.redact(text)
    for secret in ("SECRET", "AKIA", "pw@", "T0K"):
        assert secret not in clean
    assert "https://host.example/b/v.mp4" in clean
    # Object stores have no query strings: a key may hold '?' or '#'.
    assert remote.safe_url("s3://bucket/odd?name#1.mp4") == "s3://bucket/odd?name#1.mp4"
    assert remote.safe_url("s3://user:pw@bucket/a.mp4") == "s3://bucket/a.mp4"


def test_retry_note_matches_constants():
    assert remote.RETRIES == len(remote.BACKOFF_SEC) == 4
    assert remote.RETRY_NOTE == "retried 4 times over about 15 s"


# --- S3 (moto server) ------------------------------------------------------------------------


@pytest.fixture
def s3(monkeypatch, tmp_path):
    with moto_s3(monkeypatch) as endpoint:
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="vids")
        yield client


def test_s3_list_prefix_names_sizes_and_etags(s3, tmp_path):
    make_video(tmp_path / "a.mp4", num_frames=20)
    make_video(tmp_path / "b.mkv", num_frames=12, container_format="matroska")
    s3.upload_file(str(tmp_path / "a.mp4"), "vids", "set/x/a.mp4")
    s3.upload_file(str(tmp_path / "b.mkv"), "vids", "set/B.MKV")
    s3.put_object(Bucket="vids", Key="set/notes.txt", Body=b"not a video")
    s3.upload_file(str(tmp_path / "a.mp4"), "vids", "other/c.mp4")

    found = remote.list_videos("s3://vids/set/")
    assert [v.name for v in found] == ["B.MKV", "x/a.mp4"]
    assert [v.url for v in found] == ["s3://vids/set/B.MKV", "s3://vids/set/x/a.mp4"]
    assert [v.size for v in found] == [os.path.getsize(tmp_path / "b.mkv"), os.path.getsize(tmp_path / "a.mp4")]
    etag = s3.head_object(Bucket="vids", Key="set/x/a.mp4")["ETag"]
    assert found[1].identity == etag
    assert remote.list_videos("s3://vids/set") == found  # no trailing slash: still a prefix

    one = remote.list_videos("s3://vids/set/x/a.mp4")
    assert [(v.name, v.url, v.identity) for v in one] == [("a.mp4", "s3://vids/set/x/a.mp4", etag)]
    rooted = remote.list_videos("s3://vids/set/x/", root="s3://vids/")
    assert [v.name for v in rooted] == ["set/x/a.mp4"]
    with pytest.raises(VidfeatError, match=r"s3://vids/other/c.mp4 lies outside the input root s3://vids/set"):
        remote.list_videos("s3://vids/other/c.mp4", root="s3://vids/set/")
    with pytest.raises(VidfeatError, match=r"^input not found: s3://vids/missing.mp4$"):
        remote.list_videos("s3://vids/missing.mp4")
    with pytest.raises(VidfeatError, match=r"^no videos found under s3://vids/empty/$"):
        remote.list_videos("s3://vids/empty/")


def test_s3_open_decodes_equal_to_local(s3, tmp_path):
    local = tmp_path / "v.mp4"
    make_video(local, seconds=8, fps=10, size=(96, 64), gop=20)
    s3.upload_file(str(local), "vids", "v.mp4")
    (video,) = remote.list_videos("s3://vids/v.mp4")
    with remote.open_video(video.url, size=video.size) as f:
        assert frame_digests(f) == frame_digests(str(local))
        assert f.transferred == os.path.getsize(local)
    with remote.open_video(video.url) as f:  # a seek needs the index and the blocks at the target
        assert frame_digests(f, seek_sec=4.0, count=5) == frame_digests(str(local), seek_sec=4.0, count=5)
    with pytest.raises(VideoError, match=r"^not found: s3://vids/nope.mp4$"):
        remote.open_video("s3://vids/nope.mp4")


# --- HTTP: bytes transferred -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["/long.mp4", "/long-faststart.mp4"])
@pytest.mark.parametrize("block_size", [remote.BLOCK_SIZE, 256 * 2**10])  # 2 blocks; 28 blocks
def test_http_full_decode_transfers_the_file_about_once(media, name, block_size):
    size = media[name].stat().st_size
    with range_server(media) as server:
        with remote.open_video(server.url(name), block_size=block_size) as f:
            digests = frame_digests(f)
            transferred = f.transferred
        served = server.bytes_served
    assert digests == frame_digests(str(media[name]))
    assert len(digests) == 3000
    assert served == transferred
    assert size <= served <= 1.3 * size, (served, size)


def test_http_seek_to_the_middle_reads_a_small_fraction(media):
    size = media["/long.mp4"].stat().st_size
    with range_server(media) as server:
        # Blocks scaled to this 7 MB test file as the default 4 MiB ones are to a 100+ MB video.
        with remote.open_video(server.url("/long.mp4"), block_size=256 * 2**10) as f:
            digests = frame_digests(f, seek_sec=300.0, count=25)
        served = server.bytes_served
        ranges = [r for method, _, r in server.requests if method == "GET"]
    assert digests == frame_digests(str(media["/long.mp4"]), seek_sec=300.0, count=25)
    assert served < 0.2 * size, (served, size)
    assert all(r is not None for r in ranges)  # range requests only, never the whole file


# --- HTTP: failures and retries --------------------------------------------------------------


def test_http_404_fails_at_once_without_retry(media):
    sleeps = Sleeps()
    with range_server(media) as server:
        url = server.url("/gone.mp4?X-Amz-Signature=SECRET")
        with pytest.raises(VideoError) as caught:
            remote.open_video(url, sleep=sleeps)
        # fsspec asks with HEAD, then GET when HEAD gives no size: one try, no retry.
        assert [method for method, _, _ in server.requests] == ["HEAD", "GET"]
    assert sleeps == []
    assert str(caught.value) == f"not found: {server.base}/gone.mp4"


def test_http_403_is_not_retried(media):
    sleeps = Sleeps()
    with range_server(media) as server:
        server.status_next = [403]
        with remote.open_video(server.url("/short.mp4"), sleep=sleeps) as f:
            with pytest.raises(VideoError, match=r"^access denied \(HTTP 403\): http://127.0.0.1:\d+/short.mp4"):
                f.read(100)
        assert len([m for m, _, _ in server.requests if m == "GET"]) == 1
    assert sleeps == []


def test_http_dropped_connections_are_retried(media):
    sleeps = Sleeps()
    with range_server(media) as server:
        with remote.open_video(server.url("/short.mp4"), sleep=sleeps) as f:
            server.drop_next = 2  # the first two range requests lose their connection mid-body
            digests = frame_digests(f)
    assert digests == frame_digests(str(media["/short.mp4"]))
    assert sleeps == [1.0, 2.0]


def test_http_server_errors_are_retried(media):
    sleeps = Sleeps()
    with range_server(media) as server:
        with remote.open_video(server.url("/short.mp4"), sleep=sleeps) as f:
            server.status_next = [503, 502, 500]
            assert f.read(64) == media["/short.mp4"].read_bytes()[:64]
    assert sleeps == [1.0, 2.0, 4.0]


def test_http_server_stopped_mid_read_fails_in_one_line(media):
    sleeps = Sleeps()
    with range_server(media) as server:
        url = server.url("/long.mp4?token=SECRET")
        f = remote.open_video(url, block_size=64 * 2**10, sleep=sleeps)
        container = av.open(f)
        frames = container.decode(video=0)
        for _ in range(50):
            next(frames)
        server.stop()
        with pytest.raises(VideoError) as caught:
            for _ in frames:
                pass
        container.close()
        f.close()
    message = str(caught.value)
    assert sleeps == list(remote.BACKOFF_SEC)
    assert "\n" not in message and "SECRET" not in message
    assert message.startswith(f"network error after retried 4 times over about 15 s: {server.base}/long.mp4: ")
    assert "Cannot connect" in message or "refused" in message.lower()


def test_http_list_single_url_names_it_without_its_query(media):
    with range_server(media) as server:
        query = "?X-Amz-Credential=AKIA/20261204/us-east-1/s3/aws4_request&X-Amz-Signature=SECRET"
        (video,) = remote.list_videos(server.url("/short.mp4" + query))
        with remote.open_video(video.url, size=video.size) as f:
            assert f.read(32) == media["/short.mp4"].read_bytes()[:32]
    assert video.name == "short.mp4"
    assert video.url.endswith(query)  # needed to fetch it
    assert video.safe_url == server.url("/short.mp4")
    assert video.size == media["/short.mp4"].stat().st_size
    assert video.identity.startswith('"')  # the server's ETag


# --- memory ----------------------------------------------------------------------------------

_DECODE_PEAK = """
import sys, av
from vidfeat.video import remote
f = remote.open_video(sys.argv[1], block_size=int(sys.argv[2]))
with av.open(f) as c:
    n = sum(1 for _ in c.decode(video=0))
# VmHWM: this process's own peak (ru_maxrss would include the forking parent's)
peak = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))
print(n, peak * 1024)
"""


def peak_rss(script: str, *args: str) -> tuple[int, int]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", script, *args], env=env, check=True, capture_output=True, text=True)
    frames, rss = out.stdout.split()
    return int(frames), int(rss)


def test_s3_peak_memory_does_not_grow_with_video_length(s3, media):
    if not Path("/proc/self/status").exists():
        pytest.skip("peak memory is read from /proc (Linux)")
    s3.upload_file(str(media["/long.mp4"]), "vids", "long.mp4")
    s3.upload_file(str(media["/short.mp4"]), "vids", "short.mp4")
    block = str(256 * 2**10)  # 1 MiB of cache, well below the long video's size
    n_short, rss_short = peak_rss(_DECODE_PEAK, "s3://vids/short.mp4", block)
    n_long, rss_long = peak_rss(_DECODE_PEAK, "s3://vids/long.mp4", block)
    assert (n_short, n_long) == (300, 3000)
    size = media["/long.mp4"].stat().st_size
    assert rss_long <= 1.2 * rss_short, (rss_long, rss_short)
    assert rss_long - rss_short < size / 2, (rss_long, rss_short, size)  # the file is never held whole
