"""``vidfeat view``: a local web page to browse nearest clips (standard library server).

Served on 127.0.0.1 only. The page (plain HTML/JS, no build step) lists the videos; picking a clip
shows its nearest clips as a grid of thumbnails with their videos and times; clicking one plays
that video from the clip's start time, with the timeline plot of the query and result videos.

Routes: ``/`` the page; ``/api/videos``; ``/api/clips?video=P``; ``/api/search?clip=R&k=K&other=1``;
``/thumb/R.jpg`` (one frame at clip R's start, decoded with PyAV, cached); ``/video/P`` (the
file under ``--videos``, with HTTP Range requests so the browser can seek); ``/plot/P.png`` (the
timeline plot, cached; needs matplotlib).
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
from functools import lru_cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from .errors import VidfeatError

__all__ = ["make_server", "serve", "PAGE"]

_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".webm": "video/webm", ".mkv": "video/x-matroska",
          ".mov": "video/quicktime", ".ogv": "video/ogg"}  # fmt: skip

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>vidfeat view</title>
<style>
body{font:14px sans-serif;margin:12px}#main{display:flex;gap:16px}#left{width:260px}
#clips button{display:block;width:100%;text-align:left;margin:1px 0}
#grid{display:grid;grid-template-columns:repeat(auto-fill,170px);gap:8px}
.hit{border:1px solid #ccc;padding:4px;cursor:pointer;font-size:12px}.hit img{width:160px;display:block}
.hit:hover{border-color:#06c}#player video{max-width:480px}#plots img{max-width:100%}
</style></head><body>
<h3>vidfeat view: <span id="file"></span></h3>
<div id="main"><div id="left"><select id="videos"></select><div id="clips"></div></div>
<div id="right"><div id="query"></div><div id="grid"></div>
<div id="player"><p id="now"></p><video id="video" controls muted></video></div><div id="plots"></div></div></div>
<script>
const $ = (id) => document.getElementById(id);
const enc = (p) => p.split('/').map(encodeURIComponent).join('/');
const fmt = (t) => t.toFixed(2);
async function get(url) { const r = await fetch(url); if (!r.ok) throw new Error(await r.text()); return r.json(); }
function plots(paths) {
  $('plots').innerHTML = '';
  for (const p of [...new Set(paths)]) { const img = document.createElement('img'); img.src = '/plot/' + enc(p) + '.png'; img.alt = p; $('plots').appendChild(img); }
}
async function loadClips(video) {
  const clips = await get('/api/clips?video=' + encodeURIComponent(video));
  $('clips').innerHTML = '';
  for (const c of clips) {
    const b = document.createElement('button'); b.className = 'clip'; b.dataset.row = c.row;
    b.textContent = fmt(c.start_sec) + '-' + fmt(c.end_sec) + ' s  ' + c.top_class;
    b.onclick = () => search(c); $('clips').appendChild(b);
  }
}
async function search(q) {
  $('query').textContent = 'nearest clips to ' + q.video + ' ' + fmt(q.start_sec) + '-' + fmt(q.end_sec) + ' s (' + q.top_class + ')';
  const hits = await get('/api/search?k=12&clip=' + q.row);
  $('grid').innerHTML = '';
  for (const h of hits) {
    const d = document.createElement('div'); d.className = 'hit'; d.dataset.row = h.row;
    d.innerHTML = '<img src="/thumb/' + h.row + '.jpg"><b></b><br><span></span>';
    d.querySelector('b').textContent = h.video;
    d.querySelector('span').textContent = fmt(h.start_sec) + '-' + fmt(h.end_sec) + ' s, cos ' + h.similarity.toFixed(3) + ', ' + h.top_class;
    d.onclick = () => play(h); $('grid').appendChild(d);
  }
  plots([q.video, ...hits.slice(0, 1).map((h) => h.video)]);
  document.body.dataset.state = 'results';
}
function play(h) {
  const v = $('video'); const src = '/video/' + enc(h.video);
  $('now').textContent = h.video + ' from ' + fmt(h.start_sec) + ' s';
  const go = () => { v.currentTime = h.start_sec; v.play().catch(() => {}); };
  if (v.getAttribute('src') !== src) { v.src = src; v.addEventListener('loadedmetadata', go, { once: true }); } else go();
  plots([h.video]);
}
(async () => {
  const info = await get('/api/videos'); $('file').textContent = info.file;
  for (const v of info.videos) { const o = document.createElement('option'); o.value = v.path; o.textContent = v.path + ' (' + v.clips + ' clips)'; $('videos').appendChild(o); }
  $('videos').onchange = () => loadClips($('videos').value);
  if (info.videos.length) await loadClips(info.videos[0].path);
  document.body.dataset.state = 'ready';
})();
</script></body></html>
"""


