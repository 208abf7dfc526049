"""matplotlib for vidfeat's figures (the timeline plot, the training curves): the one setup.

A figure is a plain :class:`matplotlib.figure.Figure`, never one of pyplot's: nothing here
chooses a backend or touches pyplot's global state, so importing or drawing with vidfeat leaves
a caller's matplotlib as it was, and figures drawn at the same time in several threads (the
view's server) share nothing. ``Figure.savefig`` writes PNG, SVG or PDF without a GUI.
matplotlib is the optional extra ``vidfeat[plot]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import VidfeatError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["MISSING", "new_figure"]

MISSING = "plotting needs matplotlib: pip install 'vidfeat[plot]'"


def new_figure(**kwargs) -> Figure:
    """A new matplotlib figure (``kwargs``: ``Figure``'s, e.g. ``figsize``); VidfeatError
    (:data:`MISSING`) when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise VidfeatError(MISSING) from None
    return Figure(**kwargs)
