"""Generated docs stay in sync with the code, and the docs with real files and options."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import click
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from vidfeat.cli import main
from vidfeat.tools.gendocs import main as gendocs_main


def test_generated_docs_are_up_to_date():
    assert gendocs_main(["--check"]) == 0, "run: python -m vidfeat.tools.gendocs"


def test_the_extract_page_explains_every_extract_option():
    page = (Path(__file__).parent.parent / "docs" / "extract.md").read_text(encoding="utf-8")
    for param in main.commands["extract"].params:
        if isinstance(param, click.Option) and param.name != "help":
            assert f"`{param.opts[-1]}" in page or f"`{param.opts[0]}" in page, param.opts
    for code in ("| 0 |", "| 3 |", "| 1 |", "| 2 |", "| 130 |"):
        assert code in page


# ---------------------------------------------------------------------------------------------
# docs/format.md against a real file

FORMAT_PAGE = Path(__file__).parent.parent / "docs" / "format.md"


def _root_attribute_table() -> dict[str, tuple[str, str]]:
    """docs/format.md's "Root attributes" table: attribute -> (type, meaning); a row naming
    several attributes (`mean`, `std`) gives each of them."""
    text = FORMAT_PAGE.read_text(encoding="utf-8")
    section = text.split("### Root attributes", 1)[1]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines()[1:]:
        if rows and not line.startswith("|"):
            break  # the end of the table
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue  # the header and its rule
        for name in re.findall(r"`([^`]+)`", cells[0]):
            rows[name] = (cells[1], cells[2])
    return rows


def _enumerated(meaning: str) -> list | None:
    """The values a meaning lists as the only ones (backticked JSON scalars: `"bf16"`, `2`),
    None when it lists none or only examples ("e.g.")."""
    if "e.g." in meaning:
        return None
    values = []
    for literal in re.findall(r"`([^`]+)`", meaning):
        try:
            value = json.loads(literal)
        except ValueError:
            continue
        if isinstance(value, (str, int, float)):
            values.append(value)
    return values or None


def _check_type(name: str, declared: str, h5: h5py.File) -> None:
    value, dtype = h5.attrs[name], h5.attrs.get_id(name).dtype
    if declared == "string":
        info = h5py.check_string_dtype(dtype)
        assert info is not None and info.encoding == "utf-8" and info.length is None, (name, dtype)
        assert isinstance(value, str), name
        return
    kind, _, shape = declared.partition("[")
    if kind == "string":  # an array of UTF-8 strings
        info = h5py.check_string_dtype(dtype)
        assert info is not None and info.encoding == "utf-8", (name, dtype)
    else:
        assert dtype == np.dtype(kind), (name, dtype, declared)
    length = shape.rstrip("]")
    if not shape:
        assert np.ndim(value) == 0, (name, value)
    elif length.isdigit():
        assert np.shape(value) == (int(length),), (name, np.shape(value))
    else:  # a length named by a letter (S segments)
        assert np.ndim(value) == 1, (name, value)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> Path:
    """A feature file from a real (tiny) extraction."""
    from checkpoints import save_tiny_model
    from videos import make_video

    root = tmp_path_factory.mktemp("format")
    model = save_tiny_model(root / "model")
    (root / "videos").mkdir()
    make_video(root / "videos" / "a.mp4", seconds=2.0, fps=10)
    out = root / "feats.h5"
    args = ["extract", str(root / "videos"), "-o", str(out), "--model", str(model), "--workers", "0", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


def _add_a_video(path: Path) -> None:
    """Add one video to a finished file, as a rerun over one more video does (a segment)."""
    from vidfeat.store import FeatureWriter, VideoResult
    from vidfeat.store.format import WRITER_ATTRS

    with h5py.File(path, "r") as h5:
        settings = {k: v for k, v in h5.attrs.items() if k not in WRITER_ATTRS}
        classes, dim = h5["classes"].asstr()[()].tolist(), h5["clips/embedding"].shape[1]
    with FeatureWriter(path, settings=settings, classes=classes, embedding_dim=dim) as writer:
        writer.add(VideoResult(path="b.mp4", status="ok", error="", size_bytes=1, mtime=1.0, duration_sec=8.0,
                               fps=10.0, width=64, height=64, embedding=np.ones((1, dim), np.float32),
                               logits=np.zeros((1, len(classes)), np.float32), start_sec=np.zeros(1),
                               end_sec=np.full(1, 2.0), valid_frames=np.full(1, 8, np.int32)))  # fmt: skip
        writer.finalize()
    with h5py.File(path, "r") as h5:
        assert h5.attrs["format_version"] == 4


def test_every_root_attribute_of_a_real_file_is_documented_and_the_other_way_round(extracted, tmp_path):
    table = _root_attribute_table()
    assert len(table) > 10  # the table was found and read
    only_captioned = {name for name, (_, meaning) in table.items() if "files with captions only" in meaning}
    assert only_captioned == {"captions_source", "captions_warnings"}
    only_grown = {name for name, (_, meaning) in table.items() if "version 4 only" in meaning}
    assert only_grown == {"segments", "segment_videos"}
    grown = tmp_path / "grown.h5"
    shutil.copy(extracted, grown)
    _add_a_video(grown)
    captioned = tmp_path / "captioned.h5"
    shutil.copy(extracted, captioned)
    (extracted.parent / "videos" / "a.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["captions", str(captioned)])
    assert result.exit_code == 0, result.output
    for path, documented in ((extracted, set(table) - only_captioned - only_grown),
                             (captioned, set(table) - only_grown), (grown, set(table) - only_captioned)):
        with h5py.File(path, "r") as h5:
            assert sorted(h5.attrs) == sorted(documented), "docs/format.md's root attribute table and a real file differ"
            for name in documented:
                declared, meaning = table[name]
                _check_type(name, declared, h5)
                allowed = _enumerated(meaning)
                if allowed is not None:
                    assert h5.attrs[name] in allowed, (name, h5.attrs[name], allowed)
