"""Writing a final file: the one writer that both assembly (:mod:`.assemble`, the end of every
extraction) and merging shards (:mod:`.merge`) use, so that both are equally durable.

:func:`write_final` builds the file under a temporary name beside its destination and renames it
into place: a kill at any moment leaves the old destination (or none) and at most a temporary
file, which the next run removes. The steps:

1. the free space is checked against an upper estimate of the file's size
   (:func:`estimate_bytes`); too little is a one-line StoreError naming the space needed;
2. the temporary file is created and its whole estimated size reserved (:func:`reserve`), so that
   another process filling the disk meanwhile cannot fail HDF5's writes (on a copy-on-write
   filesystem such as btrfs or ZFS a reservation may not cover the writes);
3. the caller fills it, with HDF5's chunk cache off, so that a write that fails anyway fails at
   the slice assignment that made it and not while the file is closed;
4. the reserved tail is cut off (:func:`trim`), the file fsynced, renamed into place and the
   folder fsynced.

Why step 1-3: HDF5 writes metadata when datasets and the file are closed, and a failure there
cannot be reported cleanly (h5py prints it from a destructor and the library is left with a
half-closed file that crashes the process). Write errors must never reach HDF5 there.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np

from ..errors import StoreError
from .format import _reason

_DATASET_CHUNK_BYTES = 1 << 20  # largest HDF5 chunk of the final file's datasets (about 1 MiB)
_MAX_CHUNK_ROWS = 1 << 16
# Free-space estimate: HDF5 metadata (superblock, object headers, chunk indexes, heaps) on top
# of the data. Generous: a refused run costs more than a few hundred KiB of margin.
_META_BYTES = 64 << 10
_META_BYTES_PER_DATASET = 4 << 10
_META_BYTES_PER_CHUNK = 64  # chunk index entries
STRING_OVERHEAD = 32  # bytes per variable-length string: heap object header and reference
_ZERO_BLOCK = 1 << 20  # reserving by writing zeros: bytes per write

T = TypeVar("T")


# files and folders


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make renames and unlinks in ``path`` durable (no-op where directories cannot be synced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):  # the filesystem does not sync directories
            raise
    finally:
        os.close(fd)


def unlink_quiet(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def mb(n: int) -> str:
    """Bytes as the messages show them ("0.5 MB")."""
    return f"{n / 1e6:.1f} MB"


# the layout and size of a final file's datasets


def dataset_chunks(shape: tuple[int, ...], dtype: Any) -> tuple[int, ...]:
    """HDF5 chunk shape, whole rows: about 1 MiB, but no more rows than the data has.

    A chunk is allocated whole, so chunks larger than the data only cost disk space; large
    files keep 1 MiB chunks (fast sequential reads of /clips/embedding).
    """
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    rows = max(1, min(_MAX_CHUNK_ROWS, _DATASET_CHUNK_BYTES // max(1, row_bytes), shape[0]))
    return (rows, *shape[1:])


def create_dataset(h5: h5py.Group, name: str, shape: tuple[int, ...], dtype: Any) -> h5py.Dataset:
    """A chunked dataset, resizable along rows (so other tools can append)."""
    return h5.create_dataset(
        name, shape=shape, dtype=dtype, chunks=dataset_chunks(shape, dtype), maxshape=(None, *shape[1:])
    )


def _allocated_bytes(shape: tuple[int, ...], dtype: Any) -> int:
    """Bytes the chunks of a dataset made by :func:`create_dataset` take on disk (whole chunks)."""
    chunk = dataset_chunks(shape, dtype)
    n_chunks = -(-shape[0] // chunk[0])
    return n_chunks * (int(np.prod(chunk, dtype=np.int64)) * np.dtype(dtype).itemsize + _META_BYTES_PER_CHUNK)


def is_vlen_string(dtype: Any) -> bool:
    """Whether ``dtype`` is HDF5's variable-length string (its data lives in a heap, per string)."""
    info = h5py.check_string_dtype(np.dtype(dtype))
    return info is not None and info.length is None


def estimate_bytes(datasets: Iterable[tuple[tuple[int, ...], Any]], strings: Iterable[str]) -> int:
    """An upper estimate of the size of a file holding ``datasets`` (shape, dtype; each made by
    :func:`create_dataset`; variable-length string datasets with dtype object or
    ``h5py.string_dtype()``) whose variable-length strings are ``strings``."""
    total = _META_BYTES + _META_BYTES_PER_DATASET  # the root group
    for shape, dtype in datasets:
        total += _allocated_bytes(shape, np.dtype("O") if is_vlen_string(dtype) else dtype) + _META_BYTES_PER_DATASET
    total += sum(len(s.encode("utf-8")) + STRING_OVERHEAD for s in strings)
    return int(total)


