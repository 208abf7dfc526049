"""vidfeat: long videos to per-clip TimeSformer embeddings and class scores.

    import vidfeat
    model = vidfeat.load_model("base")          # see vidfeat.model.weights.load_model
    with vidfeat.open_features("feats.h5") as f:
        hits = vidfeat.search(f, clip=0, k=10)  # see vidfeat.retrieval.search.search
    report = vidfeat.extract(videos, output, vidfeat.ExtractOptions())  # vidfeat.pipeline.driver.extract
"""

from .version import __version__


def __getattr__(name: str):
    # Lazy imports keep `import vidfeat` (and the CLI's start-up) light.
    if name == "load_model":
        from .model.weights import load_model

        return load_model
    if name in ("extract", "ExtractOptions"):
        from .pipeline import driver

        return getattr(driver, name)
    if name == "open_features":
        from .store import open_features

        return open_features
    if name == "search":
        from .retrieval.search import search

        return search
    raise AttributeError(f"module 'vidfeat' has no attribute {name!r}")


__all__ = ["ExtractOptions", "extract", "load_model", "open_features", "search", "__version__"]
