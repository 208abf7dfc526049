"""Scale-out: the shard partition, launcher detection, `--shard` + `vidfeat merge`, torchrun ranks
(gloo on the CPU), a rank SIGKILLed mid-run, `--gpus`, and Ray actors on a local cluster.

Every multi-process result is compared with one single-process run of the same videos: same
videos, clips and times, embeddings equal to float16 rounding."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from videos import make_text, make_video
from vidfeat.cli import main
from vidfeat.errors import VidfeatError
from vidfeat.video.inputs import discover
from vidfeat.pipeline.shard import Shard, detect_shard, parse_shard, select, shard_of, shard_output
from vidfeat.store import open_features, verify
from vidfeat.store.merge import merge_shards, shard_files

VOLATILE = {"created", "vidfeat_version", "torch_version"}


def run(args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


def args(root, out, *extra):
    return ["extract", root, "-o", out, "--workers", "0", "--quiet", *extra]


def _datasets(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visit(lambda n: names.append(n) if isinstance(f[n], h5py.Dataset) else None)
    return sorted(names)


def assert_same_file(a: Path, b: Path) -> None:
    """Same attrs (but when/with what made), datasets and values; embeddings to float16 rounding."""
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert {k: str(v) for k, v in fa.attrs.items() if k not in VOLATILE} == {
            k: str(v) for k, v in fb.attrs.items() if k not in VOLATILE
        }
        assert _datasets(fa) == _datasets(fb)
        assert len(fa["videos/path"]) > 0
        for name in _datasets(fa):
            x, y = fa[name][()], fb[name][()]
            if name == "clips/embedding":
                np.testing.assert_allclose(x.astype(np.float32), y.astype(np.float32), atol=2e-3, rtol=2e-3)
            elif x.dtype.kind == "f":
                np.testing.assert_allclose(x, y, atol=1e-4, rtol=1e-4, err_msg=name)
            else:
                np.testing.assert_array_equal(x, y, err_msg=name)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A small mixed set: several lengths (1 to 3 clips of the 4 s tiny-motion clips), two
    same-named files in different folders, and a file that is not a video (failed)."""
    root = tmp_path_factory.mktemp("scale-videos")
    (root / "a").mkdir()
    (root / "b").mkdir()
    make_video(root / "a" / "clip.mp4", seconds=5.0, fps=12)
    make_video(root / "b" / "clip.mp4", seconds=2.0, fps=12, size=(80, 48))
    for i in range(6):
        make_video(root / f"v{i}.mp4", seconds=1.0 + 1.5 * i, fps=12)
    make_text(root / "broken.mp4")
    return root


@pytest.fixture(scope="module")
def reference(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("scale-ref") / "single.h5"
    result = run(args(videos, out))
    assert result.exit_code == 3, result.output  # broken.mp4 failed
    return out


# the partition ------------------------------------------------------------------------------


def test_shard_of_is_sha1_of_the_name_and_the_same_in_every_process():
    names = ["a/clip.mp4", "naïve é.mp4", "x/y/z.mkv"]
    for name in names:
        expected = int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:8], "big") % 8
        assert shard_of(name, 8) == expected
    # pinned values: a change of the formula would move every finished video
    assert [shard_of(n, 8) for n in names] == [5, 2, 5]
    assert [shard_of(n, 1000) for n in names] == [925, 818, 413]
    code = "from vidfeat.pipeline.shard import shard_of; print([shard_of(n, 8) for n in %r])" % names
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed})  # fmt: skip
        assert out.stdout.strip() == str([shard_of(n, 8) for n in names])


def test_the_partition_covers_every_video_once_and_ignores_the_other_inputs(tmp_path):
    names = [f"d{i % 7}/video {i}.mp4" for i in range(300)]
    from vidfeat.video.inputs import VideoFile

    files = [VideoFile(Path(n), n) for n in names]
    parts = [select(files, Shard(i, 5, "test")) for i in range(5)]
    assert sorted(v.name for p in parts for v in p) == sorted(names)
    assert min(len(p) for p in parts) > 30  # spread out, not all in one shard
    # more videos, other order: no finished video moves
    bigger = files[::-1] + [VideoFile(Path(f"new{i}.mp4"), f"new{i}.mp4") for i in range(50)]
    for i in range(5):
        assert {v.name for v in parts[i]} <= {v.name for v in select(bigger, Shard(i, 5, "test"))}


