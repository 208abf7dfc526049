"""`vidfeat merge` writes its file as durably as assembly does (vidfeat.store.final.write_final):
too little space is one line naming the space needed, a write error is one line and no crash, a
disk filled by another process cannot fail it once its space is reserved, and a SIGKILL at any
file operation leaves the shards and the old output intact, so that the rerun completes.

The shards are ordinary finished files written by the real writer, partitioned by the real
shard rule (vidfeat.pipeline.shard.shard_of) and named as `--shard I/3` names them.
"""

from __future__ import annotations

import hashlib
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from test_store import _count_file_ops, _fill, _fill_after_the_check, _without_fallocate, killed_at, small_fs  # noqa: F401  (small_fs is a fixture)
from vidfeat.cli import main
from vidfeat.pipeline.shard import shard_of
from vidfeat.store import FeatureWriter, VideoResult, verify
from vidfeat.store.format import shard_file_name
from vidfeat.store.merge import merge_shards, shard_files

D, C, N = 128, 5, 3
CLASSES = [f"class {i}" for i in range(C)]
SETTINGS = {"model": "test-model", "weights_sha256": "ab12" * 16, "num_frames": 8, "fps": 4.0, "stride_sec": 2.0,
            "input_size": 32, "mean": [0.45] * 3, "std": [0.225] * 3, "crops": 1, "decoder": "pyav"}  # fmt: skip
PATHS = [f"{folder}v{i:02d}.mp4" for folder in ("", "a/", "b/c/") for i in range(5)]
VOLATILE = {"created", "vidfeat_version", "torch_version"}


def make_result(path: str) -> VideoResult:
    rng = np.random.default_rng(int(hashlib.sha1(path.encode()).hexdigest()[:8], 16))
    n = 0 if path == "a/v03.mp4" else int(rng.integers(20, 60))
    start = np.arange(n) * 2.0
    return VideoResult(
        path=path, status="ok" if n else "failed", error="" if n else "no video stream",
        size_bytes=1000 + len(path), mtime=1.7e9, duration_sec=2.0 * n + 6.0, fps=25.0, width=64, height=48,
        embedding=rng.standard_normal((n, D)).astype(np.float32), logits=rng.standard_normal((n, C)).astype(np.float32),
        start_sec=start, end_sec=start + 8.0, valid_frames=np.full(n, 8, np.int32),
    )  # fmt: skip


