"""The streamed captions of an assembly (vidfeat.store.caption_source): a spool written in any
order of videos, a file's own table and a table in memory give the same captions for any rows,
read as spans; the bytes estimate bounds what is written."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from vidfeat.store import caption_source
from vidfeat.store.caption_source import CaptionSource, CaptionSpool, caption_bytes, write_captions
from vidfeat.store.captions import CaptionTable


def _captions(n_videos: int, seed: int = 0) -> dict[int, list[tuple[float, float, str]]]:
    """Video row -> captions, in no order; some videos have none, some many (gaps of thousands
    of rows between the videos a block asks for)."""
    rng = np.random.default_rng(seed)
    out = {}
    for v in range(n_videos):
        m = int(rng.choice([0, 1, 3, 2500]))
        if m:
            start = rng.uniform(0, 100, m).round(2)
            out[v] = [(float(a), float(a + 1.5), f"video {v} line {j} é") for j, a in enumerate(start)]
    return out


def _as_lists(table: CaptionTable) -> list[tuple[int, float, float, str]]:
    return list(zip(table.video.tolist(), table.start_sec.tolist(), table.end_sec.tolist(), table.text.tolist()))


def _expected(by_row: dict, rows: np.ndarray) -> list[tuple[int, float, float, str]]:
    out = []
    for position, row in enumerate(rows.tolist()):
        caps = by_row.get(row, []) if row >= 0 else []
        order = sorted(range(len(caps)), key=lambda j: (caps[j][0], caps[j][1], j))
        out += [(position, caps[j][0], caps[j][1], caps[j][2]) for j in order]
    return out


def test_spool_file_and_table_gather_the_same_captions(tmp_path, monkeypatch):
    monkeypatch.setattr(caption_source, "_GAP", 100)  # spans cut often
    n = 40
    by_row = _captions(n)
    spool = CaptionSpool(tmp_path / "spool.h5", n)
    for v in np.random.default_rng(1).permutation(n).tolist():  # any order of videos
        if v in by_row:
            caps = by_row[v]
            spool.add(v, [c[0] for c in caps], [c[1] for c in caps], [c[2] for c in caps])
    from_spool = spool.finish()
    from_table = CaptionSource.of_table(CaptionTable.build(by_row), n)
    with h5py.File(tmp_path / "file.h5", "w") as h5:  # a file's own table, sorted as the file stores it
        t = from_table.table
        for name in ("video", "start_sec", "end_sec"):
            h5[f"captions/{name}"] = getattr(t, name)
        h5.create_dataset("captions/text", data=t.text, dtype=h5py.string_dtype())
    from_file = CaptionSource.of_file(tmp_path / "file.h5", n)
    rng = np.random.default_rng(2)
    for rows in (np.arange(n), rng.permutation(n)[:25], np.array([-1, 3, -1, 39, 0, 5])):
        want = _expected(by_row, rows)
        for source in (from_spool, from_table, from_file):
            with source.reading() as gather:
                assert _as_lists(gather(rows)) == want
    for source in (from_spool, from_file):
        np.testing.assert_array_equal(source.count, from_table.count)
        np.testing.assert_allclose(source.text_bytes, from_table.text_bytes)
    twice = CaptionSpool(tmp_path / "twice.h5", n)
    twice.add(0, [0.0], [1.0], ["x"])
    with pytest.raises(ValueError, match="added already"):
        twice.add(0, [0.0], [1.0], ["x"])
    twice.close()


def test_written_captions_fit_the_estimate_and_an_empty_source_writes_none(tmp_path):
    n = 12
    by_row = _captions(n, seed=3)
    source = CaptionSource.of_table(CaptionTable.build(by_row), n)
    counts = np.full(n, 30)
    with h5py.File(tmp_path / "out.h5", "w") as out:
        start = np.tile(np.arange(30) * 4.0, n)
        out["clips/start_sec"], out["clips/end_sec"] = start, start + 8.0
        with_text = write_captions(out, source, np.arange(n), counts=counts, first_frame_sec=np.zeros(n))
        assert out["captions/video"].shape == (sum(len(c) for c in by_row.values()),) and with_text > 0
    written = (tmp_path / "out.h5").stat().st_size
    assert written < caption_bytes(source, np.arange(n), counts, clip_sec=8.0, stride_sec=4.0) + 64 * 1024
    empty = CaptionSource.of_table(CaptionTable.empty(), 0)
    with h5py.File(tmp_path / "none.h5", "w") as out:
        out["clips/start_sec"], out["clips/end_sec"] = np.zeros(2), np.ones(2)
        assert write_captions(out, empty, np.array([-1, -1]), counts=np.array([1, 1]), first_frame_sec=np.zeros(2)) == 0
        assert out["captions/video"].shape == (0,) and out["clips/text"].asstr()[()].tolist() == ["", ""]
