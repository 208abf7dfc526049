"""vidfeat view: the server (Range requests, thumbnails, API) and the page in a real headless chromium."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import vidfeat
from vidfeat.captions.attach import add_captions
from vidfeat.store import FeatureWriter, VideoResult, open_features
from vidfeat.retrieval.view import make_server

from test_search import CLASSES, SETTINGS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
D = 8


def make_webm(path: Path, seconds: int) -> None:
    """VP9/webm (Debian's chromium may lack H.264), 10 fps, frequent keyframes for exact seeks."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg CLI not installed (test fixture)")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size=96x64:rate=10:duration={seconds}",
                    "-c:v", "libvpx-vp9", "-g", "10", "-pix_fmt", "yuv420p", str(path)], check=True)  # fmt: skip


CAPTIONS = {"a": {"start": [0.5, 4.2, 6.1], "end": [1.5, 5.0, 9.0], "text": ["the cat sat", "a dog barked", "then rain"]},
            "b": {"start": [2.5], "end": [3.0], "text": ["hello world"]}}  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("view")
    videos = root / "videos"
    videos.mkdir()
    rng = np.random.default_rng(5)
    with FeatureWriter(root / "feats.h5", settings=SETTINGS, classes=CLASSES, embedding_dim=D) as writer:
        for name in ("a.webm", "b.webm"):
            make_webm(videos / name, 12)
            start = np.arange(5) * 2.0
            writer.add(VideoResult(path=name, status="ok", size_bytes=(videos / name).stat().st_size, mtime=1.0,
                                   duration_sec=12.0, fps=10.0, width=96, height=64,
                                   embedding=rng.standard_normal((5, D)).astype(np.float32),
                                   logits=rng.standard_normal((5, len(CLASSES))).astype(np.float32),
                                   start_sec=start, end_sec=start + 3.9, valid_frames=np.full(5, 8, np.int32)))  # fmt: skip
        feats = writer.finalize()
    captions = root / "caption.json"  # HowTo100M's schema, ids = the file names' stems
    captions.write_text(json.dumps(CAPTIONS), encoding="utf-8")
    add_captions(feats, captions)
    server = make_server(feats, videos)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", feats, videos
    server.shutdown()
    server.server_close()


def fetch(url: str, headers: dict | None = None):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as r:
        return r.status, dict(r.headers), r.read()


def test_video_is_served_with_range_requests(site):
    base, _, videos = site
    data = (videos / "b.webm").read_bytes()
    status, headers, body = fetch(f"{base}/video/b.webm", {"Range": "bytes=100-199"})
    assert status == 206 and body == data[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(data)}" and headers["Accept-Ranges"] == "bytes"
    status, _, body = fetch(f"{base}/video/b.webm", {"Range": "bytes=-50"})
    assert status == 206 and body == data[-50:]
    status, headers, body = fetch(f"{base}/video/b.webm")
    assert status == 200 and body == data and headers["Content-Type"] == "video/webm"
    with pytest.raises(urllib.error.HTTPError, match="404"):
        fetch(f"{base}/video/..%2Ffeats.h5")