def write(out: Path, paths: list[str]) -> Path:
    with FeatureWriter(out, settings=SETTINGS, classes=CLASSES, embedding_dim=D, embedding_dtype="float32") as writer:
        for path in paths:
            writer.add(make_result(path))
        writer.finalize()
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """A folder of the 3 shard files of PATHS, as `--shard I/3` would write them."""
    folder = tmp_path_factory.mktemp("merge") / "feats.h5.shards"
    folder.mkdir()
    for i in range(N):
        write(folder / shard_file_name(i, N), [p for p in PATHS if shard_of(p, N) == i])
    assert all(any(shard_of(p, N) == i for p in PATHS) for i in range(N))  # no shard is empty
    return folder


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """The same videos in one run: what the merge must equal."""
    return write(tmp_path_factory.mktemp("single") / "single.h5", PATHS)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def assert_same_content(a: Path, b: Path) -> None:
    """Same attrs (but when/with what made), datasets and values."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert {k: str(v) for k, v in fa.attrs.items() if k not in VOLATILE} == {
            k: str(v) for k, v in fb.attrs.items() if k not in VOLATILE
        }
        names: list[str] = []
        fa.visit(lambda n: names.append(n) if isinstance(fa[n], h5py.Dataset) else None)
        others: list[str] = []
        fb.visit(lambda n: others.append(n) if isinstance(fb[n], h5py.Dataset) else None)
        assert sorted(names) == sorted(others)
        for name in names:
            x, y = fa[name][()], fb[name][()]
            if name.endswith("_mean"):  # float64 sums over other block boundaries, then float32
                np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7, err_msg=name)
            else:
                np.testing.assert_array_equal(x, y, err_msg=name)


def run(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name))


_NEEDS = re.compile(
    r"^Error: cannot merge (?P<out>\S+): it needs about (?P<need>[\d.]+) MB in (?P<folder>\S+), which has "
    r"(?P<free>[\d.]+) MB free; the 3 shards are kept: free at least (?P<more>[\d.]+) MB there and rerun the same "
    r"command$"
)


def _assert_needs_line(output: str, out: Path, free_mb: float | None = None) -> None:
    """One line, no traceback, naming the space needed, the free space and what to do."""
    assert "Traceback" not in output
    [line] = output.strip().splitlines()
    found = _NEEDS.match(line)
    assert found, line
    assert found["out"] == str(out) and found["folder"] == str(out.parent)
    need, free, more = float(found["need"]), float(found["free"]), float(found["more"])
    assert need > free and abs(need - free - more) <= 0.11
    if free_mb is not None:
        assert free == free_mb


# too little space: fault injection (always runs) and a real small filesystem


def test_too_little_free_space_is_one_line_and_keeps_everything(tmp_path, shards, single, monkeypatch):
    out = tmp_path / "merged.h5"
    before = _digest(shards)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=200_000))
    result = run("merge", out, "--from", shards)
    assert result.exit_code == 1
    _assert_needs_line(result.output, out, free_mb=0.2)
    assert _digest(shards) == before and _leftovers(out) == []  # no output, no temporary file
    monkeypatch.setattr(shutil, "disk_usage", real)
    result = run("merge", out, "--from", shards)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{out}: 3 shards, {len(PATHS)} videos, {_clips()} clips"
    assert run("verify", out).exit_code == 0
    assert_same_content(out, single)
    assert _leftovers(out) == ["merged.h5"]


def _clips() -> int:
    return sum(make_result(p).num_clips for p in PATHS)


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The real `vidfeat` command in a new process (a crash there shows as a signal, not a pass)."""
    return subprocess.run([sys.executable, "-m", "vidfeat", *args], capture_output=True, text=True, timeout=120)


def test_a_really_full_filesystem_at_merge(small_fs, shards, single):
    """A 256 KB tmpfs cannot hold the merged file; after a remount to 4 MB the same command works."""
    out = small_fs("256k") / "merged.h5"
    before = _digest(shards)
    child = _cli("merge", str(out), "--from", str(shards))
    assert child.returncode == 1 and child.stdout == ""
    _assert_needs_line(child.stderr, out)
    assert _digest(shards) == before and _leftovers(out) == []
    small_fs("4m")
    child = _cli("merge", str(out), "--from", str(shards))
    assert (child.returncode, child.stderr) == (0, ""), child.stderr
    assert _cli("verify", str(out)).returncode == 0
    assert_same_content(out, single)


def _merge_main() -> None:
    """Run in a subprocess: merge ``argv[2]`` into ``argv[1]`` with a fault (``argv[3]``); print the error.

    ``fsize``: writes past ``argv[4]`` bytes fail (EFBIG, a real HDF5 write error);
    ``check``: another process fills the disk right after the free-space check, leaving ``argv[4]`` bytes;
    ``write``: it fills the disk once the space is reserved; ``none``: no fault.
    ``argv[5]`` is ``no-fallocate`` for a filesystem without fallocate.
    """
    from vidfeat.errors import StoreError
    from vidfeat.store import final

    out, folder, fault, amount, reserve = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
    if reserve == "no-fallocate":
        _without_fallocate()
    if fault == "fsize":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (amount, resource.RLIM_INFINITY))
    elif fault == "check":
        _fill_after_the_check(out.parent, amount)
    elif fault == "write":
        real_reserve = final.reserve

        def reserve_then_fill(path, size):
            real_reserve(path, size)
            _fill(out.parent, amount)

        final.reserve = reserve_then_fill
    try:
        merge_shards(out, shard_files(folder))
    except StoreError as exc:
        print(str(exc), flush=True)
    # a normal interpreter exit: HDF5 shuts down here, where a half-closed file crashes it


