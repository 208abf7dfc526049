"""``vidfeat view``: a local web page to browse nearest clips (standard library server).

Served on 127.0.0.1 only. The page (plain HTML/JS, no build step) finds videos by part of their
name as you type (searched by the server, a page of results at a time, so a file of a million
videos loads as fast as one of ten); picking a clip shows its nearest clips as a grid of
thumbnails with their videos and times, and, in a file with captions, the text said during each
clip; clicking one plays that video from the clip's start time, with the timeline plot of the
query and result videos. Nearest clips come from the FAISS index beside the file
(``vidfeat index``) when there is one built from it, else from exact search.

Routes: ``/`` the page; ``/api/videos?q=TEXT&offset=O&limit=L`` (the videos with clips whose path
holds TEXT, any case, in path order: ``{"file", "videos": [{"path", "clips"}], "more"}``);
``/api/clips?video=P``; ``/api/search?clip=R&k=K&other=1``; ``/thumb/R.jpg`` (clip R's first
frame, read as extraction reads it: upright, the real video stream; cached); ``/video/P`` (the
file under the videos folder, with HTTP Range requests so the browser can seek); ``/plot/P.png``
(the timeline plot, cached; needs matplotlib). A path is looked up by a binary search of
/videos/path (a few reads), never by a set of all paths.

The videos folder is ``--videos``, else the input root the file records (its ``root``
attribute, where that folder exists here), else the file's own folder.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
from collections.abc import Callable
from functools import lru_cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from ..errors import VidfeatError, VideoError

__all__ = ["make_server", "serve", "PAGE"]

_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".webm": "video/webm", ".mkv": "video/x-matroska",
          ".mov": "video/quicktime", ".ogv": "video/ogg"}  # fmt: skip

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>vidfeat view</title>
<style>
body{font:14px sans-serif;margin:12px}#main{display:flex;gap:16px}#left{width:260px}
#clips button,#found button{display:block;width:100%;text-align:left;margin:1px 0}
#find{width:100%;box-sizing:border-box}#found{max-height:240px;overflow-y:auto;margin:4px 0}
#found button.picked{font-weight:bold}
#grid{display:grid;grid-template-columns:repeat(auto-fill,170px);gap:8px}
.hit{border:1px solid #ccc;padding:4px;cursor:pointer;font-size:12px}.hit img{width:160px;display:block}
.hit:hover{border-color:#06c}#player video{max-width:480px}#plots img{max-width:100%}
.said{color:#444;font-style:italic;margin:2px 0 0}#clips .said{display:block;font-size:11px}
</style></head><body>
<h3>vidfeat view: <span id="file"></span></h3>
<div id="main"><div id="left"><input id="find" type="search" placeholder="part of a video name" autocomplete="off">
<div id="found"></div><button id="more" hidden>more</button><div id="clips"></div></div>
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
    if (c.text) { const s = document.createElement('span'); s.className = 'said'; s.textContent = c.text; b.appendChild(s); }
    b.onclick = () => search(c); $('clips').appendChild(b);
  }
}
async function search(q) {
  $('query').textContent = 'nearest clips to ' + q.video + ' ' + fmt(q.start_sec) + '-' + fmt(q.end_sec) + ' s (' + q.top_class + ')';
  const hits = await get('/api/search?k=12&clip=' + q.row);
  $('grid').innerHTML = '';
  for (const h of hits) {
    const d = document.createElement('div'); d.className = 'hit'; d.dataset.row = h.row;
    d.innerHTML = '<img src="/thumb/' + h.row + '.jpg"><b></b><br><span></span><p class="said"></p>';
    d.querySelector('b').textContent = h.video;
    d.querySelector('span').textContent = fmt(h.start_sec) + '-' + fmt(h.end_sec) + ' s, cos ' + h.similarity.toFixed(3) + ', ' + h.top_class;
    d.querySelector('.said').textContent = h.text;
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
const PAGE_SIZE = 50;
let asked = 0;  // the latest search typed: older answers arriving late are dropped
async function find(text, offset) {
  const mine = ++asked;
  const info = await get('/api/videos?limit=' + PAGE_SIZE + '&offset=' + offset + '&q=' + encodeURIComponent(text));
  if (mine !== asked) return null;
  if (!offset) $('found').innerHTML = '';
  for (const v of info.videos) {
    const b = document.createElement('button'); b.dataset.path = v.path; b.textContent = v.path + ' (' + v.clips + ' clips)';
    b.onclick = () => { for (const o of $('found').children) o.classList.toggle('picked', o === b); loadClips(v.path); };
    $('found').appendChild(b);
  }
  $('more').hidden = !info.more;
  $('more').onclick = () => find(text, offset + info.videos.length);
  document.body.dataset.found = $('found').children.length;
  return info;
}
let typing = null;
$('find').oninput = () => { clearTimeout(typing); typing = setTimeout(() => find($('find').value.trim(), 0), 150); };
(async () => {
  const info = await find('', 0); $('file').textContent = info.file;
  if (info.videos.length) { $('found').children[0].classList.add('picked'); await loadClips(info.videos[0].path); }
  document.body.dataset.state = 'ready';
})();
</script></body></html>
"""


