"""vidfeat: long videos to per-clip TimeSformer embeddings and class scores."""

__version__ = "0.1.0"
