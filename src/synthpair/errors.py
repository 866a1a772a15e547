"""User-facing errors.

Every failure caused by input the user controls (a path, a file, a config value) raises
:class:`SynthpairError` with one line that names the offending thing and says how to fix it. The CLI
prints that line and exits with status 2, without a traceback.
"""


class SynthpairError(ValueError):
    """An error the user can fix; its message is one line naming the file/value and the fix."""


def fail(message: str) -> "SynthpairError":
    """Return a :class:`SynthpairError` (use as ``raise fail(...)``) with newlines collapsed."""
    return SynthpairError(" ".join(str(message).split()))
