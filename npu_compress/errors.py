"""Typed errors. Each names the input at fault and what would be valid.

All derive from :class:`NpuCompressError`, so a caller (and the CLI) can catch one type.
"""


class NpuCompressError(Exception):
    """Base of every error this package raises for bad input or a failed check."""


class ProfileError(NpuCompressError, ValueError):
    """A hardware profile file is missing, malformed, or has an invalid value."""


class BudgetError(NpuCompressError, ValueError):
    """A budget string is malformed, or a budget cannot be met."""


class ModelSpecError(NpuCompressError, ValueError):
    """A model spec string does not name a loadable model."""


class DataError(NpuCompressError, ValueError):
    """A dataset file is missing or not in the expected format."""


class PrunerConfigError(NpuCompressError, ValueError):
    """A pruner knob has a value the method cannot use (the message names the knob and valid values)."""


class TraceError(NpuCompressError, RuntimeError):
    """The model could not be run or traced on the example inputs."""


class VerificationError(NpuCompressError):
    """The exported ONNX does not match the torch model within tolerance."""


class OutputError(NpuCompressError, OSError):
    """An output path cannot be written: missing or unwritable folder, a folder given as the file,
    the run's own input, a full disk. Raised before any work wherever the path is known."""


class TrainingError(NpuCompressError, RuntimeError):
    """Training cannot start or go on: a setting out of range (learning rate, epochs), or the loss
    became NaN or infinite (the message says where, and why it likely did)."""


class LaunchError(NpuCompressError, RuntimeError):
    """The process was not started the way an option needs (``--distributed`` outside torchrun)."""