def _thumbnail(path: Path, at: float, width: int = 160) -> bytes:
    """JPEG of the frame shown at ``at`` seconds (PyAV), ``width`` pixels wide."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if at > 0 and stream.time_base:
            container.seek(int(at / stream.time_base), stream=stream, backward=True)
        chosen = None
        for frame in container.decode(stream):
            if chosen is not None and frame.time is not None and frame.time > at + 1e-6:
                break
            chosen = frame
        if chosen is None:
            raise VidfeatError(f"no frame at {at:.2f} s in {path}")
        height = max(2, round(chosen.height * width / chosen.width / 2) * 2)
        image = chosen.to_image().resize((width, height))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


class _App:
    """What the handler serves: the open file, the videos folder and the caches."""

    def __init__(self, feats: str | os.PathLike[str], videos: str | os.PathLike[str] | None) -> None:
        from .store import open_features

        self.f = open_features(feats)
        self.videos = Path(videos) if videos is not None else Path(feats).parent
        self.lock = threading.Lock()  # h5py is not thread-safe: one request reads the file at a time
        self.thumb = lru_cache(maxsize=2048)(self._thumb)
        self.plot = lru_cache(maxsize=64)(self._plot)

    def close(self) -> None:
        self.f.close()

    def video_file(self, rel: str) -> Path:
        """The file of a video in the file, under the videos folder (never outside it)."""
        if rel not in set(self.f.videos.path.tolist()):
            raise FileNotFoundError(rel)
        path = (self.videos / rel).resolve()
        if self.videos.resolve() not in path.parents or not path.is_file():
            raise FileNotFoundError(rel)
        return path

    def _thumb(self, row: int) -> bytes:
        with self.lock:
            video, at = self.f.video_of(row), float(self.f.h5["clips/start_sec"][row])
        return _thumbnail(self.video_file(video), at)

    def _plot(self, video: str) -> bytes:
        from .plot import plot_timeline

        out = io.BytesIO()
        with self.lock:
            plot_timeline(self.f, video, out, dpi=80)
        return out.getvalue()

    def api(self, name: str, query: dict[str, list[str]]):
        f = self.f
        with self.lock:
            if name == "videos":
                v = f.videos
                return {"file": f.path.name,
                        "videos": [{"path": str(p), "clips": int(c)} for p, c in zip(v.path, v.clip_count) if c]}  # fmt: skip
            if name == "clips":
                from .search import clip_hit

                first_row, count = self._rows(query["video"][0])
                return [clip_hit(f, r, 1.0).to_dict() for r in range(first_row, first_row + count)]
            if name == "search":
                k = int(query.get("k", ["12"])[0])
                other = query.get("other", ["0"])[0] == "1"
                return [h.to_dict() for h in f.search(clip=int(query["clip"][0]), k=k, exclude_same_video=other)]
        raise FileNotFoundError(name)

    def _rows(self, video: str) -> tuple[int, int]:
        v = self.f.videos.index(video)
        return int(self.f.videos.clip_offset[v]), int(self.f.videos.clip_count[v])


class _Handler(BaseHTTPRequestHandler):
    app: _App

    def log_message(self, format: str, *args) -> None:  # quiet: the terminal shows the URL only
        pass

    def _send(self, body: bytes, kind: str, status: int = 200, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        try:
            self._route()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser dropped the request (seeking cancels video requests)

    def _route(self) -> None:
        url = urlparse(self.path)
        route = unquote(url.path)
        try:
            if route == "/":
                self._send(PAGE.encode(), "text/html; charset=utf-8")
            elif route.startswith("/api/"):
                data = self.app.api(route[5:], parse_qs(url.query))
                self._send(json.dumps(data).encode(), "application/json")
            elif m := re.fullmatch(r"/thumb/(\d+)\.jpg", route):
                self._send(self.app.thumb(int(m.group(1))), "image/jpeg")
            elif route.startswith("/plot/") and route.endswith(".png"):
                self._send(self.app.plot(route[6:-4]), "image/png")
            elif route.startswith("/video/"):
                self._video(self.app.video_file(route[7:]))
            else:
                raise FileNotFoundError(route)
        except (FileNotFoundError, KeyError, IndexError):
            self._send(b"not found", "text/plain", HTTPStatus.NOT_FOUND)
        except (ValueError, VidfeatError) as exc:
            self._send(str(exc).encode(), "text/plain", HTTPStatus.BAD_REQUEST)

    def _video(self, path: Path) -> None:
        """The file, or the byte range the browser asks for (``Range: bytes=a-b``)."""
        size = path.stat().st_size
        kind = _TYPES.get(path.suffix.lower(), "application/octet-stream")
        start, end, status = 0, size - 1, HTTPStatus.OK
        if m := re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip()):
            if m.group(1):
                start = int(m.group(1))
                end = min(end, int(m.group(2))) if m.group(2) else end
            elif m.group(2):
                start = max(0, size - int(m.group(2)))
            if start > end:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.end_headers()
                return
            status = HTTPStatus.PARTIAL_CONTENT
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(path, "rb") as fh:
            fh.seek(start)
            left = end - start + 1
            while left > 0:
                block = fh.read(min(left, 1 << 16))
                if not block:
                    break
                self.wfile.write(block)
                left -= len(block)


def make_server(feats: str | os.PathLike[str], videos: str | os.PathLike[str] | None = None, *,
                port: int = 0) -> ThreadingHTTPServer:  # fmt: skip
    """A server on 127.0.0.1 (``port`` 0: any free port; ``server.server_address`` says which).
    ``videos``: the folder the file's video paths are relative to (default: the file's folder).
    Call ``server.serve_forever()``; ``server.server_close()`` also closes the file."""
    app = _App(feats, videos)
    handler = type("Handler", (_Handler,), {"app": app})
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as exc:
        app.close()
        raise VidfeatError(f"cannot serve on 127.0.0.1:{port}: {exc.strerror or exc}; try another --port") from exc
    server.daemon_threads = True
    close = server.server_close

    def server_close() -> None:
        close()
        app.close()

    server.server_close = server_close  # type: ignore[method-assign]
    return server


def serve(feats, videos=None, *, port: int = 8765) -> None:
    """Serve until Ctrl-C."""
    server = make_server(feats, videos, port=port)
    host, port = server.server_address[:2]
    print(f"vidfeat view: http://{host}:{port}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
