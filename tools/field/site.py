"""A site directory: the inventory of flashed nodes and their secrets, kept apart.

inventory.csv  one row per flash or image build (node id, MAC, board, firmware, app, date, and
               where the node's secrets are kept), appended, never rewritten; the last row of
               a node id is its current record.
secrets/       one JSON file per node (broker user and password, node key), mode 0600 in a
               0700 directory. A node reflashed under the same id keeps its secrets, so the
               pole's broker and agent keep trusting it.
"""

import csv
import json
import os
import pwd
import secrets as rnd
import threading
from datetime import datetime, timezone
from pathlib import Path

from ..errors import UserError

def _sync_dir(path):
    """fsync a directory: the names made or replaced in it are on the disk, not only in its cache."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path, text, private=False, owner=None):
    """Write a file whole or not at all (temporary name, then rename), on the disk when this returns:
    a site's secrets are the only copy of its nodes' keys. A private one is 0600 from its creation,
    and handed to `owner` (a user name) when we are root and that user exists."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
        f.write(text)
        f.flush()
        # The data before the name: renamed unsynced, a power cut can leave the new name on an
        # empty file, and the old file is gone.
        os.fsync(f.fileno())
    if owner and os.geteuid() == 0:
        try:
            pw = pwd.getpwnam(owner)
        except KeyError:
            pw = None
        if pw:
            os.chown(tmp, pw.pw_uid, pw.pw_gid)
    os.replace(tmp, path)
    _sync_dir(path.parent)


FIELDS = ("date", "node_id", "mac", "board", "chip", "firmware", "app", "secrets", "how")


class Site:
    def __init__(self, root):
        self.root = Path(root)
        self.inventory = self.root / "inventory.csv"
        self.secrets_dir = self.root / "secrets"
        self._lock = threading.RLock()  # several ports flash at once

    def _private_dir(self):
        made = not self.secrets_dir.is_dir()
        self.secrets_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.secrets_dir, 0o700)
        if made:
            _sync_dir(self.secrets_dir.parent)  # its name in the site, as write_file does for files

    def _write_private(self, path, data):
        self._private_dir()
        write_file(path, json.dumps(data, indent=1), private=True)

    def secrets_path(self, node_id):
        return self.secrets_dir / f"{node_id}.json"

    def node_secrets(self, node_id, renew=False):
        """The node's credentials, made on first use (32-byte key, 24-character password)."""
        with self._lock:
            return self._node_secrets(node_id, renew)

    def _node_secrets(self, node_id, renew):
        path = self.secrets_path(node_id)
        if path.exists() and not renew:
            try:
                return json.loads(path.read_text())
            except ValueError:
                raise UserError(f"{path}: damaged secrets file: restore it from your backup, or reflash "
                                f"with --new-secrets and run `openpole pole init` again") from None
        s = {"broker_user": node_id, "broker_password": rnd.token_urlsafe(18), "key": rnd.token_hex(32)}
        self._write_private(path, s)
        return s

    @property
    def ca_dir(self):
        return self.secrets_dir / "ca"

    def ca(self):
        """The site's CA (certificate, key), made on first use (openpole pole init --tls)."""
        from . import tls

        with self._lock:
            self._private_dir()
            return tls.ensure_ca(self.ca_dir, lambda path, data: write_file(path, data, private=True))

    def node_ca(self):
        """The CA certificate a node checks its broker with (DER), or a UserError saying how to make one."""
        path = self.ca_dir / "ca.crt"
        if not path.exists():
            raise UserError(f"broker.tls is on but the site has no CA yet ({path}): run `openpole pole init "
                            f"--site {self.root} --tls ...` first")
        from cryptography import x509

        from . import tls

        return tls.ca_der(x509.load_pem_x509_certificate(path.read_bytes()))

    def agent_secrets(self):
        """The agent's broker login and the pole page's password (made once, kept here only: the
        pole's agent.toml holds its hash)."""
        path = self.secrets_dir / "_edge-agent.json"
        s = json.loads(path.read_text()) if path.exists() else {}
        if "broker_user" not in s or "page_password" not in s:
            s.setdefault("broker_user", "openpole-edge")
            s.setdefault("broker_password", rnd.token_urlsafe(18))
            s.setdefault("page_password", rnd.token_urlsafe(12))  # added to a site made before the page
            self._write_private(path, s)
        return s

    def agent_secrets_path(self):
        return self.secrets_dir / "_edge-agent.json"

    def record(self, **row):
        """Append one inventory row (never a secret: only where the secrets are)."""
        with self._lock:
            self._record(row)

    def _record(self, row):
        self.root.mkdir(parents=True, exist_ok=True)
        new = not self.inventory.exists()
        row.setdefault("date", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        row.setdefault("secrets", str(self.secrets_path(row["node_id"])))
        with open(self.inventory, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in FIELDS})
            f.flush()
            os.fsync(f.fileno())  # a node flashed is a node recorded, power cut or not
        if new:
            _sync_dir(self.root)

    def nodes(self):
        """{node id: its latest inventory row}."""
        if not self.inventory.exists():
            raise UserError(f"{self.inventory}: no inventory yet: flash a node first "
                            f"(`openpole flash ... --site {self.root}`)")
        with open(self.inventory, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and set(FIELDS) - set(rows[0]):
            raise UserError(f"{self.inventory}: not an openpole inventory (columns {', '.join(FIELDS)})")
        return {r["node_id"]: r for r in rows}