def _run_child(*args: str) -> subprocess.CompletedProcess:
    tests = str(Path(__file__).parent)
    code = f"import sys; sys.path.insert(0, {tests!r}); import test_merge; test_merge._merge_main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_a_write_error_during_merge_is_one_line_and_no_crash(tmp_path, shards, single):
    """A real HDF5 write error in the middle of the merged file (the free-space check passed)."""
    out = tmp_path / "merged.h5"
    before = _digest(shards)
    child = _run_child(out, shards, "fsize", 150_000, "fallocate")
    assert (child.returncode, child.stderr) == (0, "")  # no segfault, no traceback printed by h5py
    assert child.stdout.splitlines() == [
        f"cannot merge {out}: File too large; the 3 shards are kept: free space (or fix the cause) and rerun the "
        "same command"
    ]
    assert _digest(shards) == before and _leftovers(out) == []
    child = _run_child(out, shards, "none", 0, "fallocate")
    assert (child.returncode, child.stdout, child.stderr) == (0, "", "")
    assert verify(out) == []
    assert_same_content(out, single)


@pytest.mark.parametrize("reserve", ["fallocate", "no-fallocate"])
def test_a_disk_filled_by_another_process_during_merge(small_fs, shards, single, reserve):
    """Filled right after the check: one line, nothing left; filled once the space is reserved: no effect."""
    out = small_fs("4m") / "merged.h5"
    before = _digest(shards)
    child = _run_child(out, shards, "check", 0, reserve)
    assert (child.returncode, child.stderr) == (0, "")  # no segfault, nothing printed by h5py
    _assert_needs_line("Error: " + child.stdout, out, free_mb=0.0)
    assert _digest(shards) == before and _leftovers(out) == []
    (out.parent / "filler").unlink()
    child = _run_child(out, shards, "write", 0, reserve)
    assert (child.returncode, child.stdout, child.stderr) == (0, "", "")  # the reservation held
    assert verify(out) == []
    assert_same_content(out, single)
    assert out.stat().st_blocks * 512 <= out.stat().st_size + 4096  # the reserved tail was cut off


# SIGKILL at every file operation


@pytest.mark.parametrize("when", ["before", "after"])
def test_sigkill_at_every_file_operation_then_rerun_completes(tmp_path, shards, single, monkeypatch, when):
    """A kill before or after each fsync, rename, unlink and HDF5 close of a merge over an existing
    output (a smaller earlier run with the same settings) leaves the old or the new output, valid,
    and the shards untouched; the rerun gives the merged file."""
    start = write(tmp_path / "start.h5", PATHS[:4])
    before = _digest(shards)
    expected = tmp_path / "expected" / "merged.h5"
    expected.parent.mkdir()
    shutil.copy(start, expected)
    with monkeypatch.context() as m:
        count = _count_file_ops(m.setattr, None, when)
        merge_shards(expected, shard_files(shards))
    total = count[0]
    assert total >= (8 if when == "before" else 4)
    assert_same_content(expected, single)
    for kill_at in range(1, total + 1):
        out = tmp_path / f"kill{kill_at}" / "merged.h5"
        out.parent.mkdir()
        shutil.copy(start, out)
        killed_at(kill_at, when, lambda: merge_shards(out, shard_files(shards)))
        assert verify(out) == [], kill_at  # the old or the new output, never a broken one
        assert _digest(shards) == before, kill_at
        result = run("merge", out, "--from", shards)  # rerun the same command
        assert result.exit_code == 0, (kill_at, result.output)
        assert run("verify", out).exit_code == 0
        assert_same_content(out, single)
        assert _leftovers(out) == ["merged.h5"], kill_at  # the killed run's temporary file is gone