def test_api_search_and_thumbnails(site):
    import json

    base, feats, _ = site
    _, _, body = fetch(f"{base}/api/search?clip=2&k=4")
    with open_features(feats) as f:
        assert json.loads(body) == [h.to_dict() for h in vidfeat.search(f, clip=2, k=4)]
    status, headers, body = fetch(f"{base}/thumb/7.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    status, headers, body = fetch(f"{base}/plot/b.webm.png")
    assert status == 200 and body[:8] == b"\x89PNG\r\n\x1a\n"


def test_api_videos_finds_by_part_of_the_name_a_page_at_a_time(site):
    base, _, _ = site

    def videos(query: str):
        return json.loads(fetch(f"{base}/api/videos?{query}")[2])

    first = videos("limit=1")
    assert first["file"] == "feats.h5" and first["videos"] == [{"path": "a.webm", "clips": 5}] and first["more"]
    assert videos("limit=1&offset=1") == {"file": "feats.h5", "videos": [{"path": "b.webm", "clips": 5}], "more": False}
    assert videos("q=B.W")["videos"] == [{"path": "b.webm", "clips": 5}]  # any case, any part
    assert videos("q=webm&offset=1&limit=5")["videos"] == [{"path": "b.webm", "clips": 5}]
    assert videos("q=nothing") == {"file": "feats.h5", "videos": [], "more": False}
    with pytest.raises(urllib.error.HTTPError, match="400"):
        fetch(f"{base}/api/videos?limit=100000")


def test_names_find_pages_through_many_names():
    from vidfeat.retrieval.view import _Names

    class H5:  # the two columns _Names reads, as h5py would give them
        def __init__(self, paths, counts):
            self.d = {"videos/path": _Col(np.array(paths, dtype=object)), "videos/clip_count": _Col(np.array(counts))}

        def __getitem__(self, key):
            return self.d[key]

    paths = [f"c{i % 7}/Video-{i:05d}.mp4" for i in range(70_000)]
    paths.sort()
    counts = [0 if i % 10 == 0 else 3 for i in range(len(paths))]
    names = _Names(H5(paths, counts))
    rows, more = names.find("video-0001", 0, 100)
    wanted = [i for i, p in enumerate(paths) if "video-0001" in p.lower() and counts[i]]
    assert rows == wanted[:100] and more == (len(wanted) > 100)
    rows, more = names.find("C3/", 50, 10_000)
    assert rows == [i for i, p in enumerate(paths) if p.startswith("c3/") and counts[i]][50:] and not more


class _Col:
    def __init__(self, values):
        self.values, self.shape = values, values.shape

    def asstr(self):
        return self.values

    def __getitem__(self, key):
        return self.values[key]


def test_a_click_uses_the_index_beside_the_file(tmp_path):
    pytest.importorskip("faiss")
    from test_search import make_file
    from vidfeat.retrieval.index import FaissIndex, build_index

    feats = make_file(tmp_path / "feats.h5", videos=30, clips=20, dim=16)
    with open_features(feats) as f:
        index = FaissIndex(build_index(f, factory="IVF8,Flat"))
        wanted = [h.to_dict() for h in vidfeat.search(f, clip=45, k=6, exclude_same_video=True, index=index)]
    server = make_server(feats, tmp_path)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        app = server.RequestHandlerClass.app
        assert isinstance(app.index, FaissIndex) and app.index_note == ""
        calls = []
        real = app.index.search
        app.index.search = lambda *a, **kw: calls.append(kw["k"]) or real(*a, **kw)
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert json.loads(fetch(f"{base}/api/search?clip=45&k=6&other=1")[2]) == wanted
        assert calls == [6]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make chromium)")
def test_page_plays_a_result_from_its_start_time(site):
    sync_api = pytest.importorskip("playwright.sync_api")
    base, feats, _ = site
    with open_features(feats) as f:
        query = f.clips("a.webm").first_row + 1
        first = vidfeat.search(f, clip=query, k=12)[0]
    assert first.start_sec >= 2.0  # a seek is needed: playing from 0 would not pass
    with sync_api.sync_playwright() as p:  # launch() gives chromium a fresh temporary profile
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"])  # fmt: skip
        try:
            page = browser.new_page()
            page.goto(base + "/")
            page.wait_for_selector("body[data-state=ready]", timeout=20_000)
            # the first page of videos is listed; typing part of a name finds the video
            assert page.evaluate("[...document.querySelectorAll('#found button')].map(b => b.dataset.path)") == [
                "a.webm", "b.webm"]
            page.fill("#find", "B.WE")
            page.wait_for_selector("body[data-found='1']", timeout=20_000)
            page.click("#found button[data-path='b.webm']")
            with open_features(feats) as f:
                b_rows = list(range(f.clips("b.webm").first_row, f.clips("b.webm").first_row + 5))
            page.wait_for_function(f"document.querySelector('#clips button').dataset.row === '{b_rows[0]}'",
                                   timeout=20_000)  # fmt: skip
            assert page.evaluate("[...document.querySelectorAll('#clips button')].map(b => +b.dataset.row)") == b_rows
            page.fill("#find", "a.w")
            page.wait_for_selector("#found button[data-path='a.webm']", timeout=20_000)
            page.click("#found button[data-path='a.webm']")
            page.wait_for_selector(f"#clips button[data-row='{query}']", timeout=20_000)
            page.click(f"#clips button[data-row='{query}']")
            page.wait_for_selector("body[data-state=results]", timeout=20_000)
            assert page.locator(".hit").count() == 9  # every other clip (10 clips, not the query)
            assert page.locator(".hit").first.get_attribute("data-row") == str(first.row)
            # the results can show before their first thumbnail has arrived: wait for it to load
            page.wait_for_function("document.querySelector('.hit img').complete", timeout=20_000)
            assert page.evaluate("document.querySelector('.hit img').naturalWidth") == 160  # thumbnail decoded
            # each result shows the text said during its clip, and so does each clip of the list
            with open_features(feats) as f:
                texts = f.h5["clips/text"].asstr()[()]
            shown = page.evaluate("[...document.querySelectorAll('.hit')].map(d => [+d.dataset.row, d.querySelector('.said').textContent])")
            assert shown and all(text == texts[row] for row, text in shown)
            assert any(text for _, text in shown)
            said = page.evaluate("[...document.querySelectorAll('#clips button')].map(b => [+b.dataset.row, (b.querySelector('.said') || {}).textContent || ''])")
            assert said == [[row, texts[row]] for row, _ in said] and said[0][1] == "the cat sat"
            page.locator(".hit").first.click()
            page.wait_for_function("(t) => { const v = document.getElementById('video');"
                                   " return v.readyState >= 2 && Math.abs(v.currentTime - t) < 0.5 }",
                                   arg=first.start_sec, timeout=20_000)  # fmt: skip
            state = page.evaluate("(() => { const v = document.getElementById('video');"
                                  " return {src: v.currentSrc, t: v.currentTime, error: v.error && v.error.code} })()")
            assert state["src"].endswith("/video/" + first.video) and state["error"] is None
            assert first.start_sec - 0.01 <= state["t"] < first.start_sec + 0.5
        finally:
            browser.close()


