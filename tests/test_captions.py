"""Caption sources (HowTo100M JSON, per-video CSV, VTT/SRT sidecars) and the clip alignment rule."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vidfeat.captions import (
    WARNING_KINDS,
    Caption,
    Captions,
    as_arrays,
    read_file,
    read_sidecars,
    read_source,
    sidecars,
    video_id,
)
from vidfeat.captions import sources
from vidfeat.store.captions import align
from vidfeat.errors import VidfeatError

ROOT = Path(__file__).resolve().parent.parent

# What yt-dlp writes for YouTube's auto-generated English captions (`--write-auto-subs`,
# `name.en.vtt`): the header with Kind/Language, every cue `align:start position:0%`; a cue shows
# the line already on screen (plain) and the newly spoken line with `<00:..>` word times and
# `<c>` tags; between them a 10 ms "transition" cue repeats the line over a one-space line. The
# first cue's top line is a single space.
ROLLING_VTT = """\
WEBVTT
Kind: captions
Language: en

00:00:00.160 --> 00:00:03.429 align:start position:0%
 
hello<00:00:00.960><c> everyone</c><00:00:01.520><c> and</c><00:00:02.159><c> welcome</c><00:00:02.560><c> back</c>

00:00:03.429 --> 00:00:03.439 align:start position:0%
hello everyone and welcome back
 

00:00:03.439 --> 00:00:05.749 align:start position:0%
hello everyone and welcome back
today<00:00:03.760><c> we're</c><00:00:04.000><c> making</c><00:00:04.160><c> bread</c><00:00:04.480><c> at</c><00:00:04.720><c> home</c>

00:00:05.749 --> 00:00:05.759 align:start position:0%
today we're making bread at home
 

00:00:05.759 --> 00:00:08.310 align:start position:0%
today we're making bread at home
first<00:00:06.080><c> mix</c><00:00:06.400><c> the</c><00:00:06.720><c> flour</c><00:00:07.120><c> and</c><00:00:07.440><c> water</c>

00:00:08.310 --> 00:00:08.320 align:start position:0%
first mix the flour and water
 

00:00:08.320 --> 00:00:11.030 align:start position:0%
first mix the flour and water
&gt;&gt;<00:00:08.880><c> then</c><00:00:09.200><c> let</c><00:00:09.520><c> it</c><00:00:09.840><c> rest</c>

00:00:11.030 --> 00:00:11.040 align:start position:0%
&gt;&gt; then let it rest
 

00:00:11.040 --> 00:00:13.870 align:start position:0%
&gt;&gt; then let it rest
[Music]

"""
ROLLING_LINES = [
    Caption(0.16, 3.429, "hello everyone and welcome back"),
    Caption(3.439, 5.749, "today we're making bread at home"),
    Caption(5.759, 8.31, "first mix the flour and water"),
    Caption(8.32, 11.03, ">> then let it rest"),
    Caption(11.04, 13.87, "[Music]"),
]

# A hand-made subtitle file: cues do not repeat; a cue's lines are one caption.
MANUAL_VTT = """\
WEBVTT

intro
00:00:01.000 --> 00:00:04.000 line:90%
<v Chef>Welcome to the <b>kitchen</b>.</v>
Today: bread &amp; butter.

00:04.500 --> 00:06.000
No.

00:06.000 --> 00:07.000
No.
"""

SRT = """\
1
00:00:01,000 --> 00:00:03,500
<i>Knead the dough</i>
for ten   minutes

2
00:00:04,000 --> 00:00:05,000
Cover it.

