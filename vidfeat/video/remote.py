"""Videos in object storage (``s3://``, ``gs://``) or behind an HTTP(S) URL, read in place.

Everything network-related goes through fsspec and the filesystem packages it loads for a
URL's scheme (s3fs, gcsfs, aiohttp for HTTP; ``pip install 'vidfeat[cloud]'``), imported only
when a URL is used. Credentials and endpoints are what those packages read themselves: the
environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``AWS_ENDPOINT_URL`` or fsspec's ``FSSPEC_S3_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``),
their config files and instance metadata; vidfeat has no options of its own for them.

:func:`list_videos` lists a prefix (recursively, video extensions only) or names one object or
URL; :func:`open_video` gives a seekable binary file object that ``av.open`` reads with HTTP
range requests. Reads go through a block cache (:data:`BLOCK_SIZE` blocks, the
:data:`CACHE_BLOCKS` most recently used kept), so

* an mp4 whose index (``moov``) is at the end costs the blocks holding the index and the first
  block, kept while the demuxer goes back to the start: the file is not fetched twice;
* a seek fetches only the blocks around its target, never the whole file;
* memory per open video is at most ``BLOCK_SIZE * CACHE_BLOCKS`` whatever its length.

Transient network failures (connection refused, reset or dropped mid-body, timeouts, HTTP 408,
429 and 5xx) are retried: :data:`RETRY_NOTE`. The S3 and GCS clients also retry on their own
inside each of those tries (s3fs and botocore: about 10 s a try against an endpoint that
refuses connections, so about 65 s in all before the error). A missing object (404) or a
refused one (401, 403) fails at once. A final failure is a :class:`~vidfeat.errors.VideoError` (opening, reading)
or :class:`~vidfeat.errors.VidfeatError` (listing) whose one-line reason names the URL without
its query string or user info (a signed URL's signature never reaches a message or the output).
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from ..errors import NetworkVideoError, VidfeatError, VideoError, one_line
from .formats import VIDEO_EXTENSIONS

__all__ = [
    "BACKOFF_SEC",
    "BLOCK_SIZE",
    "CACHE_BLOCKS",
    "RETRIES",
    "RETRY_NOTE",
    "RemoteFile",
    "RemoteVideo",
    "filesystem",
    "is_url",
    "list_videos",
    "open_video",
    "redact",
    "safe_url",
    "upload_folder",
]

BLOCK_SIZE = 4 * 2**20
"""Bytes fetched by one range request: big enough that sequential decoding costs few requests,
small enough that a seek reads little more than the clip it wants."""

CACHE_BLOCKS = 4
"""Blocks kept per open video (least recently used dropped): the first block and the index
block of a moov-at-the-end mp4 stay while decoding starts, so neither is fetched twice."""

BACKOFF_SEC = (1.0, 2.0, 4.0, 8.0)
"""Sleep before each retry of a transient network failure; their number is :data:`RETRIES`."""

RETRIES = len(BACKOFF_SEC)

RETRY_NOTE = f"retried {RETRIES} times over about {sum(BACKOFF_SEC):.0f} s"
"""How transient network failures are handled, in words a help text can quote."""

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# A URL in a message: its query string and fragment are dropped, its user info too.
_URL_QUERY = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>?#]*)[?#][^\s'\"<>]*")
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s/'\"<>@]*@")
# Credentials that may appear outside a URL (a header or a form echoed in an error).
_SECRET_FIELD = re.compile(
    r"((?:X-Amz-[A-Za-z-]+|AWSAccessKeyId|Signature|Expires|sig|token|access_token|key)=)[^&\s'\"]+",
    re.IGNORECASE,
)

# Statuses worth another try: request timeout, too early, too many requests, server errors.
_TRANSIENT_STATUS = frozenset({408, 425, 429})
# Exception class names (anywhere in the MRO) of network failures in aiohttp, botocore and
# fsspec, matched by name so that none of those optional packages is imported to classify.
_TRANSIENT_NAMES = frozenset(
    {
        "ClientConnectionError",  # aiohttp: refused, reset, server disconnected
        "ClientPayloadError",  # aiohttp: body cut short
        "ServerTimeoutError",
        "EndpointConnectionError",  # botocore
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "IncompleteReadError",
        "ResponseStreamingError",
        "FSTimeoutError",  # fsspec's sync() timeout
        "IncompleteRead",  # http.client
        "RemoteDisconnected",
    }
)

T = TypeVar("T")


def is_url(s: object) -> bool:
    """Whether ``s`` is a URL (``scheme://...``) rather than a local path."""
    return isinstance(s, str) and bool(_SCHEME.match(s))


def safe_url(url: str) -> str:
    """``url`` without user info and, for HTTP(S), without its query string and fragment (where
    a signed URL keeps its signature): fit for messages and names. Other schemes keep the rest
    as it is: an object key may hold ``?`` or ``#``."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    if parts.scheme.lower() in ("http", "https"):
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return f"{parts.scheme}://{netloc}{url[len(parts.scheme) + 3 + len(parts.netloc):]}"


def redact(text: str) -> str:
    """``text`` with every URL's query string and user info, and credential fields, removed."""
    text = _USERINFO.sub(r"\1", _URL_QUERY.sub(r"\1", text))
    return _SECRET_FIELD.sub(r"\1...", text)


@dataclass(frozen=True)
class RemoteVideo:
    """One remote video.

    ``url`` opens it (for a signed URL it holds the signature: keep it out of outputs and logs;
    ``safe_url`` is the printable form). ``name`` is its path relative to the input root, ``/``
    separated, without any query string: the video's key in the output. ``size`` in bytes.
    ``identity`` tells a changed object from the same one on a rerun: the ETag when the store
    gives one, else its modification time (``LastModified``, ``updated``, ``Last-Modified``),
    else ``""``.
    """

    url: str
    name: str
    size: int | None
    identity: str

    @property
    def safe_url(self) -> str:
        return safe_url(self.url)

    def open_video(self, *, sleep: Callable[[float], None] | None = None) -> RemoteFile:
        """The object as a seekable file for ``av.open`` (:func:`open_video`); VideoError when
        it cannot be opened. Call it in the process that decodes."""
        kwargs = {} if sleep is None else {"sleep": sleep}
        return open_video(self.url, size=self.size, **kwargs)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]  # type: ignore[list-item]


