"""The local stack's admin API key: made on the first start of a state folder, kept in `<state folder>/admin.key`
(mode 0600: the key and a newline), and deployed as an admin key is on AWS, as its SHA-256 digest in the template's
AdminApiKeySha256 parameter. A restart uses the key the folder holds; a folder without one (a first start, or
admin.key deleted) gets a new key, and the old one stops working. `taskrunner local reset` forgets it with the rest.

Clients find it where the stack wrote it: `read_admin_key` (the state folder of TASKRUNNER_STATE_DIR, else
`.taskrunner/` under the current directory)."""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from taskrunner_local.config import ROOT, LocalConfig
from taskrunner_local.persistence.folder import StateFolder

if str(ROOT / "layers" / "common") not in sys.path:  # the layer's keys: one format, one digest
    sys.path.append(str(ROOT / "layers" / "common"))

ADMIN_KEY_FILE = "admin.key"
#: the parameter of template.yaml that takes the digests of the admin keys
ADMIN_KEY_PARAMETER = "AdminApiKeySha256"


def new_api_key() -> str:
    """A new key, made as the API makes tenants' keys (`trk_<key id>_<secret>`)."""
    from taskrunner.tenants import new_api_key  # the layer's (imported here: clients of this module need none of it)

    key, _, _ = new_api_key()
    return key


def key_digest(key: str) -> str:
    """What a deployment keeps of a key, as the authorizer compares it: the SHA-256 hex digest of the whole key."""
    from taskrunner.tenants import key_digest

    return key_digest(key)


@dataclass(frozen=True)
class AdminKey:
    key: str
    path: Path
    #: what this start did: `made` (the folder had none), `kept` (the folder's own), or a new key replacing one that
    #: was `malformed` (not a key this system makes) or `exposed` (its file could be read by other users)
    origin: str

    @property
    def sha256(self) -> str:
        return key_digest(self.key)

    def shown_path(self) -> str:
        """The file as the banner names it: relative to the current directory when it is below it."""
        try:
            return str(self.path.relative_to(Path.cwd()))
        except ValueError:
            return str(self.path)


def ensure_admin_key(folder: StateFolder) -> AdminKey:
    """The folder's admin key: the one its admin.key holds, or a new one written there when it holds none, holds
    something that is not a key this system makes (a hand-edited `x` would be an admin key anyone guesses), or could
    be read by other users (the key may have leaked: it is replaced, not just hidden again)."""
    path = folder.path / ADMIN_KEY_FILE
    key = _read(path)
    if key is not None and not _well_formed(key):
        return _new_key(folder, path, "malformed")
    if key is not None and stat.S_IMODE(path.stat().st_mode) & 0o077:
        return _new_key(folder, path, "exposed")
    if key is None:
        return _new_key(folder, path, "made")
    return AdminKey(key, path, "kept")


def _new_key(folder: StateFolder, path: Path, origin: str) -> AdminKey:
    folder.write_private(ADMIN_KEY_FILE, f"{new_api_key()}\n")
    os.chmod(path, 0o600)
    return AdminKey(_read(path) or "", path, origin)


def _well_formed(key: str) -> bool:
    from taskrunner.tenants import key_id_of

    return key_id_of(key) is not None


def read_admin_key(state_dir: Path | None = None) -> str | None:
    """The admin key a local stack wrote into `state_dir` (default: TASKRUNNER_STATE_DIR, else `.taskrunner/` here),
    or None when there is none."""
    return _read((state_dir or LocalConfig().state_dir) / ADMIN_KEY_FILE)


def _read(path: Path) -> str | None:
    """The key a file holds (its first line), or None when it is missing or empty."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    lines = text.strip().splitlines()
    return lines[0].strip() if lines and lines[0].strip() else None