def _thumbnail(path: Path, at: float, width: int = 160) -> bytes:
    """JPEG of the frame shown at ``at`` seconds on the file's timeline, ``width`` pixels wide."""
    from PIL import Image  # the optional extra vidfeat[plot]

    from ..video.reader import read_frame  # PyAV: imported by the first thumbnail, not by start-up

    try:
        rgb = read_frame(path, at)
    except VideoError as exc:
        raise VidfeatError(f"{path}: {exc}") from None
    height = max(2, round(rgb.shape[0] * width / rgb.shape[1] / 2) * 2)
    image = Image.fromarray(rgb).resize((width, height))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def _default_videos(f, feats: Path) -> Path:
    """The folder the file's video paths are relative to when ``--videos`` is not given: the
    input root the extraction recorded, where it exists on this machine, else the file's folder."""
    root = f.attrs.get("root")
    if isinstance(root, str) and root and Path(root).is_dir():
        return Path(root)
    return feats.parent


class _Names:
    """The file's paths of videos with clips, case-folded and joined by newlines, for finding
    the videos whose name holds a text (``str.find`` in C over one string; built on the first
    search: tens of bytes a video)."""

    def __init__(self, h5) -> None:
        paths, counts = h5["videos/path"], h5["videos/clip_count"]
        folded: list[str] = []
        rows: list[np.ndarray] = []
        step = 1 << 16
        for k in range(0, int(paths.shape[0]), step):
            names = paths.asstr()[k : k + step]
            with_clips = np.flatnonzero(counts[k : k + step] > 0)
            folded.extend(str(names[i]).casefold().replace("\n", " ") for i in with_clips.tolist())
            rows.append(with_clips + k)
        self.rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)  # /videos row of each name
        lengths = np.fromiter((len(name) + 1 for name in folded), dtype=np.int64, count=len(folded))
        self.starts = np.cumsum(lengths) - lengths  # where each name starts in the joined text
        self.text = "\n".join(folded)

    def find(self, query: str, offset: int, limit: int) -> tuple[list[int], bool]:
        """/videos rows of the names holding ``query`` (case-folded), skipping the first
        ``offset`` of them, at most ``limit``; and whether there are more."""
        query = query.casefold().replace("\n", " ")
        found: list[int] = []
        at, skipped = 0, 0
        while len(found) <= limit:
            at = self.text.find(query, at)
            if at < 0:
                break
            name = int(np.searchsorted(self.starts, at, side="right")) - 1
            at = int(self.starts[name + 1]) if name + 1 < len(self.starts) else len(self.text)  # the next name
            if skipped < offset:
                skipped += 1
                continue
            found.append(int(self.rows[name]))
        return found[:limit], len(found) > limit