def _add_cover(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` with a still cover image as the FIRST video stream (attached_pic)."""
    from PIL import Image

    cover = dst.with_suffix(".png")
    Image.fromarray(np.full((48, 64, 3), 255, np.uint8)).save(cover)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-i", str(cover), "-map", "1", "-map", "0",
                    "-c", "copy", "-disposition:v:0", "attached_pic", str(dst)], check=True)  # fmt: skip


def test_thumbnails_are_read_as_extraction_reads_the_video(tmp_path):
    """A rotated video's thumbnail is upright; a file whose first video stream is cover art
    shows the real video; the frame is the one shown at the clip's start on the timeline. With
    no --videos, the server finds the videos under the input root the file records."""
    from PIL import Image

    from videos import frame_index_of, make_video, red_band_edge

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg CLI not installed (test fixture)")
    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos / "turned.mp4", seconds=4, fps=10, size=(64, 96), rotation=90, gop=5)
    make_video(tmp_path / "plain.mp4", seconds=4, fps=10, size=(96, 64), gop=5)
    _add_cover(tmp_path / "plain.mp4", videos / "covered.mp4")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    rng = np.random.default_rng(1)
    with FeatureWriter(elsewhere / "feats.h5", settings={**SETTINGS, "root": str(videos)}, classes=CLASSES,
                       embedding_dim=D) as writer:  # fmt: skip
        for name in ("turned.mp4", "covered.mp4"):
            start = np.array([0.0, 1.5, 2.3])
            writer.add(VideoResult(path=name, status="ok", size_bytes=(videos / name).stat().st_size, mtime=1.0,
                                   duration_sec=4.0, fps=10.0, width=64, height=96,
                                   embedding=rng.standard_normal((3, D)).astype(np.float32),
                                   logits=rng.standard_normal((3, len(CLASSES))).astype(np.float32),
                                   start_sec=start, end_sec=start + 0.8, valid_frames=np.full(3, 8, np.int32)))  # fmt: skip
        feats = writer.finalize()
    server = make_server(feats)  # no videos folder: the recorded root
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        shown = {}
        for row in range(6):
            status, headers, body = fetch(f"{base}/thumb/{row}.jpg")
            assert status == 200 and headers["Content-Type"] == "image/jpeg"
            rgb = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
            assert red_band_edge(rgb) == "top", row  # upright, and never the white cover
            shown[row] = (rgb.shape[:2], frame_index_of(rgb))
        # 0, 1.5 and 2.3 s at 10 fps: frames 0, 15 and 23; 160 px wide, the display aspect kept
        with open_features(feats) as f:
            by_video = {(f.video_of(row), float(f.h5["clips/start_sec"][row])): shown[row] for row in range(6)}
        assert by_video == {("turned.mp4", 0.0): ((240, 160), 0), ("turned.mp4", 1.5): ((240, 160), 15),
                            ("turned.mp4", 2.3): ((240, 160), 23), ("covered.mp4", 0.0): ((106, 160), 0),
                            ("covered.mp4", 1.5): ((106, 160), 15), ("covered.mp4", 2.3): ((106, 160), 23)}  # fmt: skip
        status, _, body = fetch(f"{base}/video/covered.mp4")
        assert status == 200 and body == (videos / "covered.mp4").read_bytes()
    finally:
        server.shutdown()
        server.server_close()
    videos.rename(tmp_path / "moved")  # the recorded root is gone: the file's own folder then
    server = make_server(feats)
    try:
        assert server.RequestHandlerClass.app.videos == elsewhere
    finally:
        server.server_close()
