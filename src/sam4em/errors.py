"""`Sam4emError`: the base of every refusal sam4em makes on purpose (bad input, refused output, ...).

Its message is one line naming the file, the problem and the fix; the CLI prints it and exits 2.
It is a `ValueError`, so code that caught ``ValueError`` from sam4em before still does.
"""

from __future__ import annotations

__all__ = ["Sam4emError"]


class Sam4emError(ValueError):
    """A refusal with a one-line message that names the file, the problem and the fix."""