"""


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _kinds(caps: Captions) -> dict[str, int]:
    return dict(caps.counts)


# ---------------------------------------------------------------------------- ids


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a/b/nVbIUDjzWY4.mp4", "nVbIUDjzWY4"),
        ("-0aBcDeFgHi.mp4", "-0aBcDeFgHi"),
        ("videos/_xY12345678.webm", "_xY12345678"),
        ("x.en.mp4", "x.en"),
        (Path("/abs/clip.mkv"), "clip"),
        ("noext", "noext"),
    ],
)
def test_video_id_is_the_name_without_its_last_extension(path, expected):
    assert video_id(path) == expected


# ---------------------------------------------------------------------------- VTT


def test_rolling_auto_captions_give_each_spoken_line_once_with_its_own_times(tmp_path):
    out = Captions()
    caps = read_file(_write(tmp_path / "nVbIUDjzWY4.en.vtt", ROLLING_VTT), out)
    assert caps == ROLLING_LINES
    assert out.warnings == [] and not out.counts


def test_rolling_auto_captions_repeat_no_line_within_a_clip(tmp_path):
    caps = read_source(_write(tmp_path / "nVbIUDjzWY4.en.vtt", ROLLING_VTT))
    assert list(caps) == ["nVbIUDjzWY4"]
    starts = np.arange(0.0, 14.0, 0.5)
    texts = align(starts, starts + 4.0, *as_arrays(caps["nVbIUDjzWY4"]))
    lines = [c.text for c in ROLLING_LINES]
    for clip_text in texts:
        for line in lines:
            assert clip_text.count(line) <= 1, clip_text
    # every spoken line reaches some clip, and the first clip holds exactly the first two lines
    assert all(any(line in t for t in texts) for line in lines)
    assert texts[0] == "hello everyone and welcome back today we're making bread at home"


def test_rolling_line_spoken_twice_is_kept_twice(tmp_path):
    vtt = (
        "WEBVTT\nKind: captions\nLanguage: en\n\n"
        "00:00:00.000 --> 00:00:01.990 align:start position:0%\n \nstir<00:00:00.500><c> it</c>\n\n"
        "00:00:01.990 --> 00:00:02.000 align:start position:0%\nstir it\n \n\n"
        "00:00:02.000 --> 00:00:03.990 align:start position:0%\nstir it\nstir<00:00:02.500><c> it</c>\n\n"
        "00:00:03.990 --> 00:00:04.000 align:start position:0%\nstir it\n \n\n"
        "00:00:04.000 --> 00:00:05.000 align:start position:0%\nstir it\ndone\n"
    )
    caps = read_file(_write(tmp_path / "v.vtt", vtt), Captions())
    assert caps == [Caption(0.0, 1.99, "stir it"), Caption(2.0, 3.99, "stir it"), Caption(4.0, 5.0, "done")]


def test_older_three_line_rolling_captions_with_colour_tags(tmp_path):
    # The shape youtube-dl wrote in 2016: a `##` header end, colour classes, a one-space line
    # before the first words, and up to three lines on screen, the oldest kept on top.
    vtt = """\
WEBVTT
Kind: captions
Language: en
Style:
::cue(c.colorCCCCCC) { color: rgb(204,204,204);
 }
##

00:00:01.210 --> 00:00:04.640 align:start position:0%
 
<c.colorCCCCCC>right</c>

00:00:04.640 --> 00:00:05.040 align:start position:0%
 
<c.colorCCCCCC>right
 </c>

00:00:05.040 --> 00:00:06.090 align:start position:0%
 
<c.colorCCCCCC>right</c>
so<00:00:05.180><c> this</c><c.colorE5E5E5><00:00:05.270><c> dish</c></c><00:00:05.550><c> is</c>

00:00:06.090 --> 00:00:06.420 align:start position:0%
<c.colorCCCCCC>right</c>
so this<c.colorE5E5E5> dish</c> is
 

