"""Timeline plot of one video (matplotlib: ``vidfeat[plot]``).

Top panel: each clip as a bar spanning its start to end time, coloured by its top class, in two
lanes (even and odd clips) so that overlapping clips stay visible. Middle panel: the softmax
probability of the video's most probable classes (by mean over its clips) at each clip's middle.
Bottom panel (with a query): the cosine similarity of each clip to the query clip.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import VidfeatError
from ..plotting import new_figure
from .search import normalise, softmax

__all__ = ["plot_timeline"]


def plot_timeline(
    f,
    video: str,
    output: str | os.PathLike[str],
    *,
    query: int | None = None,
    top: int = 4,
    dpi: int = 120,
) -> Path:
    """Write the timeline of ``video`` (a path in the open file ``f``) to ``output`` (PNG, SVG,
    PDF: by suffix; a binary file object gets PNG). ``query``: a /clips row whose similarity to each clip is drawn."""
    panels = 3 if query is not None else 2
    fig = new_figure(figsize=(10, 1.6 + 1.9 * panels))  # first: says so when matplotlib is missing
    import matplotlib
    from matplotlib.patches import Rectangle

    try:
        clips = f.clips(video)
    except KeyError:
        raise VidfeatError(f"no video {video!r} in {f.path}") from None
    if len(clips) == 0:
        raise VidfeatError(f"{video} has no clips to plot")
    p = softmax(clips.logits)
    best = p.argmax(axis=1)
    classes = f.classes
    shown = list(np.argsort(-p.mean(axis=0), kind="stable")[: max(1, top)])
    for c in dict.fromkeys(best.tolist()):  # every top class of some clip gets a colour
        if c not in shown:
            shown.append(c)
    # a class has the same colour in every plot of the file (by class index)
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    colours = {c: cmap(c % cmap.N) for c in shown}
    middle = (clips.start_sec + clips.end_sec) / 2

    axes = fig.subplots(panels, 1, sharex=True, gridspec_kw={"height_ratios": [1, 2, 1.4][:panels]})
    ax = axes[0]
    for i, (a, b, c) in enumerate(zip(clips.start_sec, clips.end_sec, best)):
        ax.broken_barh([(a, b - a)], (1 - i % 2, 0.8), facecolors=colours[c], edgecolors="white")
    ax.set_yticks([0.4, 1.4], ["odd clips", "even clips"])
    ax.set_title(f"{video}: top class of each clip ({len(clips)} clips)")
    handles = [Rectangle((0, 0), 1, 1, color=colours[c]) for c in dict.fromkeys(best.tolist())]
    ax.legend(handles, [classes[c] for c in dict.fromkeys(best.tolist())], loc="upper left",
              bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)  # fmt: skip

    ax = axes[1]
    for c in shown[:top]:
        ax.plot(middle, p[:, c], marker="o", markersize=3, color=colours[c], label=classes[c])
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("probability")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)

    if query is not None:
        if not 0 <= query < len(f):
            raise VidfeatError(f"query clip {query} is out of range: {f.path} has {len(f)} clips")
        q = normalise(f.embeddings[query][None])[0]
        sims = normalise(clips.embedding) @ q
        ax = axes[2]
        ax.plot(middle, sims, marker="o", markersize=3, color="black")
        ax.set_ylabel("cosine")
        ax.set_title(f"similarity to clip {query} ({f.video_of(query)} "
                     f"{f.h5['clips/start_sec'][query]:.1f}-{f.h5['clips/end_sec'][query]:.1f} s)", fontsize=9)  # fmt: skip
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time (s)")
    axes[-1].set_xlim(0, float(clips.end_sec.max()))
    fig.tight_layout()
    if hasattr(output, "write"):  # a binary file object (the view's server): PNG
        fig.savefig(output, dpi=dpi, bbox_inches="tight", format="png")
        return output
    out = Path(output)
    try:
        fig.savefig(out, dpi=dpi, bbox_inches="tight")
    except OSError as exc:
        raise VidfeatError(f"cannot write {out}: {exc.strerror or exc}") from exc
    return out