# reserving space


class NoSpace(Exception):
    """Not enough free space for the final file (``needed`` and ``free`` in bytes)."""

    def __init__(self, needed: int, free: int) -> None:
        super().__init__(f"needs about {needed} bytes, {free} free")
        self.needed, self.free = needed, free


def reserve(path: Path, size: int) -> None:
    """Allocate disk blocks for the first ``size`` bytes of ``path`` (which grows to ``size``).

    HDF5 then writes into blocks that are already the file's, so no write of it fails for want
    of space. posix_fallocate where the platform and filesystem have it, else zeros are written
    past the bytes HDF5 has written so far (HDF5 writes everything it later reads). OSError
    (ENOSPC) if the space is not there.
    """
    fd = os.open(path, os.O_WRONLY)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except AttributeError:  # pragma: no cover - macOS, Windows
            pass
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
        offset = os.lseek(fd, 0, os.SEEK_END)
        zeros = bytes(min(_ZERO_BLOCK, max(0, size - offset)))
        while offset < size:
            offset += os.write(fd, zeros[: size - offset])
    finally:
        os.close(fd)


def trim(path: Path) -> None:
    """Cut a reserved file back to the end of its HDF5 data.

    HDF5 does not know that the file was made longer, so it leaves the reserved tail when it
    closes; opening the file for writing and closing it again makes HDF5 truncate it to its end
    of allocated space (nothing else is written).
    """
    h5py.File(path, "r+").close()


# the writer


def write_final(
    output: Path,
    tmp: Path,
    needed: int,
    fill: Callable[[h5py.File], T],
    *,
    action: str,
    kept: str,
    rerun: str,
) -> T:
    """Write ``output`` durably (see the module docstring): ``fill(h5)`` writes the content into
    the open temporary file ``tmp`` (beside ``output`` or in a folder of the same filesystem),
    which is then renamed to ``output``; returns what ``fill`` returns.

    ``needed`` is the :func:`estimate_bytes` of the content. Any failure removes ``tmp`` (a
    ``tmp`` left by a killed run is removed first) and leaves ``output`` as it was; a failure of
    the disk (too little space, a write error) is a one-line StoreError::

        cannot {action} {output}: it needs about 2.1 MB in {folder}, which has 0.5 MB free;
        {kept}: free at least 1.6 MB there and {rerun}

    Other exceptions (a StoreError or KeyboardInterrupt raised by ``fill``) pass through.
    """
    folder = tmp.parent
    try:
        unlink_quiet(tmp)  # a kill's leftover would count against the free space
        free = shutil.disk_usage(folder).free
        if needed > free:
            raise NoSpace(needed, free)
        try:
            out = h5py.File(tmp, "w", rdcc_nbytes=0)  # no chunk cache: see the module docstring
            try:
                reserve(tmp, needed)
                result = fill(out)
            except BaseException:
                try:  # closing writes metadata, which fails again on a full disk: the first error is the cause
                    out.close()
                except (OSError, RuntimeError):
                    pass
                raise
            out.close()  # nothing is cached, so closing writes only metadata
        except OSError as exc:  # the disk filled up after the check, before the space was reserved
            unlink_quiet(tmp)  # what it took counts as free again
            free = shutil.disk_usage(folder).free
            if exc.errno == errno.ENOSPC and needed > free:
                raise NoSpace(needed, free) from exc
            raise
        trim(tmp)
        fsync_file(tmp)
        os.replace(tmp, output)
        fsync_dir(output.parent)
    except NoSpace as exc:
        unlink_quiet(tmp)
        raise StoreError(
            f"cannot {action} {output}: it needs about {mb(exc.needed)} in {folder}, which has {mb(exc.free)} free; "
            f"{kept}: free at least {mb(exc.needed - exc.free)} there and {rerun}"
        ) from None
    except BaseException as exc:
        unlink_quiet(tmp)
        if not isinstance(exc, (OSError, RuntimeError)):
            raise
        raise StoreError(
            f"cannot {action} {output}: {_reason(exc)}; {kept}: free space (or fix the cause) and {rerun}"
        ) from exc
    return result
