"""The resume keys of a writer: for every video with a result (in the final file, in a
committed chunk or buffered), its ``(size_bytes, mtime, status)``, which tells a rerun what is
done (:meth:`vidfeat.store.FeatureWriter.is_done`).

At HowTo100M size that is 1.2 M keys. A dict of Python strings and tuples costs about 470 bytes
a key (600 MB); :class:`ResumeKeys` holds them in numpy arrays instead, about 40 bytes a key
plus the path's UTF-8 bytes: the paths packed in one buffer, found through their ``hash()``
(sorted, binary-searched; a path is compared byte for byte, so two paths with one hash are
told apart). Keys set one at a time go to a small dict first, folded into the arrays every
:data:`FOLD` keys, so adding is amortised O(log n) and memory stays flat.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from .format import STATUSES

__all__ = ["ResumeKeys", "FOLD"]

FOLD = 65536
"""Keys set one at a time that wait in a dict before they are folded into the arrays."""
_STATUS = {s: np.int8(i) for i, s in enumerate(STATUSES)}


class ResumeKeys:
    """path -> (size_bytes, mtime, status); each key also knows whether its path was in the
    final file the writer opened (:meth:`add_many` with ``final=True``)."""

    def __init__(self) -> None:
        self._hash = np.empty(0, np.int64)  # sorted
        self._start = np.empty(0, np.int64)  # where each path's bytes start in _bytes
        self._length = np.empty(0, np.int32)
        self._size = np.empty(0, np.int64)
        self._mtime = np.empty(0, np.float64)
        self._status = np.empty(0, np.int8)
        self._final = np.empty(0, bool)
        self._bytes = np.empty(0, np.uint8)
        self._recent: dict[str, tuple[int, float, str]] = {}  # set since the last fold; none in the final file
        self._recent_new = 0  # of those, keys not in the arrays

    def __len__(self) -> int:
        return len(self._hash) + self._recent_new

    def __contains__(self, path: str) -> bool:
        return self.get(path) is not None

    def get(self, path: str) -> tuple[int, float, str] | None:
        """``(size_bytes, mtime, status)`` of ``path``, or None."""
        found = self._recent.get(path)
        if found is not None:
            return found
        i = self._find(path)
        if i < 0:
            return None
        return int(self._size[i]), float(self._mtime[i]), STATUSES[self._status[i]]

    def items(self) -> Iterator[tuple[str, tuple[int, float, str]]]:
        """Every (path, key), in no particular order."""
        for i in range(len(self._hash)):
            path = self._path_bytes(i).decode("utf-8")
            if path not in self._recent:
                yield path, (int(self._size[i]), float(self._mtime[i]), STATUSES[self._status[i]])
        yield from self._recent.items()

    def in_final(self, path: str) -> bool:
        """Whether ``path`` was in the final file (set by :meth:`add_many` with ``final=True``)."""
        i = self._find(path)
        return i >= 0 and bool(self._final[i])

    def set(self, path: str, size_bytes: int, mtime: float, status: str) -> None:
        """Set one key (a newer result of a path replaces its key)."""
        if path not in self._recent and self._find(path) < 0:
            self._recent_new += 1
        self._recent[path] = (int(size_bytes), float(mtime), str(status))
        if len(self._recent) >= FOLD:
            self._fold()

    def add_many(self, paths: Sequence[str], sizes, mtimes, statuses, *, final: bool = False) -> bool:
        """Set the keys of a table (a later row of one path wins, as later tables do); ``final``:
        these are the final file's videos. Returns whether any of ``paths`` was in the final file
        before."""
        self._fold()
        return self._merge(list(paths), np.asarray(sizes, np.int64), np.asarray(mtimes, np.float64),
                           np.array([_STATUS[str(s)] for s in statuses], np.int8), final)  # fmt: skip

    # internals

    def _find(self, path: str) -> int:
        """The index of ``path`` in the arrays, or -1."""
        h = hash(path)
        i = int(np.searchsorted(self._hash, h))
        if i == len(self._hash) or self._hash[i] != h:
            return -1
        encoded = path.encode("utf-8")
        while i < len(self._hash) and self._hash[i] == h:
            if self._path_bytes(i) == encoded:
                return i
            i += 1
        return -1

    def _path_bytes(self, i: int) -> bytes:
        start = int(self._start[i])
        return self._bytes[start : start + int(self._length[i])].tobytes()

    def _fold(self) -> None:
        if not self._recent:
            return
        paths = list(self._recent)
        values = list(self._recent.values())
        self._recent, self._recent_new = {}, 0
        self._merge(paths, np.array([v[0] for v in values], np.int64), np.array([v[1] for v in values], np.float64),
                    np.array([_STATUS[v[2]] for v in values], np.int8), False)  # fmt: skip

    def _merge(self, paths: list[str], sizes: np.ndarray, mtimes: np.ndarray, statuses: np.ndarray,
               final: bool) -> bool:  # fmt: skip
        """Fold a batch of keys into the arrays (later rows of a path win); whether any of its
        paths was in the final file."""
        hashes = np.fromiter(map(hash, paths), dtype=np.int64, count=len(paths))
        keep = _last_of_each(paths, hashes)
        replaced_final = False
        known = np.zeros(len(keep), bool)  # rows whose hash is in the arrays: maybe a known path
        if len(self._hash):
            at = np.minimum(np.searchsorted(self._hash, hashes[keep]), len(self._hash) - 1)
            known = self._hash[at] == hashes[keep]
        new = keep[~known].tolist()
        for j in keep[known].tolist():
            i = self._find(paths[j])
            if i < 0:  # another path with the same hash
                new.append(j)
                continue
            self._size[i], self._mtime[i], self._status[i] = sizes[j], mtimes[j], statuses[j]
            replaced_final |= bool(self._final[i])
            self._final[i] |= final
        if not new:
            return replaced_final
        new_index = np.asarray(new, np.int64)
        encoded = [paths[j].encode("utf-8") for j in new]
        lengths = np.fromiter(map(len, encoded), dtype=np.int32, count=len(encoded))
        starts = len(self._bytes) + np.cumsum(lengths, dtype=np.int64) - lengths
        self._bytes = np.concatenate((self._bytes, np.frombuffer(b"".join(encoded), np.uint8)))
        columns = (
            (self._hash, hashes[new_index]),
            (self._start, starts),
            (self._length, lengths),
            (self._size, sizes[new_index]),
            (self._mtime, mtimes[new_index]),
            (self._status, statuses[new_index]),
            (self._final, np.full(len(new), final)),
        )
        merged = [np.concatenate(pair) for pair in columns]
        order = np.argsort(merged[0], kind="stable")
        (self._hash, self._start, self._length, self._size, self._mtime, self._status,
         self._final) = (column[order] for column in merged)  # fmt: skip
        return replaced_final


def _last_of_each(paths: list[str], hashes: np.ndarray) -> np.ndarray:
    """Indices of the last row of each distinct path, in row order. Rows are grouped by hash
    (one sort); only rows whose hash repeats are compared as strings."""
    n = len(paths)
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    repeats = np.flatnonzero(ordered[1:] == ordered[:-1])  # r: row r + 1 has row r's hash
    if not len(repeats):
        return np.arange(n, dtype=np.int64)
    keep = np.ones(n, bool)
    for a in repeats.tolist():
        if a > 0 and ordered[a - 1] == ordered[a]:
            continue  # not the start of a run of one hash
        b = a + 1
        while b < n and ordered[b] == ordered[a]:
            b += 1
        last: dict[str, int] = {}
        for row in order[a:b].tolist():  # stable: the rows of one hash in row order
            if paths[row] in last:
                keep[last[paths[row]]] = False
            last[paths[row]] = row
    return np.flatnonzero(keep)
