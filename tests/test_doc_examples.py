"""Every command and Python example in README.md and docs/*.md parses against the real CLI, and
runs here unless NOT_RUN / PYTHON_NOT_RUN below says why it cannot.

The examples run in a workspace built once per session with the names the docs use: ``videos/``
(``holiday/beach.mp4``, ``cooking/pasta.mp4``, long synthetic motion videos), ``shards/`` (the
same two as video2dataset shards ``00000.tar``, ``00001.tar``), ``query.mp4``,
``feats.h5`` (extracted from ``videos/`` with the default bundled model, with the captions of
``caption.json``), ``todo.txt``,
``data/motion-test`` (a small ``vidfeat synth`` set) and ``runs/tiny-motion``, ``runs/motion`` (run directories
holding the bundled model). Each fenced block runs in a fresh copy of it, its lines in order; the
Python blocks of one page share one fresh copy and one namespace, in page order.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from test_shards import write_v2d_shard
from doc_examples import (
    GENERATED,
    REPO,
    Call,
    Example,
    ExampleError,
    calls_in,
    check_calls,
    check_option_names,
    check_python_names,
    check_vidfeat_args,
    collect,
    doc_files,
    logical_lines,
    strip_comment,
)

# Shell examples that are parsed but not run, keyed by the command as collect() gives it (comment
# stripped, whitespace normalised), with the reason. A new example that cannot run here fails
# test_shell_examples_run until it is listed. docs/cli.md (the --help text) is only parsed.
NEEDS_BASE = "weights that are not bundled (base/large: CC-BY-NC official checkpoints)"
# The workspace's caption.json (HowTo100M's schema; ids are the videos' file names without extension).
CAPTION_JSON = {
    "beach": {"start": [0.5, 3.0, 9.5], "end": [2.5, 6.0, 14.0],
              "text": ["today we tie a knot", "a bowline holds", "Crème brûlée for dessert"]},
    "pasta": {"start": [1.0, 7.5], "end": [4.0, 12.0], "text": ["boil the water", "tie a knot in the dough"]},
}
NO_CLOUD = "a cloud bucket or web server cannot be reached here (tests/test_inplace.py runs the same against moto's S3 and a local HTTP server)"
NOT_RUN: dict[str, str] = {
    "vidfeat extract s3://my-bucket/videos/ -o feats.h5": NO_CLOUD,
    "vidfeat extract gs://my-bucket/videos/ -o feats.h5": NO_CLOUD,
    "vidfeat extract https://example.com/media/talk.mp4 -o talk.h5": NO_CLOUD,
    "make demo": "rebuilds the virtual environment; tests/test_demo.py runs the demo",
    "make test": "the whole suite, which contains this test",
    ("farm-bench -n 5 --timeout 300 --vs \"sh -c 'cd /tmp/old && PYTHONPATH=/tmp/old exec .venv/bin/python -m vidfeat "
     "extract /tmp/rr -o /tmp/rr.h5 --model /tmp/basemodel --workers 0 --quiet'\" -- .venv/bin/vidfeat extract /tmp/rr "
     "-o /tmp/rr.h5 --model /tmp/basemodel --workers 0 --quiet"): "a measurement against an older checkout in /tmp/old",
    "vidfeat synth data/motion --videos 2400 --seed 0": "2400 videos; nothing here trains on them",
    "vidfeat synth data/motion-test --videos 400 --seed 1": "400 videos; the workspace's data/motion-test has 8",
    "vidfeat extract videos/ -o feats.h5 --model base": NEEDS_BASE,
    "vidfeat eval --weights base k400/val.csv --crops 3 --json": NEEDS_BASE + " and Kinetics-400 videos",
    "vidfeat extract --list todo.txt -o feats.h5 --root /data": "/data stands for the top of the reader's data tree",
    "vidfeat view feats.h5 --videos videos/": "serves until stopped (tests/test_view.py starts it)",
    "vidfeat view feats.h5": "serves until stopped (tests/test_view.py starts it)",
    "vidfeat index feats.h5 --factory \"IVF4096,PQ64\"": "IVF4096 trains on at least 4096 vectors; the workspace has a few dozen",
    "h5dump -d /clips/embedding -s \"0,0\" -c \"3,768\" feats.h5": "768 is the base model's width; tiny-motion's is 64",
    # training: minutes to hours, Kinetics data (tests/test_train.py trains, resumes and evaluates small runs)
    "vidfeat train synthetic_motion --set data.train=data/motion -o runs/motion":
        "trains for 14 minutes; the workspace's runs/motion holds the bundled tiny-motion",
    "vidfeat train kinetics_finetune --set data.train=k400/train.csv --set data.val=k400/val.csv "
    "--set optim.lr=0.01 --set schedule.milestones=[8,12] --set model.init=base": NEEDS_BASE + " and Kinetics-400 videos",
    "vidfeat train kinetics_finetune --set data.train=train.csv --set 'data.class_weights={\"juggling\" = 2.0}'":
        "fine-tunes the base model on the reader's train.csv",
    "vidfeat train synthetic_motion --set data.train=data/motion -o runs/tiny-motion --resume":
        "resumes a 14-minute training run (tests/test_train.py resumes small ones)",
    # several processes, GPUs, clusters
    "torchrun --standalone --nproc-per-node 8 -m vidfeat train kinetics_finetune --set data.train=k400/train.csv "
    "--set data.val=k400/val.csv -o runs/k400": "8 GPUs",
    "torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint node0.example:29500 "
    "--rdzv-id k400 -m vidfeat train kinetics_finetune --set data.train=/shared/k400/train.csv -o /shared/runs/k400":
        "two machines with 8 GPUs each",
    "torchrun --nnodes 2 --node-rank 1 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint node0.example:29500 "
    "--rdzv-id k400 -m vidfeat train kinetics_finetune --set data.train=/shared/k400/train.csv -o /shared/runs/k400":
        "two machines with 8 GPUs each",
    "vidfeat extract videos/ -o feats.h5 --model large --gpus 8": "8 GPUs and " + NEEDS_BASE,
    "torchrun --nproc-per-node 8 -m vidfeat extract videos/ -o feats.h5 --model large": "8 GPUs and " + NEEDS_BASE,
    "vidfeat extract /data/howto100m/videos -o /scratch/howto100m.h5 --model large --workers 9 || [ $? -eq 3 ]":
        "a SLURM array task over HowTo100M",
    "sbatch --dependency=afterok:$jid --job-name=vidfeat-merge --time=6:00:00 --mem=8G --output=logs/merge-%j.out "
    "--wrap \"vidfeat merge /scratch/howto100m.h5 --from /scratch/howto100m.h5.shards\"": "SLURM",
    "torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint $HEAD:29500 --rdzv-id vidfeat "
    "-m vidfeat extract /shared/videos -o /shared/feats.h5 --model large": "four machines with 8 GPUs each",
    "vidfeat extract videos/ -o feats.h5 --model large --ray": "a Ray cluster with GPUs and " + NEEDS_BASE,
    "vidfeat extract videos/ -o feats.h5 --model large --ray=head:6379": "a running Ray cluster",
}

# Python blocks that are compiled and name-checked but not run, keyed by a line of the block.
PYTHON_NOT_RUN: dict[str, str] = {
    "from embedding_reader import EmbeddingReader": "embedding-reader is a third-party package, not a dependency",
    "import submitit": "submits SLURM jobs",
}


def _is_listed(example: Example) -> str | None:
    if example.kind == "python":
        return next((why for key, why in PYTHON_NOT_RUN.items() if key in example.text), None)
    return NOT_RUN.get(example.text)


EXAMPLES = collect()
SHELL = [e for e in EXAMPLES if e.kind == "shell" and e.source not in GENERATED]
PYTHON = [e for e in EXAMPLES if e.kind == "python"]


# --- the checker itself -------------------------------------------------------------------------


def test_collector_finds_commands_after_pipes_launchers_and_continuations(tmp_path):
    page = tmp_path / "README.md"
    (tmp_path / "docs").mkdir()
    page.write_text(
        "Run `vidfeat info --json` to see.\n"
        "```\n"
        "find /data -name '*.mp4' | vidfeat extract --list - -o feats.h5   # a comment\n"
        "torchrun --nproc-per-node 2 -m vidfeat train synthetic_motion \\\n"
        "    --set data.train=data/motion\n"
        "python -m vidfeat models && echo done\n"
        "sbatch --wrap \"vidfeat merge out.h5 --from out.h5.shards\"\n"
        "  --model TEXT  a model name (vidfeat models)\n"
        "```\n"
        "```\n"
        "$ vidfeat info feats.h5\n"
        "vidfeat info output, not a command\n"
        "```\n"
        "```python\nimport vidfeat\n```\n",
        encoding="utf-8",
    )
    found = collect(tmp_path)
    shell = [(e.line, e.text, e.calls) for e in found if e.kind == "shell"]
    assert shell == [
        (3, "find /data -name '*.mp4' | vidfeat extract --list - -o feats.h5",
         (Call("vidfeat", ("extract", "--list", "-", "-o", "feats.h5")),)),
        (4, "torchrun --nproc-per-node 2 -m vidfeat train synthetic_motion --set data.train=data/motion",
         (Call("vidfeat", ("train", "synthetic_motion", "--set", "data.train=data/motion")),)),
        (6, "python -m vidfeat models && echo done", (Call("vidfeat", ("models",)),)),
        (7, "sbatch --wrap \"vidfeat merge out.h5 --from out.h5.shards\"",
         (Call("vidfeat", ("merge", "out.h5", "--from", "out.h5.shards")),)),
        (11, "vidfeat info feats.h5", (Call("vidfeat", ("info", "feats.h5")),)),
    ]
    assert [(e.line, e.text) for e in found if e.kind == "inline"] == [(1, "vidfeat info --json")]
    assert [(e.line, e.text) for e in found if e.kind == "python"] == [(15, "import vidfeat\n")]


def test_comment_stripping_keeps_quoted_hashes():
    assert strip_comment("vidfeat x --set 'a=#1'   # note") == "vidfeat x --set 'a=#1'"
    assert list(logical_lines(["a \\", "  b", "c"], 10)) == [(10, "a  b"), (12, "c")]


@pytest.mark.parametrize(
    "args, message",
    [
        (["extract", "videos/", "-o", "feats.h5", "--no-such-option"], "No such option '--no-such-option'"),
        (["extrakt", "videos/"], "No such command 'extrakt'"),
        (["extract", "videos/", "-o", "feats.h5", "--batch-size", "three"], "'three' is not a valid integer"),
        (["extract", "videos/", "-o", "feats.h5", "--crops", "2"], "'2' is not one of '1', '3'"),
        (["extract", "videos/"], "Missing option '-o'"),
        (["search", "feats.h5", "--level", "galaxy"], "'galaxy' is not one of"),
    ],
)
def test_checker_rejects_a_wrong_example(args, message):
    with pytest.raises(ExampleError, match=re.escape(message)):
        check_vidfeat_args(args)


def test_checker_accepts_a_right_example_whose_files_do_not_exist(tmp_path):
    missing = str(tmp_path / "nothing.h5")
    assert check_vidfeat_args(["info", missing]).name == "info"  # info's PATH must exist when run
    assert check_vidfeat_args(["extract", "videos/", "-o", "feats.h5", "--crops", "3"]).name == "extract"
    from vidfeat.cli import main

    assert main.commands["info"].params[0].type.exists  # the real CLI is unchanged afterwards


def test_checker_of_a_whole_example_names_the_page_and_line():
    bad = Example("docs/x.md", 7, "shell", "vidfeat extract v -o f.h5 --fast", calls=calls_in("vidfeat extract v -o f.h5 --fast"))
    with pytest.raises(ExampleError, match=r"^docs/x.md:7: vidfeat extract v -o f.h5 --fast: No such option '--fast'"):
        check_calls(bad)
    with pytest.raises(ExampleError, match="no such option: --vidoes"):
        check_option_names(["synth", "OUT", "--vidoes", "N"])
    check_option_names(["synth", "OUT", "--videos", "N", "--seed", "S"])
    with pytest.raises(ExampleError, match="Makefile has no target 'deploy'"):
        check_calls(Example("README.md", 1, "shell", "make deploy", calls=(Call("make", ("deploy",)),)))


def test_python_checker_finds_a_missing_vidfeat_name():
    good = Example("a.md", 1, "python", "import vidfeat\nfrom vidfeat import store\nvidfeat.open_features\nstore.verify\n")
    check_python_names(good)
    with pytest.raises(ExampleError, match="vidfeat has no 'open_feature'"):
        check_python_names(Example("a.md", 1, "python", "import vidfeat\nvidfeat.open_feature('x')\n"))
    with pytest.raises(ExampleError, match="has no 'summarise'"):
        check_python_names(Example("a.md", 1, "python", "from vidfeat.store import summarise\n"))
    with pytest.raises(ExampleError, match="No such option '--shards'"):
        check_python_names(Example("a.md", 1, "python", "run(['vidfeat', 'extract', 'v', '-o', 'f.h5', '--shards', '0/2'])\n"))
    with pytest.raises(ExampleError, match="no such option: --shards"):
        check_python_names(Example("a.md", 1, "python", "run(['vidfeat', 'extract', 'v', '--shards', f'{i}/2'])\n"))
    check_python_names(Example("a.md", 1, "python", "run(['vidfeat', 'extract', 'v', '-o', 'f.h5', '--shard', f'{i}/2'])\n"))
    with pytest.raises(ExampleError, match="does not compile"):
        check_python_names(Example("a.md", 1, "python", "with open('x') as f\n"))


# --- the docs -----------------------------------------------------------------------------------


def test_every_doc_command_parses():
    assert len(SHELL) > 30 and PYTHON
    faults = []
    for example in EXAMPLES:
        try:
            check_python_names(example) if example.kind == "python" else check_calls(example)
        except ExampleError as exc:
            faults.append(str(exc))
    assert not faults, "\n".join(faults)


def test_not_run_lists_only_existing_examples():
    texts = {e.text for e in SHELL}
    assert not [key for key in NOT_RUN if key not in texts], "NOT_RUN names examples that are not in the docs"
    stale = [key for key in PYTHON_NOT_RUN if not any(key in e.text for e in PYTHON)]
    assert not stale, "PYTHON_NOT_RUN names examples that are not in the docs"


def test_docs_link_only_to_files_that_exist_and_readme_links_every_page():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        assert "DESIGN.md" not in text, f"{path.name} cites DESIGN.md, which is not in the repository"
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" not in target:
                assert (path.parent / target).exists(), f"{path.relative_to(REPO)} links to missing {target}"
        for named in re.findall(r"(?<![\w/.])((?:bench|docs|models|tests|train|vidfeat)/[\w./-]*\w)", text):
            assert (REPO / named).exists(), f"{path.relative_to(REPO)} names {named}, which does not exist"
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"


# --- running them -------------------------------------------------------------------------------


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(VIDFEAT_HOME=str(home), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    return env


def _sh(command: str, cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run one example with bash; on a timeout kill its whole process group (decode workers
    included) and fail naming the command."""
    proc = subprocess.Popen(["bash", "-o", "pipefail", "-c", command], cwd=cwd, env=env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"`{command}` did not finish in {timeout:.0f} s:\n{err[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    from vidfeat.synth import generate_dataset, generate_long_videos

    root = tmp_path_factory.mktemp("docs") / "workspace"
    scratch = root.parent / "scratch"
    for name, seed in (("holiday/beach.mp4", 1), ("cooking/pasta.mp4", 2)):
        generate_long_videos(scratch / name, videos=1, seed=seed, segments=(2, 2), segment_seconds=(8.0, 9.0))
        (root / "videos" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(scratch / name / "long_000.mp4", root / "videos" / name)
    generate_dataset(scratch / "query", videos=1, seed=3)
    shutil.move(next((scratch / "query").rglob("*.mp4")), root / "query.mp4")
    generate_dataset(root / "data" / "motion-test", videos=8, seed=1)
    for run in ("tiny-motion", "motion"):  # what the docs' training commands would have written
        shutil.copytree(REPO / "models" / "tiny-motion", root / "runs" / run)
    (root / "todo.txt").write_text("videos/holiday/beach.mp4\nvideos/cooking/pasta.mp4\n", encoding="utf-8")
    (root / "shards").mkdir()  # video2dataset shards of the same videos (docs/extract.md)
    write_v2d_shard(root / "shards", 0, [(root / "videos/holiday/beach.mp4", "a beach"), (None, "a lost download")])
    write_v2d_shard(root / "shards", 1, [(root / "videos/cooking/pasta.mp4", "cooking pasta")])
    (root / "caption.json").write_text(json.dumps(CAPTION_JSON), encoding="utf-8")
    (root.parent / "home").mkdir()
    made = _sh("vidfeat extract videos/ -o feats.h5 --captions caption.json", root, _env(root.parent / "home"))
    assert made.returncode == 0, made.stderr
    shutil.rmtree(scratch)
    shutil.copytree(root, root.parent / "pristine", symlinks=True)
    return root


def _fresh(workspace: Path) -> Path:
    """The workspace as the fixture made it, at the same path (feats.h5 stores its input root
    as an absolute path, so a copy elsewhere would be another root)."""
    shutil.rmtree(workspace)
    shutil.copytree(workspace.parent / "pristine", workspace, symlinks=True)
    return workspace


def _blocks() -> list[tuple[str, list[Example]]]:
    blocks: dict[tuple[str, int], list[Example]] = defaultdict(list)
    for example in SHELL:
        blocks[(example.source, example.block)].append(example)
    return [(f"{v[0].where}", v) for v in blocks.values()]


@pytest.mark.slow
@pytest.mark.parametrize("examples", [b for _, b in _blocks()], ids=[name for name, _ in _blocks()])
def test_shell_examples_run(examples, workspace):
    runnable = [e for e in examples if _is_listed(e) is None]
    if not runnable:
        pytest.skip("every command of this block is listed in NOT_RUN")
    cwd = _fresh(workspace)
    env = _env(workspace.parent / "home")
    for example in runnable:
        done = _sh(example.text, cwd, env)
        assert done.returncode == 0, (
            f"{example.where}: `{example.text}` exits {done.returncode}:\n{done.stderr[-2000:]}\n"
            "fix the example, or list it in NOT_RUN with the reason it cannot run here"
        )


@pytest.mark.slow
@pytest.mark.parametrize("source", sorted({e.source for e in PYTHON}))
def test_python_examples_run(source, workspace, monkeypatch, capsys):
    blocks = [e for e in PYTHON if e.source == source and _is_listed(e) is None]
    if not blocks:
        pytest.skip("every Python block of this page is listed in PYTHON_NOT_RUN")
    monkeypatch.chdir(_fresh(workspace))
    namespace: dict = {"__name__": "__doc_example__"}
    for example in blocks:
        code = compile(example.text, example.where, "exec")
        try:
            exec(code, namespace)
        except Exception as exc:  # noqa: BLE001 - reported with the page and line
            raise AssertionError(
                f"{example.where}: the Python example raises {type(exc).__name__}: {exc}\n"
                "fix the example, or list it in PYTHON_NOT_RUN with the reason it cannot run here"
            ) from exc
