"""Library errors. The CLI shows each as one line (no traceback) and maps it to an exit code.

Set VIDFEAT_RAISE_ERRORS=1 to see the full traceback instead.
"""


def one_line(reason: BaseException | str) -> str:
    """``reason`` (an exception or a text) on one line: NULs and runs of whitespace become one
    space; an exception without a message gives its type name. Every reason vidfeat prints or
    stores (stderr, the failure table) goes through here."""
    text = " ".join(str(reason).replace("\x00", " ").split())
    if not text and isinstance(reason, BaseException):
        return type(reason).__name__
    return text


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
