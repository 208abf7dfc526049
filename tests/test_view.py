"""vidfeat view: the server (Range requests, thumbnails, API) and the page in a real headless chromium."""

from __future__ import annotations

import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from vidfeat.store import FeatureWriter, VideoResult, open_features
from vidfeat.view import make_server

from test_search import CLASSES, SETTINGS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
D = 8


def make_webm(path: Path, seconds: int) -> None:
    """VP9/webm (Debian's chromium may lack H.264), 10 fps, frequent keyframes for exact seeks."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg CLI not installed (test fixture)")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size=96x64:rate=10:duration={seconds}",
                    "-c:v", "libvpx-vp9", "-g", "10", "-pix_fmt", "yuv420p", str(path)], check=True)  # fmt: skip


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
        assert json.loads(body) == [h.to_dict() for h in f.search(clip=2, k=4)]
    status, headers, body = fetch(f"{base}/thumb/7.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    status, headers, body = fetch(f"{base}/plot/b.webm.png")
    assert status == 200 and body[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make chromium)")
def test_page_plays_a_result_from_its_start_time(site):
    sync_api = pytest.importorskip("playwright.sync_api")
    base, feats, _ = site
    with open_features(feats) as f:
        query = f.clips("a.webm").first_row + 1
        first = f.search(clip=query, k=12)[0]
    assert first.start_sec >= 2.0  # a seek is needed: playing from 0 would not pass
    with sync_api.sync_playwright() as p:  # launch() gives chromium a fresh temporary profile
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"])  # fmt: skip
        try:
            page = browser.new_page()
            page.goto(base + "/")
            page.wait_for_selector("body[data-state=ready]", timeout=20_000)
            page.click(f"#clips button[data-row='{query}']")
            page.wait_for_selector("body[data-state=results]", timeout=20_000)
            assert page.locator(".hit").count() == 9  # every other clip (10 clips, not the query)
            assert page.locator(".hit").first.get_attribute("data-row") == str(first.row)
            # the results can show before their first thumbnail has arrived: wait for it to load
            page.wait_for_function("document.querySelector('.hit img').complete", timeout=20_000)
            assert page.evaluate("document.querySelector('.hit img').naturalWidth") == 160  # thumbnail decoded
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