def _status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (aiohttp ``status``, gcsfs ``code``, botocore
    ``response``), else None."""
    for attr in ("status", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        value = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(value, int):
            return value
    return None


def _transient_cause(exc: BaseException) -> BaseException | None:
    """The exception in ``exc``'s chain that makes it worth another try (a lost or refused
    connection, a timeout, HTTP 408, 425, 429 or 5xx), else None. A lost connection anywhere in
    the chain decides first (aiohttp's cut-short body carries a parser code 400, no HTTP status;
    fsspec reports a HEAD and a GET that both lost their connection as FileNotFoundError), then
    the first HTTP status: a missing object is told by its 404, not by FileNotFoundError."""
    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, (ConnectionError, TimeoutError)) or any(
            cls.__name__ in _TRANSIENT_NAMES for cls in type(e).__mro__
        ):
            return e
    for e in chain:
        status = _status(e)
        if status is not None:
            return e if status >= 500 or status in _TRANSIENT_STATUS else None
    return None


def _reason(exc: BaseException, url: str) -> str:
    """One line saying why ``url`` failed, with no credential in it."""
    where = safe_url(url)
    cause = _transient_cause(exc)
    if cause is not None:
        return f"{where}: {redact(one_line(cause))}"
    status = next((s for s in map(_status, _chain(exc)) if s is not None), None)
    if _missing(exc):
        return f"not found: {where}"
    if isinstance(exc, PermissionError) or status in (401, 403):
        detail = f" (HTTP {status})" if status else ""
        return f"access denied{detail}: {where}: check the credentials the environment gives"
    if isinstance(exc, ImportError):
        scheme = urlsplit(url).scheme
        return f"{scheme}:// URLs need an optional package: pip install 'vidfeat[cloud]' ({redact(one_line(exc))})"
    if status is not None:
        return f"HTTP {status}: {where}: {redact(one_line(exc))}"
    return f"{where}: {redact(one_line(exc))}"


def _missing(exc: BaseException) -> bool:
    """Whether ``exc`` says the object does not exist (and not that the connection was lost)."""
    if _transient_cause(exc) is not None:
        return False
    status = next((s for s in map(_status, _chain(exc)) if s is not None), None)
    return status == 404 or (status is None and isinstance(exc, FileNotFoundError))


def _retrying(
    call: Callable[[], T],
    url: str,
    error: type[VidfeatError],
    sleep: Callable[[float], None],
    missing: str | None = None,
) -> T:
    """``call()``, retried after :data:`BACKOFF_SEC` sleeps while it fails transiently; its final
    failure raised as ``error`` with a one-line reason (``missing`` when the object does not
    exist, if given)."""
    for attempt in range(RETRIES + 1):
        try:
            return call()
        except VidfeatError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a one-line error
            if _transient_cause(exc) is not None:
                if attempt < RETRIES:
                    sleep(BACKOFF_SEC[attempt])
                    continue
                # a video's transient failure is a NetworkVideoError: a rerun tries the video again
                final = NetworkVideoError if issubclass(error, VideoError) else error
                raise final(f"network error after {RETRY_NOTE}: {_reason(exc, url)}") from exc
            if missing is not None and _missing(exc):
                raise error(missing) from exc
            raise error(_reason(exc, url)) from exc
    raise AssertionError("unreachable")


def filesystem(url: str, error: type[VidfeatError] = VidfeatError):  # -> (fsspec.AbstractFileSystem, str)
    """fsspec's filesystem and path for ``url``; ``error`` (one line) when its package is missing."""
    try:
        import fsspec.core
    except ImportError as exc:
        raise error(_reason(exc, url)) from exc
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise error(_reason(exc, url)) from exc
    except ValueError as exc:  # an unknown protocol
        raise error(f"cannot read {safe_url(url)}: {redact(one_line(exc))}") from exc


