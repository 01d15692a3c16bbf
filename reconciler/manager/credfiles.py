"""The files ``reconciler manager node`` writes: an identity's credentials, and the users file.

- **A credentials file** holds a password: YAML ``user:`` and ``password:``, as
  ``reconciler.fleet.options.load_credentials`` reads it (``--creds``, ``--manager-creds``). It
  is readable by its owner only from its first byte: it is written to a temporary file created
  exclusively with mode 0600 in the target's directory, flushed to disk, then linked into place
  (so an existing file is never replaced, unless asked) or renamed over it.
- **The users file** (``reconciler.fleet.identity.render_users_file``) holds bcrypt hashes
  only; it is written the same way, atomically, with mode 0640 (nats-server's group may read
  it), replacing the old one.

Both are written by the one atomic write, ``reconciler.spec.apply.write_atomically``, with
their modes set exactly (``fchmod``), whatever the umask.
"""

from __future__ import annotations

import json
from typing import Final

from reconciler.fleet.identity import Identity

__all__ = ["CREDS_MODE", "USERS_FILE_MODE", "credentials_text"]

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
