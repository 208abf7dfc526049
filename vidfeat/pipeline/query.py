"""The embedding of a query video that is not in a features file: ``vidfeat search --query-video``.

It runs a whole extraction of that one video with the file's own model and clip settings, so it
belongs to the pipeline; retrieval (:mod:`vidfeat.retrieval.search`) only takes the vector.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import VidfeatError
from ..store import open_features

__all__ = ["embed_query_video"]


def embed_query_video(f, video_path: str | os.PathLike[str], progress=None) -> np.ndarray:
    """``[D]``: the mean clip embedding of a video file outside ``f``, extracted with ``f``'s own
    model, clip settings and decoder. Raises VidfeatError naming the model and weights when the model
    cannot be loaded here or its weights differ from those that made ``f``."""
    import tempfile

    from ..video.inputs import VideoFile
    from .driver import ExtractOptions, extract

    attrs = f.attrs
    model = attrs.get("model")
    wanted = f"model {model!r} (weights sha256 {str(attrs.get('weights_sha256'))[:12]}...)"
    path = Path(video_path)
    if not path.is_file():
        raise VidfeatError(f"query video {path} does not exist")
    options = ExtractOptions(model=str(model), fps=attrs.get("fps"), num_frames=attrs.get("num_frames"),
                             stride_sec=attrs.get("stride_sec"), crops=int(attrs.get("crops", 1)),
                             decoder=str(attrs.get("decoder") or "pyav"), embedding_dtype="float32", workers=0,
                             commit_seconds=0.0)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="vidfeat-query-") as tmp:
        out = Path(tmp) / "query.h5"
        try:
            extract([VideoFile(path=path, name=path.name)], out, options, progress)
        except VidfeatError as exc:
            raise VidfeatError(f"--query-video needs the {wanted} that made {f.path}: {exc}") from exc
        with open_features(out) as q:
            if q.attrs.get("weights_sha256") != attrs.get("weights_sha256"):
                raise VidfeatError(f"--query-video: {model!r} here has other weights than the {wanted} that made "
                                   f"{f.path}; install those weights")  # fmt: skip
            if len(q) == 0:
                raise VidfeatError(f"query video {path} gave no clips: {q.videos.error[0] or 'no frames'}")
            return q.load_embeddings(np.float32).mean(axis=0)
