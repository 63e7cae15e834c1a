"""The one exception the CLI turns into a one-line message and a non-zero exit.

Everything a user can get wrong (a config key, a path, a corrupt checkpoint, a length the model
cannot take) raises `HopeError` with a message that names the culprit; `hope.cli` prints it as
`error: ...` and exits with status 2, never with a traceback.
"""


class HopeError(Exception):
    """A user-facing error: bad input, bad config, unreadable files."""


class DivergedError(HopeError):
    """Training produced a non-finite loss (a result of the run, not a mistake in its input)."""


def check_known(what: str, names, available, hint: str = "") -> None:
    """Raise `HopeError("unknown WHAT 'name'; available: a, b, c" + hint)` for the first of `names`
    that is not in `available`."""
    for name in names:
        if name not in available:
            raise HopeError(f"unknown {what} {name!r}; available: {', '.join(available)}{hint}")
