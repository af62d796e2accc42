"""Install micropython-lib's umqtt.simple for the MicroPython Unix port, inside the venv.

On an ESP32 umqtt.simple is frozen into the stock firmware. For the Unix port its PyPI sdist holds
umqtt/simple.py but has no setup.py, so pip cannot install it: fetch and unpack it the way upip did,
checking a pinned sha256, from the same index pip uses (PIP_INDEX_URL or pip's default).
"""

import hashlib
import io
import os
import re
import sys
import tarfile
import urllib.request
from pathlib import Path

from ..errors import UserError

PACKAGE = "micropython-umqtt.simple"
FILENAME = "micropython-umqtt.simple-1.3.4.tar.gz"
SHA256 = "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f"
MEMBER = "umqtt/simple.py"


def lib_dir():
    """Where the venv keeps MicroPython libraries (put on MICROPYPATH by the simulator)."""
    return Path(sys.prefix) / "lib" / "micropython"


def installed():
    return (lib_dir() / MEMBER).is_file()


def _index_url():
    url = os.environ.get("PIP_INDEX_URL")
    if url:
        return url.rstrip("/")
    try:  # pip's own default, so no index address is hard-coded here
        from pip._internal.models.index import PyPI

        return PyPI.simple_url.rstrip("/")
    except ImportError as e:
        raise UserError("cannot find pip's package index: set PIP_INDEX_URL") from e


def _fetch(url, timeout=60):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read(), r.geturl()
    except OSError as e:
        raise UserError(f"cannot download {url}: {e}; check the network or set PIP_INDEX_URL to a mirror") from e


def install(force=False):
    if installed() and not force:
        return lib_dir() / MEMBER
    page, base = _fetch(f"{_index_url()}/{PACKAGE.replace('.', '-')}/")
    links = re.findall(rb'href="([^"]+)"', page)
    link = next((lnk.decode() for lnk in links if FILENAME.encode() in lnk), None)
    if link is None:
        raise UserError(f"{FILENAME} is not on the package index: cannot install umqtt.simple")
    data, _ = _fetch(urllib.request.urljoin(base, link.split("#")[0]))
    if hashlib.sha256(data).hexdigest() != SHA256:
        raise UserError(f"{FILENAME} does not match its pinned sha256: refusing to install it")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/" + MEMBER))
        text = tar.extractfile(member).read()
    target = lib_dir() / MEMBER
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(text)
    return target


if __name__ == "__main__":
    try:
        print(f"umqtt.simple for the MicroPython Unix port: {install()}")
    except UserError as e:
        sys.exit(f"openpole: {e}")