00:00:06.420 --> 00:00:08.280 align:start position:0%
<c.colorCCCCCC>right</c>
so this<c.colorE5E5E5> dish</c> is
called<c.colorE5E5E5><00:00:06.840><c> pad</c><00:00:07.050><c> thai</c></c>
"""
    caps = read_file(_write(tmp_path / "v.en.vtt", vtt), Captions())
    assert caps == [Caption(1.21, 4.64, "right"), Caption(5.04, 6.09, "so this dish is"), Caption(6.42, 8.28, "called pad thai")]


def test_manual_vtt_gives_one_caption_per_cue_with_tags_stripped(tmp_path):
    out = Captions()
    caps = read_file(_write(tmp_path / "v.vtt", MANUAL_VTT), out)
    assert caps == [
        Caption(1.0, 4.0, "Welcome to the kitchen. Today: bread & butter."),
        Caption(4.5, 6.0, "No."),
        Caption(6.0, 7.0, "No."),  # a real repeat in a file that is not rolling stays
    ]
    assert not out.counts


# ---------------------------------------------------------------------------- SRT


def test_srt_cues_with_tags_and_line_breaks(tmp_path):
    out = Captions()
    caps = read_file(_write(tmp_path / "v.srt", SRT), out)
    assert caps == [Caption(1.0, 3.5, "Knead the dough for ten minutes"), Caption(4.0, 5.0, "Cover it.")]
    assert not out.counts


def test_srt_converted_from_rolling_captions_is_collapsed_too(tmp_path):
    srt = (
        "1\n00:00:00,160 --> 00:00:03,429\nhello everyone\n\n"
        "2\n00:00:03,429 --> 00:00:03,439\nhello everyone\n\n"
        "3\n00:00:03,439 --> 00:00:05,749\nhello everyone\ntoday we bake\n\n"
        "4\n00:00:05,749 --> 00:00:05,759\ntoday we bake\n\n"
        "5\n00:00:05,759 --> 00:00:08,000\ntoday we bake\nlet's start\n"
    )
    caps = read_file(_write(tmp_path / "v.en.srt", srt), Captions())
    assert caps == [Caption(0.16, 3.429, "hello everyone"), Caption(3.439, 5.749, "today we bake"), Caption(5.759, 8.0, "let's start")]


# ---------------------------------------------------------------------------- CSV


def test_folder_of_csv_files_one_per_video(tmp_path):
    folder = tmp_path / "howto100m_captions"
    # pandas' to_csv with its index column; quoted text with commas and a line break
    _write(folder / "-0aBcDeFgHi.csv", 'start,end,text\n0.0,4.05,"so today, um, we are"\n3.2,7.5,"going to\nmake pancakes"\n')
    _write(folder / "_xY12345678.csv", ',start,end,text\n0,12.0,15.5,flip it\n1,10.0,12.0,  heat   the pan \n')
    caps = read_source(folder)
    assert sorted(caps) == ["-0aBcDeFgHi", "_xY12345678"]
    assert caps["-0aBcDeFgHi"] == [Caption(0.0, 4.05, "so today, um, we are"), Caption(3.2, 7.5, "going to make pancakes")]
    assert caps["_xY12345678"] == [Caption(10.0, 12.0, "heat the pan"), Caption(12.0, 15.5, "flip it")]  # sorted by start
    assert not caps.counts and caps.summary() == "4 captions for 2 videos"


# ---------------------------------------------------------------------------- HowTo100M JSON


@pytest.mark.parametrize("reader", ["ijson", "json"])
def test_howto100m_caption_json_with_ids_starting_with_dash_and_underscore(tmp_path, monkeypatch, reader):
    """Read a video at a time with ijson (the captions extra), or whole with json without it:
    the same captions."""
    if reader == "json":
        monkeypatch.setitem(sys.modules, "ijson", None)  # `import ijson` raises ImportError
    data = {
        "-0aBcDeFgHi": {"start": [5.0, 0.5], "end": [9.2, 4.8], "text": ["cut onion small", "today make soup"]},
        "_xY12345678": {"start": [1.0], "end": [3.0], "text": ["add  salt\n taste"]},
        "nVbIUDjzWY4": {"start": [2, 2], "end": [6, 4], "text": ["b", "a"]},
    }
    caps = read_source(_write(tmp_path / "caption.json", json.dumps(data)))
    assert caps["-0aBcDeFgHi"] == [Caption(0.5, 4.8, "today make soup"), Caption(5.0, 9.2, "cut onion small")]
    assert caps["_xY12345678"] == [Caption(1.0, 3.0, "add salt taste")]
    assert caps["nVbIUDjzWY4"] == [Caption(2.0, 4.0, "a"), Caption(2.0, 6.0, "b")]  # by start, then end
    assert not caps.counts


def test_howto100m_raw_caption_json_keeps_its_overlapping_entries(tmp_path):
    raw = {
        "nVbIUDjzWY4": {
            "start": [0.0, 2.1, 4.4, 6.0],
            "end": [4.4, 6.0, 8.9, 10.2],
            "text": ["hi everyone today we're", "we're going to show you", "show you how to fix a", "fix a flat tire"],
        }
    }
    caps = read_source(_write(tmp_path / "raw_caption.json", json.dumps(raw)), video_ids=["nVbIUDjzWY4"])
    assert [(c.start_sec, c.end_sec) for c in caps["nVbIUDjzWY4"]] == [(0.0, 4.4), (2.1, 6.0), (4.4, 8.9), (6.0, 10.2)]
    assert align([0.0, 6.0], [2.0, 8.0], *as_arrays(caps["nVbIUDjzWY4"])) == [
        "hi everyone today we're",
        "show you how to fix a fix a flat tire",
    ]
    assert not caps.counts


def test_video_ids_skip_unknown_ids_and_warn_videos_without_captions(tmp_path):
    data = {
        "-0aBcDeFgHi": {"start": [0.0], "end": [1.0], "text": ["kept"]},
        "_notlisted_": {"start": [0.0], "end": [1.0], "text": ["skipped"]},
    }
    caps = read_source(_write(tmp_path / "caption.json", json.dumps(data)), video_ids=["-0aBcDeFgHi", "missingvid1"])
    assert list(caps) == ["-0aBcDeFgHi"]
    assert _kinds(caps) == {"unknown_video": 1, "no_captions": 1}
    assert any("_notlisted_" in w and "not among the videos" in w for w in caps.warnings)
    assert any("missingvid1" in w and "no captions" in w for w in caps.warnings)
    # ids known to the caller but not wanted now (a file's older videos): skipped without a warning;
    # with a sink, each video's captions go there as they are read
    got = []
    caps = read_source(tmp_path / "caption.json", video_ids=["-0aBcDeFgHi"], skip_ids={"_notlisted_"},
                       sink=lambda vid, found: got.append((vid, found)))  # fmt: skip
    assert got == [("-0aBcDeFgHi", [Caption(0.0, 1.0, "kept")])] and not caps.by_video
    assert not caps.counts and len(caps) == 1 and caps.num_captions == 1


# ---------------------------------------------------------------------------- bad input


def _json_case(entry) -> dict:
    return {"vid": entry}


BAD_CASES = [
    # (name, file name, content, expected counts, text in the warning)
    ("json unparseable", "caption.json", '{"vid": {"start": [0.0', {"unreadable_file": 1}, "cannot read it as JSON"),
    ("json not an object", "caption.json", "[1, 2]", {"unreadable_file": 1}, "not a {video_id"),
    (
        "json lists of different lengths",
        "caption.json",
        json.dumps(_json_case({"start": [0.0, 1.0], "end": [1.0], "text": ["a", "b"]})),
        {"bad_entry": 1, "no_captions": 1},
        "expected start, end and text lists",
    ),
    (
        "json negative time",
        "caption.json",
        json.dumps(_json_case({"start": [-1.0, 0.0], "end": [2.0, 1.0], "text": ["neg", "ok"]})),
        {"bad_time": 1},
        "negative time",
    ),
    (
        "json reversed times",
        "caption.json",
        json.dumps(_json_case({"start": [3.0, 0.0], "end": [2.0, 1.0], "text": ["rev", "ok"]})),
        {"bad_time": 1},
        "ends before it starts",
    ),
    (
        "json time not a number",
        "caption.json",
        json.dumps(_json_case({"start": ["0:01", 0.0], "end": [2.0, 1.0], "text": ["str", "ok"]})),
        {"bad_time": 1},
        "not numbers of seconds",
    ),
    (
        "json empty and missing text",
        "caption.json",
        json.dumps(_json_case({"start": [0.0, 1.0, 2.0], "end": [1.0, 2.0, 3.0], "text": ["  \n ", None, "ok"]})),
        {"empty_text": 2},
        "empty text",
    ),
    ("vtt unparseable", "vid.vtt", "this is not a subtitle file\n", {"unreadable_file": 1, "no_captions": 1}, "cannot read it as WebVTT"),
    (
        "vtt reversed cue",
        "vid.vtt",
        "WEBVTT\n\n00:00:05.000 --> 00:00:04.000\nbackwards\n\n00:00:06.000 --> 00:00:07.000\nok\n",
        {"bad_time": 1},
        "ends before it starts",
    ),
    (
        "vtt empty cue",
        "vid.vtt",
        "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\n<c> </c>\n\n00:00:06.000 --> 00:00:07.000\nok\n",
        {"empty_text": 1},
        "empty text",
    ),
    ("srt not utf-8", "vid.srt", b"1\n00:00:01,000 --> 00:00:02,000\n\xff\xfe bad\n", {"unreadable_file": 1, "no_captions": 1}, "cannot read it as SRT"),
    ("srt without cues", "vid.srt", "only words, no times\n", {"unreadable_file": 1, "no_captions": 1}, "no SRT cues"),
    ("csv without header", "vid.csv", "0.0,1.0,hello\n", {"unreadable_file": 1, "no_captions": 1}, "no start,end,text header"),
    ("csv bad number", "vid.csv", "start,end,text\nabc,1.0,hello\n0.0,1.0,ok\n", {"bad_time": 1}, "line 2"),
    ("csv empty text", "vid.csv", "start,end,text\n0.0,1.0,\n1.0,2.0,ok\n", {"empty_text": 1}, "empty text"),
]


@pytest.mark.parametrize(("name", "filename", "content", "expected", "text"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_is_one_warning_line_per_case_and_counted(tmp_path, name, filename, content, expected, text):
    caps = read_source(_write(tmp_path / filename, content))
    assert _kinds(caps) == expected
    assert len(caps.warnings) == sum(expected.values())
    assert all("\n" not in w and w for w in caps.warnings)
    assert any(text in w for w in caps.warnings), caps.warnings
    assert set(caps.counts) <= set(WARNING_KINDS)
    # the good captions of a partly bad source are kept
    if caps:
        assert [c.text for c in caps["vid"]] == ["ok"]


def test_one_bad_file_in_a_folder_does_not_stop_the_others(tmp_path):
    _write(tmp_path / "good.csv", "start,end,text\n0.0,1.0,fine\n")
    _write(tmp_path / "bad.csv", b"start,end,text\n0.0,1.0,\xff\xfe\n")
    _write(tmp_path / "broken.vtt", "WEBVTT\n\n00:00:xx.000 --> 00:00:02.000\nhi\n")
    caps = read_source(tmp_path)
    assert caps["good"] == [Caption(0.0, 1.0, "fine")]
    assert caps.counts["unreadable_file"] == 2 and caps.counts["no_captions"] == 2


def test_warning_lines_are_capped_but_counts_are_not(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_WARNINGS", 3)
    entry = {"start": [0.0] * 5, "end": [1.0] * 5, "text": [""] * 5}
    caps = read_source(_write(tmp_path / "caption.json", json.dumps({"vid": entry})))
    assert caps.counts["empty_text"] == 5 and caps.counts["no_captions"] == 1
    assert len(caps.warnings) == 3 and caps.warnings_left_out == 3
    assert caps.summary() == "0 captions for 0 videos; 6 warnings (5 empty_text, 1 no_captions)"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "nope.json", "does not exist"),
        (lambda tmp: _write(tmp / "captions.txt", "hello"), "not a known kind (.txt)"),
        (lambda tmp: _write(tmp / "only_video" / "a.mp4", b"\0").parent, "no .csv, .vtt or .srt caption files"),
    ],
)
def test_missing_or_unknown_source_is_an_error(tmp_path, make, message):
    with pytest.raises(VidfeatError, match=re.escape(message)) as info:
        read_source(make(tmp_path))
    assert "\n" not in str(info.value) and "pass a HowTo100M caption.json" in str(info.value)


def test_missing_subtitle_library_is_an_error_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "webvtt", None)  # import webvtt now raises ImportError
    with pytest.raises(VidfeatError, match=r"pip install 'vidfeat\[captions\]'"):
        read_source(_write(tmp_path / "v.vtt", MANUAL_VTT))


# ---------------------------------------------------------------------------- sidecars


def test_sidecar_preference_plain_then_english_then_others(tmp_path):
    for name in ["x.de.vtt", "x.fr.srt", "x.en-US.vtt", "x.en.srt", "x.srt", "x.en.vtt", "x.vtt", "y.en.vtt", "x.txt", "xx.vtt"]:
        _write(tmp_path / name, MANUAL_VTT)
    assert [p.name for p in sidecars(tmp_path / "x.mp4")] == [
        "x.vtt", "x.srt", "x.en.vtt", "x.en.srt", "x.en-US.vtt", "x.de.vtt", "x.fr.srt",
    ]  # fmt: skip
    assert [p.name for p in sidecars(tmp_path / "y.mp4")] == ["y.en.vtt"]
    assert sidecars(tmp_path / "z.mp4") == []
    # x.en.mp4's own plain sidecar is x.en.vtt (for x.mp4 it is the English one)
    assert [p.name for p in sidecars(tmp_path / "x.en.mp4")][:2] == ["x.en.vtt", "x.en.srt"]


def test_read_sidecars_uses_the_preferred_readable_file(tmp_path):
    _write(tmp_path / "a.vtt", "not a vtt")  # preferred, unreadable: the next one is used
    _write(tmp_path / "a.en.vtt", ROLLING_VTT)
    _write(tmp_path / "b.en.srt", SRT)
    _write(tmp_path / "b.de.srt", "1\n00:00:01,000 --> 00:00:02,000\nKnete den Teig\n")
    for name in "abc":
        _write(tmp_path / f"{name}.mp4", b"\0")
    caps = read_sidecars([tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "c.mp4"])
    assert [c.text for c in caps["a"]] == [c.text for c in ROLLING_LINES]
    assert caps["b"][0].text == "Knead the dough for ten minutes"
    assert "c" not in caps
    assert _kinds(caps) == {"unreadable_file": 1, "no_captions": 1}
    # keyed by the caller's names (e.g. names in the output file)
    named = read_sidecars({"sub/a.mp4": tmp_path / "a.mp4"})
    assert list(named) == ["sub/a.mp4"]


def test_folder_of_sidecars_as_a_source(tmp_path):
    _write(tmp_path / "nVbIUDjzWY4.en.vtt", ROLLING_VTT)
    _write(tmp_path / "nVbIUDjzWY4.de.vtt", MANUAL_VTT)
    _write(tmp_path / "sub" / "-0aBcDeFgHi.srt", SRT)
    _write(tmp_path / "x.en.vtt", MANUAL_VTT)
    caps = read_source(tmp_path)
    assert sorted(caps) == ["-0aBcDeFgHi", "nVbIUDjzWY4", "x"]
    assert [c.text for c in caps["nVbIUDjzWY4"]] == [c.text for c in ROLLING_LINES]  # English before German
    # told the videos, x.en.vtt is the plain sidecar of the video x.en
    told = read_source(tmp_path, video_ids=["nVbIUDjzWY4", "-0aBcDeFgHi", "x.en"])
    assert sorted(told) == ["-0aBcDeFgHi", "nVbIUDjzWY4", "x.en"] and not told.counts


def test_duplicate_files_for_one_id_in_two_folders(tmp_path):
    _write(tmp_path / "a" / "vid.csv", "start,end,text\n0,1,first\n")
    _write(tmp_path / "b" / "vid.csv", "start,end,text\n0,1,second\n")
    caps = read_source(tmp_path)
    assert caps["vid"] == [Caption(0.0, 1.0, "first")]
    assert _kinds(caps) == {"duplicate": 1}


# ---------------------------------------------------------------------------- alignment


def _brute_force(clip_start, clip_end, cap_start, cap_end, texts, offset):
    order = sorted(range(len(texts)), key=lambda j: (cap_start[j], cap_end[j], j))
    return [
        " ".join(texts[j] for j in order if cap_start[j] < ce + offset and cap_end[j] > cs + offset and texts[j])
        for cs, ce in zip(clip_start, clip_end)
    ]


def test_touching_intervals_do_not_overlap():
    texts = align([0.0, 2.0, 4.0], [2.0, 4.0, 6.0], [2.0, 3.0, 6.0, 3.5], [2.0, 4.0, 7.0, 3.5], ["zero", "b", "after", "point"])
    # "zero" (2-2) touches both first clips, "after" starts where the last clip ends
    assert texts == ["", "b point", ""]


def test_offset_moves_clips_onto_the_player_clock():
    texts = align([0.0, 2.0], [2.0, 4.0], [10.0, 12.5], [11.0, 13.0], ["a", "b"], offset_sec=10.0)
    assert texts == ["a", "b"]
    assert align([0.0, 2.0], [2.0, 4.0], [10.0, 12.5], [11.0, 13.0], ["a", "b"]) == ["", ""]


def test_nested_clips_and_unsorted_input():
    clip_start = [5.0, 0.0, 1.0, 8.0]
    clip_end = [6.0, 10.0, 2.0, 9.0]  # the second clip holds the others: ends do not rise with starts
    cap_start, cap_end = [7.0, 0.5, 1.5], [8.5, 1.2, 1.8]
    texts = ["late", "early", "mid"]
    assert align(clip_start, clip_end, cap_start, cap_end, texts) == ["", "early mid late", "early mid", "late"]


def test_align_errors():
    with pytest.raises(VidfeatError, match="caption starts"):
        align([0.0], [1.0], [0.0, 1.0], [1.0], ["a"])
    with pytest.raises(VidfeatError, match="clip starts"):
        align([0.0, 1.0], [1.0], [0.0], [1.0], ["a"])
    with pytest.raises(VidfeatError, match="not a finite number"):
        align([0.0], [np.nan], [0.0], [1.0], ["a"])
    assert align([], [], [0.0], [1.0], ["a"]) == []
    assert align([0.0, 1.0], [1.0, 2.0], [], [], []) == ["", ""]


# Times on a quarter-second grid: touching ends (overlap exactly 0) are frequent, and the sums
# with offsets are exact in floating point.
_times = st.integers(min_value=0, max_value=40).map(lambda q: q / 4)


@st.composite
def _intervals(draw, max_size):
    n = draw(st.integers(min_value=0, max_value=max_size))
    starts = draw(st.lists(_times, min_size=n, max_size=n))
    lengths = draw(st.lists(st.integers(min_value=0, max_value=16).map(lambda q: q / 4), min_size=n, max_size=n))
    return starts, [s + d for s, d in zip(starts, lengths)]


@settings(max_examples=300, deadline=None)
@given(
    clips=_intervals(30),
    caps=_intervals(25),
    offset=st.integers(min_value=-8, max_value=8).map(lambda q: q / 4),
    data=st.data(),
)
def test_align_matches_brute_force(clips, caps, offset, data):
    cap_start, cap_end = caps
    texts = data.draw(st.lists(st.sampled_from(["a", "b", "c d", ""]), min_size=len(cap_start), max_size=len(cap_start)))
    texts = [f"{t}{j}" if t else "" for j, t in enumerate(texts)]
    got = align(np.array(clips[0]), np.array(clips[1]), np.array(cap_start), np.array(cap_end), texts, offset_sec=offset)
    assert got == _brute_force(clips[0], clips[1], cap_start, cap_end, texts, offset)


def test_align_at_scale_matches_brute_force_on_sampled_clips():
    rng = np.random.default_rng(0)
    n, m = 100_000, 1_000
    clip_start = np.arange(n) * 0.32  # fixed-length clips, 0.32 s stride
    clip_end = clip_start + 2.56
    cap_start = np.sort(rng.uniform(0, clip_end[-1], m))
    cap_end = cap_start + rng.uniform(0.0, 8.0, m)
    texts = [f"w{j}" for j in range(m)]
    got = align(clip_start, clip_end, cap_start, cap_end, texts, offset_sec=1.5)
    assert len(got) == n
    # random clips (mostly without captions) and clips where a caption starts
    picks = np.concatenate([rng.choice(n, 200, replace=False), np.searchsorted(clip_start + 1.5, cap_start[::5]) - 1])
    want = _brute_force(clip_start[picks], clip_end[picks], cap_start, cap_end, texts, 1.5)
    assert [got[i] for i in picks] == want
    assert sum(bool(t) for t in want) >= 200


# ---------------------------------------------------------------------------- package


def test_caption_sources_import_no_torch_no_h5py_and_nothing_else_of_vidfeat():
    code = (
        "import sys, vidfeat.captions;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('vidfeat', 'torch', 'h5py')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == str(["vidfeat", "vidfeat.captions", "vidfeat.captions.sources", "vidfeat.errors", "vidfeat.version"])
