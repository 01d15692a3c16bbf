"""The files ``reconciler manager node`` writes: an identity's credentials, and the users file.

- **A credentials file** holds a password: YAML ``user:`` and ``password:``, as
  ``reconciler.fleet.options.load_credentials`` reads it (``--creds``, ``--manager-creds``). It
  is readable by its owner only from its first byte: it is written to a temporary file created
  exclusively with mode 0600 in the target's directory, flushed to disk, then linked into place
  (so an existing file is never replaced, unless asked) or renamed over it.
- **The users file** (``reconciler.fleet.identity.render_users_file``) holds bcrypt hashes
  only; it is written the same way, atomically, with mode 0640 (nats-server's group may read
  it), replacing the old one.

Both modes are set exactly (``fchmod``), whatever the umask. Errors are ``OSError``s; an
existing target that may not be replaced is ``FileExistsError``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Final

from reconciler.fleet.identity import Identity

__all__ = ["CREDS_MODE", "USERS_FILE_MODE", "credentials_text", "write_atomically"]

CREDS_MODE: Final = 0o600
USERS_FILE_MODE: Final = 0o640


def credentials_text(identity: Identity, password: str, *, command: str) -> str:
    """The credentials file of ``identity`` (whose hash is ``password``'s)."""
    return (
        f"# NATS credentials of {identity.name} ({identity.role.value} of the fleet),\n"
        f"# made by `{command}`.\n"
        "# Keep it mode 0600: it holds this identity's password.\n"
        f"user: {json.dumps(identity.name)}\n"
        f"password: {json.dumps(password)}\n"
    )


def write_atomically(path: Path, data: bytes, *, mode: int, replace: bool) -> None:
    """Write ``data`` to ``path`` with exactly ``mode``, all at once: readers see the old file
    or the new one, and the new one never with looser permissions. Without ``replace``, an
    existing ``path`` raises ``FileExistsError`` and is left alone. Raises ``OSError``."""
    directory = path.parent if str(path.parent) else Path(".")
    temp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # the umask may have taken bits away: set them exactly
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(temp, path)
        else:
            os.link(temp, path)  # refuses an existing path, atomically
            os.unlink(temp)
        _sync_directory(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _sync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot sync a directory
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
