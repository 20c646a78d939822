"""Errors a user can cause. The CLI prints each as one line and exits non-zero;
any other exception is a bug and keeps its traceback."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (tool errors span many lines)."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


class OptcError(Exception):
    """Base of all user-facing errors. ``detail``: what the tools printed on the
    way (graph dumps, diagnostics), shown only with ``optc --verbose``."""

    exit_code = 2

    def __init__(self, message: str = "", detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class LoadError(OptcError):
    """The model file or reference cannot be read."""


class LowerError(OptcError):
    """torch-mlir cannot lower the model to linalg."""


class UnknownNameError(OptcError):
    """An unknown method, target, or option name."""


class OptionError(OptcError):
    """An option value of the wrong type or out of range."""


class TargetUnavailableError(OptcError):
    """The target exists but cannot run on this machine."""


class CompileError(OptcError):
    """The target compiler rejected the module."""


class MethodError(OptcError):
    """A compression method failed on a particular op or layer."""


class InputError(OptcError):
    """Input data (a .npy/.npz file, a shape) does not fit the model."""


class VerifyError(OptcError):
    """The compiled artifact's outputs differ from the reference beyond tolerance."""

    exit_code = 1