def _identity(info: dict) -> str:
    for field in ("ETag", "etag", "LastModified", "last_modified", "updated", "Last-Modified", "mtime"):
        value = info.get(field)
        if value not in (None, ""):
            return str(value)
    return ""


def list_videos(
    url: str,
    root: str | None = None,
    *,
    extensions: frozenset[str] | None = None,
    allow_empty: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> list[RemoteVideo]:
    """The videos at ``url``, sorted by name.

    ``url``: a prefix (``s3://bucket/videos/``, ``gs://...``; listed recursively, video
    extensions in any case, as :data:`vidfeat.video.formats.VIDEO_EXTENSIONS`), or one object or
    HTTP(S) URL (taken whatever its extension, as a local file given by name). A URL ending in
    ``/`` is always a prefix; otherwise it is an object when one exists by that name.

    Names are relative to ``root`` (a URL prefix holding ``url``), by default to ``url`` itself
    for a prefix and to the object's folder for one object, as :func:`vidfeat.video.inputs.discover`
    names local files. Raises VidfeatError (one line) when nothing is found, ``url`` lies
    outside ``root``, or listing fails (transient failures are retried: :data:`RETRY_NOTE`).
    ``extensions`` (lower case, with the dot) replaces the video extensions for a prefix;
    ``allow_empty`` returns ``[]`` for a prefix with none instead of raising.
    ``sleep`` waits between retries (tests pass one that does not).
    """
    fs, path = filesystem(url, VidfeatError)
    missing = f"input not found: {safe_url(url)}"
    single: dict | None = None
    if not url.endswith("/"):
        info = _retrying(lambda: fs.info(path), url, VidfeatError, sleep, missing)
        if info.get("type") != "directory":
            single = info
    if single is not None:
        found = {path: single}
    else:
        found = _retrying(lambda: fs.find(path, detail=True), url, VidfeatError, sleep, missing)
        extensions = extensions if extensions is not None else VIDEO_EXTENSIONS
        found = {
            p: i
            for p, i in found.items()
            if i.get("type", "file") == "file" and posixpath.splitext(urlsplit(p).path if is_url(p) else p)[1].lower() in extensions
        }
        if not found and not allow_empty:
            raise VidfeatError(f"no videos found under {safe_url(url)}")
    if root is None:  # a prefix itself, or one object's folder
        root = url if single is None else posixpath.dirname(safe_url(url)) + "/"
    base = safe_url(root).rstrip("/")
    videos = []
    for p, info in found.items():
        # fsspec names objects without the scheme (s3, gs) or by their whole URL (http).
        full = url if single is not None else p if is_url(p) else fs.unstrip_protocol(p)
        own = safe_url(full)  # ``full`` keeps a signed URL's query string, needed to fetch it
        if not own.startswith(base + "/"):
            raise VidfeatError(
                f"{own} lies outside the input root {safe_url(root)}: give URLs under it"
            )
        name = own[len(base) + 1 :]
        if urlsplit(own).scheme in ("http", "https"):
            name = unquote(name)
        size = info.get("size")
        videos.append(
            RemoteVideo(url=full, name=name, size=None if size is None else int(size), identity=_identity(info))
        )
    return sorted(videos, key=lambda v: v.name)


class RangeFile(io.RawIOBase):
    """A seekable, read-only binary file of ``size`` bytes whose subclass reads a byte range
    (``_read_at(pos, n)``): the one seek/read logic of remote objects and tar members."""

    size: int
    _pos = 0

    def _read_at(self, pos: int, n: int) -> bytes:  # pragma: no cover - subclasses read
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence}")
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def read(self, size: int = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed file")
        left = self.size - self._pos
        if size is None or size < 0 or size > left:
            size = left
        if size <= 0:
            return b""
        data = self._read_at(self._pos, size)
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)


