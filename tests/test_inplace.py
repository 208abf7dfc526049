"""`vidfeat extract` over collections read where they live: webdataset tar shards as video2dataset
writes them, S3 (moto's server) and HTTP (RangeServer) URLs. Each gives the features of the
same videos extracted from local files; kills, damaged shards and a server that stops are
recovered by a rerun."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from checkpoints import save_tiny_model
from held import kill_at_chunks, start_held
from servers import RangeServer, moto_s3, range_server
from test_extract import assert_same_file
from test_shards import damaged_copy, offsets, write_v2d_shard
from videos import make_noise_video, make_video
from vidfeat.cli import main
from vidfeat.pipeline.shard import Shard, select
from vidfeat.pipeline.workers import worker_jobs
from vidfeat.store import open_features, verify
from vidfeat.video import remote
from vidfeat.video.inputs import VideoFile, discover, identity_mtime, is_shard_spec

CAPTIONS = ["a red square slides", "", "two circles", "a slow fade"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Four videos as local files (videos/v0.mp4 ...) and the same as two video2dataset shards:
    00000.tar holds v0, a failed download and v1; 00001.tar holds v2 and v3."""
    root = tmp_path_factory.mktemp("inplace")
    videos = root / "videos"
    videos.mkdir()
    specs = [(3.0, 25, (64, 48)), None, (4.1, 24, (64, 48)), (1.4, 25, (32, 32))]
    files = []
    for i, spec in enumerate(specs):
        files.append(videos / f"v{i}.mp4")
        if spec is None:  # noise: about 200 KB, so that a reader still fetches it after its first clip
            make_noise_video(files[-1], 6.0, size="96x64", fps=12, gop=12, faststart=True)
        else:
            make_video(files[-1], seconds=spec[0], fps=spec[1], size=spec[2])
    shards = root / "shards"
    shards.mkdir()
    first = write_v2d_shard(shards, 0, [(files[0], CAPTIONS[0]), (None, "lost"), (files[1], CAPTIONS[1])])
    second = write_v2d_shard(shards, 1, [(files[2], CAPTIONS[2]), (files[3], CAPTIONS[3])])
    # the shard video named like the local one: 00000.tar/000000000.mp4 -> v0.mp4
    names = {"00000.tar/000000000.mp4": "v0.mp4", "00000.tar/000000002.mp4": "v1.mp4",
             "00001.tar/000010000.mp4": "v2.mp4", "00001.tar/000010001.mp4": "v3.mp4"}  # fmt: skip
    return {"root": root, "videos": videos, "files": files, "shards": shards, "tars": [first, second], "names": names}


def run(args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, **kwargs)


def extract(inputs, out, model_dir, *extra):
    return run(["extract", *inputs, "-o", out, "--model", model_dir, "--quiet", *extra])