def test_parse_shard_and_its_errors():
    assert (parse_shard("3/8").index, parse_shard("3/8").count) == (3, 8)
    for bad in ("8/8", "3", "a/b", "1/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)
    result = run(["extract", ".", "-o", "x.h5", "--shard", "5/4"])
    assert result.exit_code == 2 and "0 <= I < N" in result.output


def test_detect_shard_from_the_launchers():
    torchrun = detect_shard({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (torchrun.index, torchrun.count, torchrun.local_rank, torchrun.distributed) == (3, 4, 1, True)
    array = detect_shard({"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_COUNT": "64", "SLURM_ARRAY_TASK_MIN": "10",
                          "SLURM_PROCID": "0", "SLURM_NTASKS": "1"})  # fmt: skip
    assert (array.index, array.count, array.distributed) == (2, 64, False)
    with pytest.raises(VidfeatError, match="has gaps"):  # --array=3,17: the tasks cannot tell N
        detect_shard({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "3",
                      "SLURM_ARRAY_TASK_MAX": "17"})  # fmt: skip
    srun = detect_shard({"SLURM_PROCID": "5", "SLURM_NTASKS": "8"})
    assert (srun.index, srun.count) == (5, 8)
    assert detect_shard({"RANK": "0", "WORLD_SIZE": "1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
    assert detect_shard({}) is None


def test_torchrun_variables_are_parsed_in_one_place():
    from vidfeat.pipeline.shard import TorchrunEnv, torchrun_env

    env = torchrun_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert env == TorchrunEnv(rank=3, world_size=4, local_rank=1, local_world_size=2) and env.distributed
    alone = torchrun_env({})
    assert (alone.rank, alone.world_size, alone.local_rank, alone.local_world_size, alone.distributed) == (0, 1, 0, 1, False)
    with pytest.raises(VidfeatError, match=r"LOCAL_WORLD_SIZE='two' is not an integer"):
        torchrun_env({"LOCAL_WORLD_SIZE": "two"})


def test_the_default_decode_workers_are_cores_minus_one_capped_and_shared(monkeypatch):
    from vidfeat.pipeline import launch, workers
    from vidfeat.pipeline.driver import ExtractOptions

    monkeypatch.setattr(workers.os, "cpu_count", lambda: 64)
    assert workers.default_workers() == 16  # cores - 1, at most 16
    assert workers.default_workers(ranks_here=4) == 4  # shared by the ranks of one machine
    assert workers.default_workers(ranks_here=32) == 1
    monkeypatch.setattr(workers.os, "cpu_count", lambda: 8)
    assert (workers.default_workers(), workers.default_workers(ranks_here=2)) == (7, 3)
    monkeypatch.setattr(workers.os, "cpu_count", lambda: 1)
    assert workers.default_workers() == 1
    monkeypatch.setattr(workers.os, "cpu_count", lambda: 64)
    monkeypatch.setattr("torch.set_num_threads", lambda n: None)  # shard_options divides the threads too
    rank = Shard(1, 4, "torchrun RANK/WORLD_SIZE", local_rank=1, local_count=4, distributed=True)
    assert launch.shard_options(ExtractOptions(device="cpu"), rank).workers == 4  # --gpus 4: the same rule
    assert launch.shard_options(ExtractOptions(device="cpu", workers=9), rank).workers == 9


def test_the_exit_status_rule_for_failed_or_partial_videos():
    from vidfeat.pipeline.driver import ExtractReport, failures_exit_code

    assert failures_exit_code({"ok": 5}) == 0
    assert failures_exit_code({"ok": 5, "failed": 0, "partial": 1}) == 3
    assert failures_exit_code({"failed": 2}) == 3
    report = ExtractReport(output=Path("f.h5"), in_file={"ok": 1, "failed": 1})
    assert report.exit_code == 3
    report.failures_exit = 0  # a torchrun rank: `--gpus` reads the 3 off the final file
    assert report.exit_code == 0
    report.interrupted = True
    assert report.exit_code == 130


def test_slurm_array_variables_select_the_shard_and_an_explicit_shard_wins(tmp_path, videos, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "0")
    out = tmp_path / "f.h5"
    result = run(args(videos, out))
    assert result.exit_code in (0, 3), result.output
    assert "shard 1/3 (from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT)" in result.output
    mine = {v.name for v in select(discover([videos])[0], Shard(1, 3, "t"))}
    with h5py.File(shard_output(out, Shard(1, 3, "t"))) as f:
        assert set(f["videos/path"].asstr()[()]) == mine
    assert not out.exists()
    source = tmp_path / "caption.json"
    source.write_text("{}", encoding="utf-8")
    result = run(args(videos, out, "--shard", "2/3", "--captions", source))
    assert "shard 2/3 (from --shard)" in result.output
    assert shard_output(out, Shard(2, 3, "t")).exists()
    # a shard gets no captions (merge refuses captioned shards): one line says how to add them later
    assert f"add them with: vidfeat captions {out} {source}" in result.output
    with open_features(shard_output(out, Shard(2, 3, "t"))) as f:
        assert not f.has_captions


# --shard and merge ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_shards(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("scale-shards") / "feats.h5"
    for i in range(3):
        result = run(args(videos, out, "--shard", f"{i}/3"))
        assert result.exit_code in (0, 3), result.output
    return out


def test_three_shards_then_merge_equal_a_single_run(tmp_path, three_shards, reference):
    folder = Path(str(three_shards) + ".shards")
    sizes = []
    for f in shard_files(folder):
        assert verify(f) == []  # shard outputs are ordinary vidfeat files
        with h5py.File(f) as h5:
            sizes.append(len(h5["videos/path"]))
    assert all(sizes) and sum(sizes) == 9
    out = tmp_path / "merged.h5"
    result = run(["merge", out, "--from", folder])
    assert result.exit_code == 0, result.output
    assert "3 shards, 9 videos" in result.output
    assert verify(out) == []
    assert_same_file(reference, out)
    # the explicit list, in any order, gives the same; merging again replaces the file
    result = run(["merge", out, *sorted(folder.glob("*.h5"), reverse=True)])
    assert result.exit_code == 0, result.output
    assert_same_file(reference, out)


def test_merge_streams_in_small_blocks_and_copies_columns_it_does_not_know(tmp_path, three_shards, reference,
                                                                         monkeypatch):  # fmt: skip
    """One-row output blocks and read-ahead buffers give the same file (the streaming path), and a
    /videos or /clips column added by a newer format flows through, reordered with its rows."""
    import vidfeat.store.format as store_format
    import vidfeat.store.merge as merge

    monkeypatch.setattr(store_format, "BLOCK_BYTES", 1)
    monkeypatch.setattr(merge, "_READ_AHEAD_BYTES", 1)
    monkeypatch.setattr(merge, "_MIN_AHEAD_ROWS", 2)  # reads of 2 rows: runs of 1-3 clips straddle them
    out = tmp_path / "small-blocks.h5"
    merge_shards(out, shard_files(Path(str(three_shards) + ".shards")))
    assert_same_file(reference, out)
    folder = tmp_path / "shards"
    shutil.copytree(Path(str(three_shards) + ".shards"), folder)
    for f in shard_files(folder):
        with h5py.File(f, "a") as h5:
            paths = h5["videos/path"].asstr()[()]
            h5["videos/name_length"] = np.array([len(p) for p in paths], np.int32)
            video = np.repeat(np.arange(len(paths)), h5["videos/clip_count"][()])
            h5["clips/name_length_x2"] = np.array([[len(paths[v])] * 2 for v in video], np.float32).reshape(-1, 2)
    out = tmp_path / "extra.h5"
    merge_shards(out, shard_files(folder))
    with h5py.File(out) as f:
        paths = f["videos/path"].asstr()[()]
        np.testing.assert_array_equal(f["videos/name_length"][()], [len(p) for p in paths])
        expected = np.repeat([len(p) for p in paths], f["videos/clip_count"][()])
        assert f["clips/name_length_x2"].shape == (len(expected), 2)
        np.testing.assert_array_equal(f["clips/name_length_x2"][:, 1], expected)


def _one_line_error(result, *words):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for word in words:
        assert word in lines[0], lines[0]


def test_merge_refuses_a_missing_shard(tmp_path, three_shards):
    folder = tmp_path / "shards"
    shutil.copytree(Path(str(three_shards) + ".shards"), folder)
    (folder / "00001-of-00003.h5").unlink()
    _one_line_error(run(["merge", tmp_path / "m.h5", "--from", folder]), "shard 1 of 3 missing")
    _one_line_error(run(["merge", tmp_path / "m.h5", folder / "00000-of-00003.h5", folder / "00002-of-00003.h5"]),
                    "shard 1 of 3 missing")  # fmt: skip
    (folder / "00001-of-00003.h5.parts").mkdir()
    _one_line_error(run(["merge", tmp_path / "m.h5", "--from", folder]), "shard 1 of 3 missing", "unfinished")
    assert not (tmp_path / "m.h5").exists()


def test_merge_refuses_a_video_in_two_shards(tmp_path, three_shards, videos):
    folder = Path(str(three_shards) + ".shards")
    two = tmp_path / "two.h5"
    run(args(videos, two, "--shard", "0/2"))  # another partition: overlaps the shards of N=3
    copies = [shutil.copy(f, tmp_path / f"part{i}.h5") for i, f in enumerate(shard_files(folder))]
    other = shutil.copy(shard_output(two, Shard(0, 2, "t")), tmp_path / "other.h5")
    _one_line_error(run(["merge", tmp_path / "m.h5", *copies, other]), "is in two shards")
    _one_line_error(run(["merge", tmp_path / "m.h5", *shard_files(folder), shard_output(two, Shard(0, 2, "t"))]),
                    "different N")  # fmt: skip
    assert not (tmp_path / "m.h5").exists()


def test_merge_refuses_shards_made_with_other_settings(tmp_path, three_shards, videos):
    folder = tmp_path / "shards"
    shutil.copytree(Path(str(three_shards) + ".shards"), folder)
    (folder / "00002-of-00003.h5").unlink()
    other = tmp_path / "other.h5"
    result = run(args(videos, other, "--shard", "2/3", "--stride", "1"))
    assert result.exit_code in (0, 3), result.output
    shutil.copy(shard_output(other, Shard(2, 3, "t")), folder / "00002-of-00003.h5")
    _one_line_error(run(["merge", tmp_path / "m.h5", "--from", folder]), "other settings", "stride_sec")
    with pytest.raises(Exception, match="other settings"):
        merge_shards(tmp_path / "m.h5", shard_files(folder))


def test_adding_videos_then_rerunning_the_same_shards_recomputes_no_finished_video(tmp_path, videos, reference):
    root = tmp_path / "in"
    shutil.copytree(videos, root)
    out = tmp_path / "f.h5"
    for i in range(2):
        assert run(args(root, out, "--shard", f"{i}/2")).exit_code in (0, 3)
    before = {}
    for i in range(2):
        with h5py.File(shard_output(out, Shard(i, 2, "t"))) as f:
            before[i] = set(f["videos/path"].asstr()[()])
    make_video(root / "new1.mp4", seconds=3.0, fps=12)
    (root / "c").mkdir()
    make_video(root / "c" / "new2.mp4", seconds=1.0, fps=12)
    new_by_shard = {i: {v.name for v in select(discover([root])[0], Shard(i, 2, "t"))} - before[i] for i in range(2)}
    assert sum(map(len, new_by_shard.values())) == 2
    for i in range(2):
        result = run(args(root, out, "--shard", f"{i}/2"))
        with h5py.File(shard_output(out, Shard(i, 2, "t"))) as f:
            failed = "failed" in set(f["videos/status"].asstr()[()])
        assert result.exit_code == (3 if failed else 0), result.output  # a failed video is not retried
        assert f"{shard_output(out, Shard(i, 2, 't'))}: " in result.output  # the summary names the shard's file
        done = len(new_by_shard[i])
        assert f"{done} ok, 0 partial, 0 failed this run, {len(before[i])} already done" in result.output
    merged = tmp_path / "merged.h5"
    assert run(["merge", merged, "--from", Path(str(out) + ".shards")]).exit_code == 0
    with h5py.File(merged) as f, h5py.File(reference) as ref:
        names = list(f["videos/path"].asstr()[()])
        assert names == sorted(set(ref["videos/path"].asstr()[()]) | {"new1.mp4", "c/new2.mp4"})


# torchrun and --gpus (gloo on the CPU) -----------------------------------------------------------


def _torchrun(script_or_module: list[str], *extra, timeout=400):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           *script_or_module, *map(str, extra)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_torchrun_two_ranks_equal_a_single_run(tmp_path, videos, reference):
    out = tmp_path / "feats.h5"
    proc = _torchrun(["--module", "vidfeat"], *args(videos, out))
    assert "shard 0/2 (from torchrun RANK/WORLD_SIZE)" in proc.stderr, proc.stderr
    assert f"merged 2 shards into {out}" in proc.stderr, proc.stderr
    # broken.mp4 failed, but a torchrun rank exits 0 once the final file is complete (an exit 3
    # would make torchrun stop the other ranks, rank 0 perhaps still merging)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert verify(out) == []
    assert_same_file(reference, out)


KILL_AFTER_FIRST_COMMIT = """
import os, signal, sys
from vidfeat.store.writer import FeatureWriter

_flush = FeatureWriter.flush


def flush(self):
    before = len(self.committed_chunks)
    _flush(self)
    if os.environ.get("RANK") == "1" and len(self.committed_chunks) > before:
        os.kill(os.getpid(), signal.SIGKILL)  # rank 1 dies right after committing its first video


FeatureWriter.flush = flush
from vidfeat.cli import main
from vidfeat.errors import VidfeatError

main(prog_name="vidfeat")
"""


@pytest.mark.slow
def test_sigkill_of_one_rank_then_the_same_command_via_gpus_equals_a_clean_run(tmp_path, videos, reference):
    script = tmp_path / "kill_rank1.py"
    script.write_text(KILL_AFTER_FIRST_COMMIT)
    out = tmp_path / "feats.h5"
    assert len(select(discover([videos])[0], Shard(1, 2, "t"))) >= 2  # rank 1 is mid-run when it dies
    proc = _torchrun([str(script)], *args(videos, out, "--commit-every", "0"))
    assert proc.returncode != 0
    assert not out.exists()
    parts = shard_output(out, Shard(1, 2, "t")).with_name("00001-of-00002.h5.parts")
    assert len(list(parts.glob("chunk-*.h5"))) == 1  # exactly its first video was committed
    again = subprocess.run([sys.executable, "-m", "vidfeat", *map(str, args(videos, out, "--commit-every", "0")),
                            "--gpus", "2"], capture_output=True, text=True, timeout=400,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert again.returncode == 3, again.stderr  # --gpus reads the final file: broken.mp4 failed
    assert "1 already done" in again.stderr, again.stderr  # rank 1 resumed after its committed video
    assert "Traceback" not in again.stderr
    assert verify(out) == []
    assert_same_file(reference, out)
    # --captions with --gpus: the ranks find nothing left to do, the launcher adds the captions to the final file
    source = tmp_path / "caption.json"
    source.write_text(json.dumps({"v3": {"start": [0.0], "end": [0.5], "text": ["said early"]}}), encoding="utf-8")
    captioned = subprocess.run([sys.executable, "-m", "vidfeat", *map(str, args(videos, out)), "--gpus", "2",
                                "--captions", str(source)], capture_output=True, text=True, timeout=400,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert captioned.returncode == 3, captioned.stderr
    assert "1 captions for 1 of" in captioned.stdout, captioned.stdout + captioned.stderr
    with open_features(out) as f:
        assert f.has_captions and f.clips("v3.mp4").text[0] == "said early"
    assert verify(out) == []


# Ray ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, namespace="vidfeat", include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _ray_extract(videos, out, progress=None, **changes):
    from vidfeat.pipeline.driver import ExtractOptions
    from vidfeat.pipeline.ray import extract_ray

    options = ExtractOptions(**changes)
    return extract_ray(discover([videos])[0], out, options, progress, echo=lambda line: None)


@pytest.mark.slow
def test_ray_on_a_local_two_cpu_cluster_equals_a_single_run(tmp_path, videos, reference, ray_cluster):
    out = tmp_path / "ray.h5"
    # the CLI with the default decode workers: one actor (2 CPUs: model + its decode process)
    result = run(["extract", videos, "-o", out, "--quiet", "--ray"])
    assert result.exit_code == 3, result.output  # broken.mp4 failed
    assert "ray: 1 actors (2 CPU each) for 9 videos" in result.output
    assert "8 ok, 0 partial, 1 failed this run" in result.output
    assert verify(out) == []
    assert_same_file(reference, out)
    with open_features(out) as f:
        assert f.attrs["decoder"] == "pyav"
    # a rerun resumes: nothing left to do. NVDEC asked for on CPU actors falls back to PyAV before
    # the writer opens, so the file's decoder matches
    report = _ray_extract(videos, out, decoder="nvdec")
    assert report.skipped == 9 and report.counts == {"ok": 0, "partial": 0, "failed": 0}


@pytest.mark.slow
def test_ray_actor_killed_mid_run_still_gives_the_full_file(tmp_path, videos, reference, ray_cluster):
    from vidfeat.pipeline.progress import Progress

    class KillActorZero(Progress):
        killed = False

        def video_done(self, *a, **k):
            super().video_done(*a, **k)
            if not self.killed:  # after the first finished video: actor 0 still has videos queued
                ray_cluster.kill(ray_cluster.get_actor("vidfeat-embedder-0", namespace="vidfeat"))
                self.killed = True

    progress = KillActorZero(enabled=False)
    out = tmp_path / "ray.h5"
    report = _ray_extract(videos, out, progress, workers=0)
    assert progress.killed
    assert report.counts == {"ok": 8, "partial": 0, "failed": 1}
    assert_same_file(reference, out)


def test_a_ray_actor_takes_the_runs_decoder_precision_and_compile(videos, monkeypatch):
    import torch

    import vidfeat.pipeline.workers as workers
    from vidfeat.pipeline.driver import ExtractOptions
    from vidfeat.pipeline.ray import _Embedder

    path = videos / "v4.mp4"  # 7 s: several clips
    job = (0, "v4.mp4", str(path), path.stat().st_size, path.stat().st_mtime)
    used = []
    real_decode = workers.decode_video
    monkeypatch.setattr(workers, "decode_video", lambda *a: used.append(a[-1]) or real_decode(*a))
    results = {}
    for decoder in ("pyav", "torchcodec"):
        actor = _Embedder(ExtractOptions(decoder=decoder, workers=0), use_gpu=False, threads=1)
        _, results[decoder], _, _ = actor.embed(job)
    assert used == ["pyav", "torchcodec"]
    a, b = results["pyav"], results["torchcodec"]
    assert a.status == b.status == "ok" and a.num_clips == b.num_clips > 1
    np.testing.assert_allclose(a.start_sec, b.start_sec, atol=1e-6)
    np.testing.assert_array_equal(a.valid_frames, b.valid_frames)  # (frames: tests/test_decoders.py)
    # the driver records the decoder before the actors start (tests/test_scale.py::test_ray_on_a_local_two_cpu_...):
    # an actor that cannot decode with it refuses to start instead of mixing decoders in one file
    with pytest.raises(VidfeatError, match=r"NVDEC is not available on a Ray actor \(the model runs on the CPU\)"):
        _Embedder(ExtractOptions(decoder="nvdec", workers=0), use_gpu=False, threads=1)
    compiled = _Embedder(ExtractOptions(compile=True, dtype="bf16", workers=0), use_gpu=False, threads=1)
    assert compiled.runner.dtype == torch.bfloat16
    assert compiled.runner._step is not compiled.runner._model_step  # torch.compile's wrapper
    assert actor.runner._step == actor.runner._model_step and actor.runner.dtype == torch.float32


@pytest.mark.slow
def test_ray_actors_that_cannot_start_stop_the_run_with_their_reason(tmp_path, videos, ray_cluster):
    from vidfeat.pipeline.progress import Progress
    from vidfeat.model.weights import load_model, save_checkpoint

    model = tmp_path / "model"
    save_checkpoint(load_model("tiny-motion"), model)

    class DamageWeightsBeforeTheActorsStart(Progress):  # the driver has read them by then
        def start(self, *a, **k):
            super().start(*a, **k)
            data = bytearray((model / "model.safetensors").read_bytes())
            data[-1] ^= 0xFF
            (model / "model.safetensors").write_bytes(bytes(data))

    out = tmp_path / "ray.h5"
    with pytest.raises(VidfeatError) as caught:
        _ray_extract(videos, out, DamageWeightsBeforeTheActorsStart(enabled=False), model=str(model), workers=0)
    message = str(caught.value)
    assert message.startswith("the Ray actors cannot start: ") and "sha256 mismatch" in message, message
    assert "\n" not in message and "Traceback" not in message
