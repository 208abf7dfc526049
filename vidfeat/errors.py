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


def traceback_reason(text: str) -> str:
    """The reason at the end of a traceback's text (what a DataLoader or Ray hands back for an
    exception raised in another process): its last line, without the exception's (dotted) type
    name. A text that is not a traceback comes back as it is (its last line)."""
    lines = text.rstrip().splitlines()
    last = lines[-1] if lines else text
    name, sep, message = last.partition(": ")
    return message if sep and all(part.isidentifier() for part in name.split(".")) else last


class VidfeatError(Exception):
    """Base class for every error vidfeat raises on purpose."""


class WeightsError(VidfeatError):
    """A checkpoint cannot be found, read, verified or mapped onto the model."""


class ConfigError(VidfeatError):
    """A model card, recipe or setting is invalid."""


class VideoError(VidfeatError):
    """A video cannot be opened or decoded. The message is a one-line reason."""


class NetworkVideoError(VideoError):
    """A video read in place could not be fetched: the network failed after its retries. Not
    the video's fault: extraction records it so that a rerun tries it again."""


class StoreError(VidfeatError):
    """The output file or its work directory cannot be read, written or resumed."""


class SettingsMismatch(StoreError):
    """An existing output was made with another model, weights or clip setting."""
