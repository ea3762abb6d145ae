"""Output-path checks shared by the sub-commands that write files."""

import os
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputError


def check_output_file(out, inputs, flag: str = "--out") -> None:
    """Refuse an output path that is a directory or one of the inputs (the atomic write
    would replace the input: a runs file, hours of proxy training, lost)."""
    if Path(out).is_dir():
        raise InputError(f"{flag} {out}: is a directory; give a file name")
    for parent in Path(out).absolute().parents:  # the nearest existing one must be a directory
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise InputError(f"{flag} {out}: {parent} is not a directory")
            break
    for source in (s for s in inputs if s is not None):
        if _same_file(out, source):
            raise InputError(f"{flag} {out} is the input file {source}; it would be "
                             "overwritten, write the result to another path")


def _same_file(a, b) -> bool:
    # realpath settles spellings like ./x or missing/../x (which samefile cannot stat);
    # samefile then sees through symlinks and hard links.
    try:
        return os.path.samefile(os.path.realpath(a), b)
    except OSError:  # one does not exist (yet): they are not the same file
        return False


@contextmanager
def writing(path, flag: str = "--out"):
    """An OS error while writing an output is the user's path's problem: one line naming it."""
    try:
        yield
    except OSError as exc:
        raise InputError(f"{flag} {path}: cannot write ({exc.strerror or exc})") from None
