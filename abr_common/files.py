"""File helpers shared by every package: atomic writes, and plots rendered for them.

A reader of a file written here sees either the old file or the complete new one, never a partial
write: the data goes to a hidden temporary file in the same folder, which is then renamed over the
target (a rename within one file system is atomic).
"""

from __future__ import annotations

import io
import os
import secrets
from pathlib import Path
from typing import Any, Protocol


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one.

    Missing parent folders are created. Errors name ``path`` (not the hidden temporary file).
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{target}: is a folder, expected a file path")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"{target}: cannot create its folder ({err.strerror or err})") from None
    temporary = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    try:
        # os.open with mode 0o666 lets the umask set the permissions, as for a plainly created file.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        raise OSError(f"{target}: cannot write ({err.strerror or err})") from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class Figure(Protocol):
    """What `figure_png` needs of a figure (matplotlib's ``Figure`` has it)."""

    def savefig(self, fname: Any, *, format: str, dpi: int) -> None:
        """Render the figure into ``fname``."""
        ...


#: Resolution of every plot the project writes.
PLOT_DPI = 110


def figure_png(figure: Figure, *, dpi: int = PLOT_DPI) -> bytes:
    """``figure`` rendered as PNG bytes (write them with `write_atomic`)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
