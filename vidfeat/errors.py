"""Library errors. The CLI shows each as one line (no traceback) and maps it to an exit code.

Set VIDFEAT_RAISE_ERRORS=1 to see the full traceback instead.
"""


class VidfeatError(Exception):
    """Base class for every error vidfeat raises on purpose."""


class WeightsError(VidfeatError):
    """A checkpoint cannot be found, read, verified or mapped onto the model."""


class ConfigError(VidfeatError):
    """A model card, recipe or setting is invalid."""


class VideoError(VidfeatError):
    """A video cannot be opened or decoded. The message is a one-line reason."""


class StoreError(VidfeatError):
    """The output file or its work directory cannot be read, written or resumed."""


class SettingsMismatch(StoreError):
    """An existing output was made with another model, weights or clip setting."""
