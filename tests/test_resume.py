"""The writer's resume keys (vidfeat.store.resume.ResumeKeys): the same answers as a dict of
path -> (size, mtime, status), whatever the order of single and bulk additions, folds and hash
collisions, in a small fraction of a dict's memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vidfeat.store import resume
from vidfeat.store.resume import ResumeKeys

PATHS = ["a.mp4", "b.mp4", "sub/a.mp4", "é/ü.mp4", "c.mp4", "dd.mp4", "e.webm"]
_key = st.tuples(st.sampled_from(PATHS), st.integers(0, 5), st.sampled_from([1.0, 2.5]),
                 st.sampled_from(["ok", "partial", "failed"]))  # fmt: skip
_op = st.one_of(
    st.tuples(st.just("set"), _key),
    st.tuples(st.just("many"), st.lists(_key, max_size=6), st.booleans()),
)


def _check(keys: ResumeKeys, model: dict, final: set) -> None:
    assert len(keys) == len(model)
    assert dict(keys.items()) == model
    for path in PATHS:
        assert keys.get(path) == model.get(path), path
        assert (path in keys) == (path in model)
        assert keys.in_final(path) == (path in final), path


@pytest.mark.parametrize("collide", [False, True])
@settings(max_examples=150, deadline=None)
@given(ops=st.lists(_op, max_size=12))
def test_resume_keys_answer_as_a_dict(ops, collide):
    """FOLD = 2 folds often; ``collide`` gives the paths three hashes, so most share one and
    are told apart by their bytes."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(resume, "FOLD", 2)
        if collide:
            m.setattr(resume, "hash", lambda p: len(p) % 3, raising=False)
        keys, model, final = ResumeKeys(), {}, set()
        for op in ops:
            if op[0] == "set":
                path, size, mtime, status = op[1]
                keys.set(path, size, mtime, status)
                model[path] = (size, mtime, status)
            else:
                rows, is_final = op[1], op[2]
                was_final = any(r[0] in final for r in rows)
                got = keys.add_many([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                                    [r[3] for r in rows], final=is_final)  # fmt: skip
                assert got == was_final
                for path, size, mtime, status in rows:
                    model[path] = (size, mtime, status)
                    if is_final:
                        final.add(path)
            _check(keys, model, final)


def test_resume_keys_take_a_third_of_a_dicts_memory():
    """200,000 keys of HowTo100M-like paths (11-character id, .mp4: 15 bytes): a dict of path
    strings and tuples (what the writer held, beside a set of the final file's paths) takes
    about 170 bytes a key here; the arrays take the path's bytes and about 40 more."""
    rng = np.random.default_rng(0)
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
    paths = ["".join(rng.choice(alphabet, 11)) + ".mp4" for _ in range(200_000)]
    sizes, mtimes, statuses = list(range(len(paths))), [1.7e9] * len(paths), ["ok"] * len(paths)
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    as_dict = {p.encode().decode(): (s, t, x) for p, s, t, x in zip(paths, sizes, mtimes, statuses)}  # its own strings
    dict_bytes = tracemalloc.get_traced_memory()[0] - start
    del as_dict
    start = tracemalloc.get_traced_memory()[0]
    keys = ResumeKeys()
    keys.add_many(paths[:150_000], sizes[:150_000], mtimes[:150_000], statuses[:150_000], final=True)
    for p, s, t, x in zip(paths[150_000:], sizes[150_000:], mtimes[150_000:], statuses[150_000:]):
        keys.set(p, s, t, x)  # one at a time, as a run adds them: folded every FOLD keys
    keys._fold()
    array_bytes = tracemalloc.get_traced_memory()[0] - start
    tracemalloc.stop()
    print(f"dict {dict_bytes / len(paths):.0f} B a key, arrays {array_bytes / len(paths):.0f} B a key")
    assert array_bytes / len(paths) < 15 + 45, array_bytes
    assert array_bytes < dict_bytes / 2.5, (array_bytes, dict_bytes)
    assert keys.get(paths[7]) == (7, 1.7e9, "ok") and keys.get(paths[-1]) == (199_999, 1.7e9, "ok")
    assert keys.in_final(paths[7]) and not keys.in_final(paths[-1]) and len(keys) == 200_000