@pytest.fixture(scope="module")
def local_reference(collection, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "local.h5"
    result = extract([collection["videos"]], out, model_dir, "--workers", "0")
    assert result.exit_code == 0, result.output
    return out


def per_video(path: Path) -> dict[str, dict]:
    """name -> status, clip times, embeddings, meta, clip texts."""
    out = {}
    with open_features(path) as f:
        v = f.videos
        text = f.h5["clips/text"].asstr()[()] if "clips/text" in f.h5 else None
        for i, name in enumerate(v.path.astype(str)):
            lo, n = int(v.clip_offset[i]), int(v.clip_count[i])
            out[name] = {
                "status": str(v.status[i]),
                "error": str(v.error[i]),
                "start": f.h5["clips/start_sec"][lo : lo + n],
                "end": f.h5["clips/end_sec"][lo : lo + n],
                "embedding": f.h5["clips/embedding"][lo : lo + n].astype(np.float32),
                "duration": float(v.duration_sec[i]),
                "meta": str(v.meta[i]),
                "text": [] if text is None else list(text[lo : lo + n]),
            }
    return out


def assert_same_features(reference: Path, other: Path, rename: dict[str, str]) -> dict[str, dict]:
    ref, got = per_video(reference), per_video(other)
    assert sorted(rename.get(name, name) for name in got if got[name]["status"] == "ok") == sorted(ref)
    for name, row in got.items():
        local = ref[rename.get(name, name)]
        assert row["status"] == "ok", (name, row["error"])
        np.testing.assert_array_equal(row["start"], local["start"])  # the same exact clip times
        np.testing.assert_array_equal(row["end"], local["end"])
        np.testing.assert_allclose(row["embedding"], local["embedding"], atol=1e-4, rtol=0)
        assert row["duration"] == local["duration"]
    return got


def test_shard_specs_are_recognised(collection):
    shards = collection["shards"]
    assert is_shard_spec(shards) and is_shard_spec(collection["tars"][0]) and is_shard_spec(str(shards / "{00000..00001}.tar"))
    assert is_shard_spec("https://h/shards/00000.tar?sig=1") and is_shard_spec("s3://b/00000.TAR") and is_shard_spec("https://h/{0..3}.tar")
    assert not is_shard_spec(collection["videos"]) and not is_shard_spec(collection["files"][0])
    assert not is_shard_spec("s3://b/videos/")
    found = discover([str(shards / "{00000..00001}.tar")])
    assert [v.name for v in found.videos] == sorted(collection["names"])
    assert {v.group for v in found.videos} == {"00000.tar", "00001.tar"}
    assert json.loads(found.videos[0].meta)["key"] == "000000000" and found.videos[0].caption == CAPTIONS[0]


def test_identity_mtime_is_a_deterministic_exact_float():
    a = identity_mtime('"etag-1"')
    assert a == identity_mtime('"etag-1"') and a != identity_mtime('"etag-2"')
    assert a == float(int(a)) and 0 <= a < 2**52 and identity_mtime("") == 0.0


def test_a_shards_videos_go_to_one_worker_and_one_process():
    jobs = [(0, "a", "00000.tar"), (1, "b", "00000.tar"), (2, "c", "00001.tar"), (3, "d", "00002.tar"), (4, "e", "00001.tar")]
    assert [j[0] for j in worker_jobs(jobs, 0, 2)] == [0, 1, 3]
    assert [j[0] for j in worker_jobs(jobs, 1, 2)] == [2, 4]
    loose = [(i, str(i), None) for i in range(5)]  # local files: round-robin, as before
    assert [j[0] for j in worker_jobs(loose, 1, 2)] == [1, 3]
    videos = [VideoFile(path=f"s{k}", name=f"{k:05d}.tar/{i}.mp4", group=f"{k:05d}.tar") for k in range(20) for i in range(3)]
    for count in (2, 3, 7):
        owners: dict[str, set[int]] = {}
        for index in range(count):
            for v in select(videos, Shard(index, count, "--shard")):
                owners.setdefault(v.group, set()).add(index)
        assert len(owners) == 20 and all(len(s) == 1 for s in owners.values())


def test_shards_give_the_features_of_the_local_files(collection, local_reference, model_dir, tmp_path):
    out = tmp_path / "shards.h5"
    result = extract([collection["shards"] / "{00000..00001}.tar"], out, model_dir, "--workers", "2")
    assert result.exit_code == 0, result.output
    assert "4 captions for 4 of 4 videos" not in result.output  # the empty .txt gives none
    assert "3 captions for 3 of 4 videos" in result.output
    got = assert_same_features(local_reference, out, collection["names"])
    assert json.loads(got["00000.tar/000000002.mp4"]["meta"])["caption"] == CAPTIONS[1]
    assert got["00000.tar/000000000.mp4"]["text"] and set(got["00000.tar/000000000.mp4"]["text"]) == {CAPTIONS[0]}
    assert set(got["00000.tar/000000002.mp4"]["text"]) == {""}
    assert verify(out) == []
    with open_features(local_reference) as f:  # local files keep an empty meta
        assert set(f.videos.meta.astype(str)) == {""}
    rerun = extract([collection["shards"]], out, model_dir, "--workers", "2")  # the folder names the same shards
    assert rerun.exit_code == 0 and "0 ok, 0 partial, 0 failed this run, 4 already done" in rerun.output


def test_a_truncated_shard_fails_only_its_remaining_samples(collection, model_dir, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    first = collection["tars"][0]
    cut = offsets(first)["000000002.mp4"][1] + 100  # inside the second video
    damaged_copy(first, shards / "00000.tar", cut=cut)
    (shards / "00001.tar").write_bytes(collection["tars"][1].read_bytes())
    out = tmp_path / "feats.h5"
    result = extract([shards], out, model_dir, "--workers", "0")
    assert result.exit_code == 3, result.output
    assert "3 ok, 0 partial, 1 failed this run" in result.output
    got = per_video(out)
    assert sorted(got) == ["00000.tar/*", "00000.tar/000000000.mp4", "00001.tar/000010000.mp4", "00001.tar/000010001.mp4"]
    error = got["00000.tar/*"]["error"]
    assert got["00000.tar/*"]["status"] == "failed" and "\n" not in error
    assert error.startswith(f"shard {shards / '00000.tar'} failed after key 000000000") and "remaining samples were not read" in error
    rerun = extract([shards], out, model_dir, "--workers", "0")  # the same damage: nothing to redo
    assert rerun.exit_code == 3 and "0 ok, 0 partial, 0 failed this run, 4 already done" in rerun.output


def _cli(inputs, out, model_dir):
    return [sys.executable, "-m", "vidfeat", "extract", *map(str, inputs), "-o", str(out), "--model", str(model_dir),
            "--workers", "0", "--quiet", "--commit-every", "0", "--batch-size", "1"]  # fmt: skip


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_equals_an_uninterrupted_run(collection, model_dir, tmp_path):
    inputs = [collection["shards"]]
    reference = tmp_path / "reference.h5"
    done = subprocess.run(_cli(inputs, reference, model_dir), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "killed.h5"
    # the last video held (tests/held.py): the run is still going when its first chunk is committed
    proc = start_held(tmp_path / "never", "00001.tar/000010001.mp4", _cli(inputs, out, model_dir)[3:],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    kill_at_chunks(proc, Path(str(out) + ".parts"), 1)
    final = subprocess.run(_cli(inputs, out, model_dir), capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert "already done" in final.stderr and "0 already done" not in final.stderr
    assert_same_file(reference, out, atol=1e-3)


@pytest.fixture
def s3_videos(monkeypatch, collection):
    import boto3

    with moto_s3(monkeypatch) as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="media")
        for f in collection["files"]:
            client.put_object(Bucket="media", Key=f"set/{f.name}", Body=f.read_bytes())
        client.put_object(Bucket="media", Key="set/notes.txt", Body=b"not a video")
        yield client


def test_s3_prefix_gives_the_features_of_the_local_files_and_a_changed_object_is_redone(
    s3_videos, collection, local_reference, model_dir, tmp_path
):
    out = tmp_path / "s3.h5"
    result = extract(["s3://media/set/"], out, model_dir, "--workers", "1")
    assert result.exit_code == 0, result.output
    assert_same_features(local_reference, out, {})
    with open_features(out) as f:
        assert f.attrs["root"] == "s3://media/set/"
    rerun = extract(["s3://media/set/"], out, model_dir, "--workers", "1")
    assert rerun.exit_code == 0 and "4 already done" in rerun.output
    # the same bytes written again: a new ETag? S3's ETag is the content's MD5, so no; other bytes are
    s3_videos.put_object(Bucket="media", Key="set/v1.mp4", Body=collection["files"][3].read_bytes())
    changed = extract(["s3://media/set/"], out, model_dir, "--workers", "1")
    assert changed.exit_code == 0 and "1 ok, 0 partial, 0 failed this run, 3 already done" in changed.output
    got, ref = per_video(out), per_video(local_reference)
    np.testing.assert_allclose(got["v1.mp4"]["embedding"], ref["v3.mp4"]["embedding"], atol=1e-4, rtol=0)


def test_s3_shards_read_in_place(s3_videos, collection, local_reference, model_dir, tmp_path):
    for tar in collection["tars"]:
        s3_videos.put_object(Bucket="media", Key=f"shards/{tar.name}", Body=tar.read_bytes())
    out = tmp_path / "s3shards.h5"
    result = extract(["s3://media/shards/{00000..00001}.tar"], out, model_dir, "--workers", "2")
    assert result.exit_code == 0, result.output
    assert_same_features(local_reference, out, collection["names"])


def _http_files(collection) -> dict[str, Path]:
    return {f"/media/{f.name}": f for f in collection["files"]}


def test_http_urls_give_the_features_of_the_local_files(collection, local_reference, model_dir, tmp_path):
    out = tmp_path / "http.h5"
    with range_server(_http_files(collection)) as server:
        urls = [server.url(f"/media/{f.name}") for f in collection["files"]]
        listed = tmp_path / "urls.txt"
        listed.write_text("\n".join(urls[1:]) + "\n")
        result = extract([urls[0], "--list", listed], out, model_dir, "--workers", "1")
        assert result.exit_code == 0, result.output
        assert server.bytes_served < 3 * sum(f.stat().st_size for f in collection["files"])
    assert_same_features(local_reference, out, {})


def test_server_stopped_mid_run_fails_the_videos_in_flight_and_the_rerun_completes_them(
    collection, local_reference, model_dir, tmp_path, monkeypatch
):
    """The server stops once the run has decoded the first clip of v1 (small cache blocks, so
    that v1 still needs the network): v1, and v2 and v3 after it, fail with one line each
    (retries without waiting), v0 is kept; a rerun against the restarted server does the rest."""
    import vidfeat.pipeline.workers as workers

    monkeypatch.setattr(remote, "BACKOFF_SEC", (0.0,) * remote.RETRIES)
    real_open = remote.RemoteVideo.open_video
    monkeypatch.setattr(remote.RemoteVideo, "open_video",
                        lambda self, sleep=None: remote.open_video(self.url, size=self.size, block_size=512, cache_blocks=1))  # fmt: skip
    server = RangeServer(_http_files(collection))
    port = int(server.base.rsplit(":", 1)[1])
    real_decode = workers.decode_video

    def decode_video(video, path, *args, **kwargs):
        for item in real_decode(video, path, *args, **kwargs):
            yield item
            if path.name == "v1.mp4" and server.running:
                server.stop()  # after v1's first clip

    monkeypatch.setattr(workers, "decode_video", decode_video)
    urls = [server.url(f"/media/{f.name}") for f in collection["files"]]
    out = tmp_path / "http.h5"
    try:
        result = extract(urls, out, model_dir, "--workers", "0")
        assert result.exit_code == 3, result.output
        assert "1 ok, 0 partial, 3 failed this run" in result.output
        got = per_video(out)
        assert got["v0.mp4"]["status"] == "ok"
        for name in ("v1.mp4", "v2.mp4", "v3.mp4"):
            error = got[name]["error"]
            assert got[name]["status"] == "failed" and "\n" not in error and len(got[name]["start"]) == 0
            assert error.startswith(f"network error after {remote.RETRY_NOTE}: {server.base}/media/{name}"), error
        assert verify(out) == []  # the rows kept for a retry (no size) are valid rows
        server = RangeServer(_http_files(collection), port=port)
        monkeypatch.setattr(remote.RemoteVideo, "open_video", real_open)
        monkeypatch.setattr(workers, "decode_video", real_decode)
        rerun = extract(urls, out, model_dir, "--workers", "0")
        assert rerun.exit_code == 0, rerun.output
        assert "3 ok, 0 partial, 0 failed this run, 1 already done" in rerun.output
    finally:
        server.stop()
    assert_same_features(local_reference, out, {})


def test_other_decoders_refuse_videos_read_in_place(collection, model_dir, tmp_path):
    result = CliRunner().invoke(main, ["extract", str(collection["tars"][1]), "-o", str(tmp_path / "x.h5"), "--model",
                                       str(model_dir), "--quiet", "--decoder", "torchcodec", "--workers", "0"])  # fmt: skip
    assert result.exit_code == 1
    assert "reads local files only" in result.output and "Traceback" not in result.output


def test_local_files_and_urls_do_not_share_an_output(collection, model_dir, tmp_path):
    result = CliRunner().invoke(main, ["extract", str(collection["videos"]), "http://127.0.0.1:9/x.mp4", "-o",
                                       str(tmp_path / "x.h5"), "--model", str(model_dir), "--quiet"])  # fmt: skip
    assert result.exit_code == 1 and "cannot share an output" in result.output


def test_a_file_without_the_meta_column_reads_and_verifies(collection, model_dir, tmp_path):
    """Version-3 files written before /videos/meta was added lack it: it reads as "" and its
    absence is no fault; a rerun that adds a video writes the column."""
    out = tmp_path / "old.h5"
    assert extract([collection["files"][0]], out, model_dir, "--workers", "0").exit_code == 0
    with h5py.File(out, "r+") as f:
        del f["videos/meta"]
    assert verify(out) == []
    with open_features(out) as f:
        assert f.videos.meta.tolist() == [""]
    assert extract([collection["files"][0], collection["files"][3]], out, model_dir, "--workers", "0").exit_code == 0
    assert verify(out) == []
    with h5py.File(out) as f:
        assert f["videos/meta"].asstr()[()].tolist() == ["", ""]


def test_sharded_runs_split_by_tar_and_merge_to_the_single_run(collection, model_dir, tmp_path):
    single = tmp_path / "single.h5"
    assert extract([collection["shards"]], single, model_dir, "--workers", "0").exit_code == 0
    out = tmp_path / "feats.h5"
    for index in range(3):
        result = extract([collection["shards"]], out, model_dir, "--workers", "0", "--shard", f"{index}/3")
        assert result.exit_code == 0, result.output
    parts = sorted((tmp_path / "feats.h5.shards").glob("*.h5"))
    owners = {}
    for part in parts:
        for name in per_video(part):
            owners.setdefault(name.split("/")[0], set()).add(part.name)
    assert set(owners) == {"00000.tar", "00001.tar"} and all(len(s) == 1 for s in owners.values())
    assert run(["merge", out, "--from", tmp_path / "feats.h5.shards"]).exit_code == 0
    merged, whole = per_video(out), per_video(single)
    assert sorted(merged) == sorted(whole)
    for name in whole:
        np.testing.assert_array_equal(merged[name]["embedding"], whole[name]["embedding"])
        assert merged[name]["meta"] == whole[name]["meta"]


def test_export_writes_its_folder_to_a_url_prefix(s3_videos, local_reference, tmp_path):
    pytest.importorskip("pyarrow")
    here = tmp_path / "out"
    assert run(["export", local_reference, "-o", here]).exit_code == 0
    result = run(["export", local_reference, "-o", "s3://media/export/"])
    assert result.exit_code == 0, result.output
    local = sorted(p.relative_to(here).as_posix() for p in here.rglob("*") if p.is_file())
    assert f"({len(local)} files)" in result.output and "to s3://media/export/" in result.output
    listed = s3_videos.list_objects_v2(Bucket="media", Prefix="export/")["Contents"]
    assert sorted(o["Key"].removeprefix("export/") for o in listed) == local
    for rel in local:
        if rel.endswith((".npy", ".parquet")):
            body = s3_videos.get_object(Bucket="media", Key=f"export/{rel}")["Body"].read()
            assert body == (here / rel).read_bytes(), rel


def test_export_to_a_missing_bucket_is_one_line(s3_videos, local_reference):
    pytest.importorskip("pyarrow")
    result = CliRunner().invoke(main, ["export", str(local_reference), "-o", "s3://no-such-bucket/export/"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "s3://no-such-bucket/export/" in result.output, result.output


@pytest.mark.slow
def test_ray_reads_shards_in_place_and_gives_the_features_of_the_local_files(collection, local_reference, model_dir,
                                                                              tmp_path):  # fmt: skip
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, namespace="vidfeat", include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "ray.h5"
        result = extract([collection["shards"]], out, model_dir, "--ray")
        assert result.exit_code == 0, result.output
        assert_same_features(local_reference, out, collection["names"])
        assert verify(out) == []
        rerun = extract([collection["shards"]], out, model_dir, "--ray")
        assert rerun.exit_code == 0 and "4 already done" in rerun.output
    finally:
        ray.shutdown()