class _App:
    """What the handler serves: the open file, the videos folder, the index and the caches."""

    MAX_LIMIT = 500  # videos a page of /api/videos may ask for

    def __init__(self, feats: str | os.PathLike[str], videos: str | os.PathLike[str] | None) -> None:
        from ..store import open_features

        self.f = open_features(feats)
        self.videos = Path(videos) if videos is not None else _default_videos(self.f, Path(feats))
        self.lock = threading.Lock()  # h5py is not thread-safe: one request reads the file at a time
        self.thumb = lru_cache(maxsize=2048)(self._thumb)
        self.plot = lru_cache(maxsize=64)(self._plot)
        self.index, self.index_note = self._open_index()
        self._names: _Names | None = None

    def _open_index(self):
        """The FAISS index beside the file when one was built from it (memory-mapped), and the
        note saying why one beside it is not used."""
        from .index import index_path

        if not index_path(self.f.path).is_file():
            return None, ""
        try:
            from .index import open_index_for

            return open_index_for(self.f)
        except VidfeatError as exc:  # faiss not installed
            return None, f"not using {index_path(self.f.path)}: {exc}"

    def close(self) -> None:
        self.f.close()

    def video_file(self, rel: str) -> Path:
        """The file of a video in the file, under the videos folder (never outside it)."""
        from .search import video_row

        with self.lock:
            try:
                video_row(self.f, rel)  # a binary search of /videos/path: a few reads
            except VidfeatError:
                raise FileNotFoundError(rel) from None
        path = (self.videos / rel).resolve()
        if self.videos.resolve() not in path.parents or not path.is_file():
            raise FileNotFoundError(rel)
        return path

    def _thumb(self, row: int) -> bytes:
        from .search import video_path

        with self.lock:
            h5 = self.f.h5
            video, at = video_path(self.f, h5["clips/video"][row]), float(h5["clips/start_sec"][row])
        return _thumbnail(self.video_file(video), at)

    def _plot(self, video: str) -> bytes:
        from .plot import plot_timeline

        out = io.BytesIO()
        with self.lock:
            plot_timeline(self.f, video, out, dpi=80)
        return out.getvalue()

    def _videos(self, query: dict[str, list[str]]) -> dict:
        text = query.get("q", [""])[0].strip()
        offset = int(query.get("offset", ["0"])[0])
        limit = int(query.get("limit", ["50"])[0])
        if offset < 0 or not 1 <= limit <= self.MAX_LIMIT:
            raise ValueError(f"offset must be 0 or more and limit 1 to {self.MAX_LIMIT}")
        h5 = self.f.h5
        if text:
            if self._names is None:
                self._names = _Names(h5)
            rows, more = self._names.find(text, offset, limit)
        else:  # every video with clips, in file order: read from the offset on, a block at a time
            rows, more, seen, k, n = [], False, 0, 0, int(h5["videos/path"].shape[0])
            counts = h5["videos/clip_count"]
            while k < n and not more:
                block = np.flatnonzero(counts[k : k + 4096] > 0) + k
                for r in block.tolist():
                    if seen < offset:
                        seen += 1
                    elif len(rows) < limit:
                        rows.append(r)
                    else:
                        more = True
                        break
                k += 4096
        paths = h5["videos/path"].asstr()
        counts = h5["videos/clip_count"]
        return {"file": self.f.path.name, "more": more,
                "videos": [{"path": str(paths[r]), "clips": int(counts[r])} for r in rows]}  # fmt: skip

    def api(self, name: str, query: dict[str, list[str]]):
        f = self.f
        with self.lock:
            if name == "videos":
                return self._videos(query)
            if name == "clips":
                from .search import clip_hit

                first_row, count = self._rows(query["video"][0])
                return [clip_hit(f, r, 1.0).to_dict() for r in range(first_row, first_row + count)]
            if name == "search":
                from .search import search

                k = int(query.get("k", ["12"])[0])
                other = query.get("other", ["0"])[0] == "1"
                hits = search(f, clip=int(query["clip"][0]), k=k, exclude_same_video=other, index=self.index)
                return [h.to_dict() for h in hits]
        raise FileNotFoundError(name)

    def _rows(self, video: str) -> tuple[int, int]:
        from .search import video_row

        try:
            v = video_row(self.f, video)
        except VidfeatError:
            raise FileNotFoundError(video) from None
        h5 = self.f.h5
        return int(h5["videos/clip_offset"][v]), int(h5["videos/clip_count"][v])


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
    ``videos``: the folder the file's video paths are relative to (default: the input root the
    file records, else the file's folder).
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


def serve(feats, videos=None, *, port: int = 8765, echo: Callable[[str, bool], None] | None = None) -> None:
    """Serve until Ctrl-C. ``echo(line, err)`` is told the address and a note on the index
    (``err`` True: a note for stderr); the library prints nothing itself."""
    server = make_server(feats, videos, port=port)
    app = server.RequestHandlerClass.app
    say = echo or (lambda line, err: None)
    if app.index_note:
        say(f"vidfeat: {app.index_note}", True)
    host, port = server.server_address[:2]
    say(f"vidfeat view: http://{host}:{port}/  (Ctrl-C stops)", False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
