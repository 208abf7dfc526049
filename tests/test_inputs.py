"""Finding and naming the videos of a run."""

from __future__ import annotations

import os
import re

import pytest

from vidfeat.errors import VidfeatError
from vidfeat.video.inputs import discover, read_list


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folders_are_walked_and_names_are_relative_to_the_common_root(tmp_path):
    touch(tmp_path / "v" / "a" / "x.mp4")
    touch(tmp_path / "v" / "b" / "x.MKV")
    touch(tmp_path / "v" / "b" / "notes.txt")
    touch(tmp_path / "w" / "x.webm")
    found = discover([tmp_path / "v"])
    assert found.root == tmp_path / "v" and [v.name for v in found.videos] == ["a/x.mp4", "b/x.MKV"]
    found = discover([tmp_path / "v" / "a", tmp_path / "v" / "b", tmp_path / "w"])
    assert found.root == tmp_path and [v.name for v in found.videos] == ["v/a/x.mp4", "v/b/x.MKV", "w/x.webm"]


def test_explicit_files_any_extension_and_duplicates_once(tmp_path):
    f = touch(tmp_path / "clip.bin")
    videos = discover([f, f, tmp_path]).videos
    assert [v.name for v in videos] == ["clip.bin"]


def test_undecodable_file_names_become_valid_utf8(tmp_path):
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.mp4")
    with open(raw, "wb") as fh:
        fh.write(b"x")
    videos = discover([tmp_path]).videos
    assert [v.name for v in videos] == ["caf\\xe9.mp4"]
    assert videos[0].name.encode("utf-8") and os.path.exists(videos[0].path)


def test_missing_input_and_empty_folder(tmp_path):
    with pytest.raises(VidfeatError, match="input not found"):
        discover([tmp_path / "nope"])
    with pytest.raises(VidfeatError, match="no videos found"):
        discover([tmp_path])


def test_list_file_relative_to_itself(tmp_path):
    touch(tmp_path / "d" / "a.mp4")
    listing = tmp_path / "d" / "list.txt"
    listing.write_text("# videos\na.mp4\n\n" + str(tmp_path / "d" / "a.mp4") + "\n")
    assert read_list(str(listing)) == [tmp_path / "d" / "a.mp4"] * 2
    with pytest.raises(VidfeatError, match="cannot read the list file"):
        read_list(str(tmp_path / "missing.txt"))


def test_names_are_relative_to_a_given_root_and_inputs_outside_it_are_refused(tmp_path):
    touch(tmp_path / "v" / "sub" / "a.mp4")
    touch(tmp_path / "w" / "b.mp4")
    found = discover([tmp_path / "v" / "sub" / "a.mp4"], root=tmp_path / "v")
    assert found.root == tmp_path / "v" and [v.name for v in found.videos] == ["sub/a.mp4"]
    message = re.escape(f"{tmp_path / 'w' / 'b.mp4'} lies outside the input root {tmp_path / 'v'},")
    with pytest.raises(VidfeatError, match=message):
        discover([tmp_path / "v", tmp_path / "w"], root=tmp_path / "v")


def test_listed_paths_that_do_not_exist_are_kept_unless_none_exists(tmp_path):
    touch(tmp_path / "a.mp4")
    found = discover([], listed=[tmp_path / "a.mp4", tmp_path / "gone.mp4"])
    assert [(v.name, os.path.exists(v.path)) for v in found.videos] == [("a.mp4", True), ("gone.mp4", False)]
    with pytest.raises(VidfeatError, match="none of the 2 listed videos exists"):
        discover([], listed=[tmp_path / "gone.mp4", tmp_path / "x.mp4"])


def test_a_long_list_costs_its_names_and_little_more(tmp_path):
    """The listing of a run is held for the whole run (HowTo100M: 1.2M videos): each video is a
    VideoFile with slots, its path and its name as str. With the 80-character paths here that
    is about 180 bytes a video; a Path object and a __dict__ a video made it 750 (565 when
    pathlib's table of interned names had grown before)."""
    import tracemalloc

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "AAAAAAAAAAA.mp4").write_bytes(b"")
    listed = [str(tmp_path / "x" / f"{i:011d}.mp4") for i in range(20_000)] + [str(tmp_path / "x" / "AAAAAAAAAAA.mp4")]
    tracemalloc.start()
    found = discover([], listed, root=tmp_path)
    kept = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(found.videos) == len(listed) and found.videos[0].name == "x/00000000000.mp4"
    path_bytes = sum(len(p) for p in listed) / len(listed)
    print(f"{kept / len(listed):.0f} bytes a video, of which the path's characters {path_bytes:.0f}")
    assert kept / len(listed) < 150 + path_bytes, kept