class RemoteFile(RangeFile):
    """A seekable, read-only binary file over a remote object, or over ``length`` bytes of it
    from ``start`` (a member of a tar shard), for ``av.open(fileobj)``.

    Reads are range requests (fsspec's ``cat_file``) through fsspec's block cache, its blocks
    aligned to ``start`` (see the module docstring); a read failing transiently is retried
    (:data:`RETRY_NOTE`), a final failure raises VideoError. ``transferred``: the bytes
    received so far.
    """

    def __init__(
        self,
        url: str,
        fs,  # fsspec.AbstractFileSystem
        path: str,
        *,
        start: int,
        length: int,
        block_size: int,
        cache_blocks: int,
        sleep: Callable[[float], None],
    ) -> None:
        from fsspec.caching import BlockCache

        super().__init__()
        self.url = url
        self.size = length
        self._fs = fs
        self._path = path
        self._start = start
        self._sleep = sleep
        self._pos = 0
        self._transferred = 0
        self._cache = BlockCache(block_size, self._fetch, length, maxblocks=cache_blocks)

    @property
    def name(self) -> str:
        return safe_url(self.url)

    @property
    def transferred(self) -> int:
        """Bytes received from the network so far."""
        return self._transferred

    def _fetch(self, begin: int, end: int) -> bytes:
        end = min(end, self.size)
        data = self._fs.cat_file(self._path, start=self._start + begin, end=self._start + end)
        self._transferred += len(data)
        if len(data) != end - begin:  # a server that ignores Range sends the whole object
            raise VideoError(
                f"{safe_url(self.url)}: asked for bytes {self._start + begin}-{self._start + end - 1}, "
                f"got {len(data)} bytes: the server must support range requests"
            )
        return data

    def _read_at(self, pos: int, n: int) -> bytes:
        return _retrying(lambda: self._cache._fetch(pos, pos + n), self.url, VideoError, self._sleep)


def open_video(
    url: str,
    *,
    size: int | None = None,
    start: int = 0,
    length: int | None = None,
    block_size: int = BLOCK_SIZE,
    cache_blocks: int = CACHE_BLOCKS,
    sleep: Callable[[float], None] = time.sleep,
) -> RemoteFile:
    """Open ``url`` for reading: a seekable :class:`RemoteFile` to hand to ``av.open``.

    ``size`` (the object's bytes, e.g. :attr:`RemoteVideo.size`) saves the request that asks
    for it. ``start`` and ``length`` make the file the object's bytes [start, start + length)
    (a tar member; ``length`` None: to the end). ``block_size`` and ``cache_blocks`` set the
    cache: memory at most their product. ``sleep`` waits between retries (tests pass one that
    does not). Raises VideoError with a one-line reason: not found, access denied, or a network
    failure after :data:`RETRY_NOTE`. Open each video in the process that decodes it.
    """
    fs, path = filesystem(url, VideoError)
    if size is None:
        info = _retrying(lambda: fs.info(path), url, VideoError, sleep)
        size = info.get("size")
        if size is None:
            raise VideoError(f"{safe_url(url)}: the server gives no size, which seeking needs")
    size = int(size)
    if length is None:
        length = size - start
    if start < 0 or length < 0 or start + length > size:
        raise VideoError(f"{safe_url(url)}: bytes {start}-{start + length - 1} lie outside its {size} bytes")
    return RemoteFile(
        url, fs, path, start=start, length=length, block_size=block_size, cache_blocks=cache_blocks, sleep=sleep
    )


def upload_folder(
    folder: str | os.PathLike[str], url: str, *, sleep: Callable[[float], None] = time.sleep
) -> list[str]:
    """Copy every file under the local ``folder`` to the URL prefix ``url`` (same relative
    names, ``/`` separated), one object per file; transient failures of each are retried
    (:data:`RETRY_NOTE`). Returns the URLs written, sorted. Raises VidfeatError (one line,
    without credentials) when a file cannot be written."""
    fs, path = filesystem(url, VidfeatError)
    base = path.rstrip("/")
    written = []
    for local in sorted(Path(folder).rglob("*")):
        if not local.is_file():
            continue
        rel = local.relative_to(folder).as_posix()
        target = f"{base}/{rel}"
        full = url.rstrip("/") + "/" + rel
        _retrying(lambda: fs.put_file(os.fspath(local), target), full, VidfeatError, sleep)
        written.append(full)
    return written
