"""vidfeat: long videos to per-clip TimeSformer embeddings and class scores.

    import vidfeat
    model = vidfeat.load_model("base")          # see vidfeat.weights.load_model
    with vidfeat.open_features("feats.h5") as f: ...
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy imports keep `import vidfeat` (and the CLI's start-up) light.
    if name == "load_model":
        from .weights import load_model

        return load_model
    if name == "open_features":
        from .store import open_features

        return open_features
    raise AttributeError(f"module 'vidfeat' has no attribute {name!r}")


__all__ = ["load_model", "open_features", "__version__"]
