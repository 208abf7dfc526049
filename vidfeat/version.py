"""The vidfeat version: a bottom module, so that the store and the CLI can read it without
importing the package's lazy names (which import the pipeline and the model)."""

__version__ = "0.1.0"
