"""OTA bundles (docs/ota.md): a zip holding manifest.txt, files/<path> for each app file, for a
firmware bundle firmware.app-bin, and optionally manifest.sig, an Ed25519 signature of the exact
bytes of manifest.txt by a release key.

build() makes one on a laptop; read() opens one and checks everything in it (the agent calls it
before it keeps a bundle, `openpole ota inspect` to show one).
"""

import hashlib
import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from openpole.errors import UserError
from openpole.wire import ota

MPY_VERSION, MPY_SUB_VERSION = 6, 3  # .mpy format of MicroPython 1.23 to 1.29 (py/persistentcode.h)
MPY_ARCH = {"x86": 1, "x64": 2, "armv6": 3, "armv6m": 4, "armv7m": 5, "armv7em": 6, "armv7emsp": 7,
            "armv7emdp": 8, "xtensa": 9, "xtensawin": 10, "rv32imc": 11}
DEFAULT_MICROPYTHON = ("1.24", "1.29")  # the firmware versions openpole's app is tested on
# Never in a bundle: main.py and otaboot (its recovery and trial) are the guard that rolls an update
# back; they arrive by USB (flash, deploy).
GUARD = ("main.py", "otaboot.mpy")
MANIFEST_MAX = 64 * 1024  # a manifest of the largest app is a few KB
OBJECT_MAX = 4 * 1024 * 1024  # an app file or a firmware image (an OTA slot is 1.5 MB)
BUNDLE_MAX = 16 * 1024 * 1024


def mp_version(text):
    """'1.26' or '1.26.0' -> (1, 26); ValueError otherwise."""
    m = re.fullmatch(r"(\d+)\.(\d+)(?:\.\d+)?(?:-\S*)?", text or "")
    if not m:
        raise ValueError(f"{text!r} is not a MicroPython version (major.minor)")
    return int(m.group(1)), int(m.group(2))


def in_range(fw, mp_range):
    """Is the firmware version fw ('1.26.0') within mp_range ('1.24', '1.29'), inclusive? False for
    a version that is not one."""
    try:
        return mp_version(mp_range[0]) <= mp_version(fw) <= mp_version(mp_range[1])
    except ValueError:
        return False


def objects(manifest):
    """[(object number, sha256 hex, size)] of a job after object 0 (manifest.txt)."""
    out = [(i, sha, size) for i, (sha, size, _) in enumerate(manifest["files"], 1)]
    if manifest["firmware"]:
        out.append((ota.FIRMWARE_OBJ, *manifest["firmware"]))
    return out


def check_manifest(m):
    """What parse_manifest leaves to its reader: every item there once, the numbers in range, the
    paths unique; ValueError naming the rule."""
    for key in ("kind", "version", "board", "mpy", "micropython"):
        if key not in m:
            raise ValueError(f"manifest.txt has no {key} line")
    if m["kind"] not in ("app", "firmware"):
        raise ValueError(f"manifest.txt: kind {m['kind']!r} (app or firmware)")
    if (m["kind"] == "firmware") != (m["firmware"] is not None):
        raise ValueError("manifest.txt: a firmware bundle has one firmware line, an app bundle none")
    lo, hi = (mp_version(v) for v in m["micropython"])
    if lo > hi:
        raise ValueError("manifest.txt: the MicroPython range is empty")
    paths = [p for _, _, p in m["files"]]
    if len(set(paths)) != len(paths):
        raise ValueError("manifest.txt: a path is listed twice")
    for _, sha, size in objects(m):
        if not re.fullmatch(r"[0-9a-f]{64}", sha) or not 0 <= size <= OBJECT_MAX:
            raise ValueError("manifest.txt: a SHA-256 in hex and a size up to 4 MB per object")
    if not 0 <= m["mpy"] < 2**16:
        raise ValueError("manifest.txt: mpy out of range")
    return m


def mpy_of(arch):
    """sys.implementation._mpy of a VM that runs .mpy files compiled for arch (11014: ESP32)."""
    return MPY_VERSION | (MPY_SUB_VERSION | MPY_ARCH[arch] << 2) << 8


def board_has_ota_partitions(board):
    """A board file says so with `ota = true` (flashed with MicroPython's *-OTA partition table)."""
    return board.get("ota") is True


def _ed25519():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise UserError("release signatures need the cryptography library: pip install 'openpole[ota]'") from None
    return ed25519, serialization


def keygen(path):
    """Write a new Ed25519 release key (PEM, readable by its owner alone); return its public key in hex."""
    ed25519, ser = _ed25519()
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    path = Path(path)
    try:
        with open(path, "xb", opener=lambda p, f: __import__("os").open(p, f, 0o600)) as f:
            f.write(pem)
    except FileExistsError:
        raise UserError(f"{path} exists: a release key is never overwritten (choose another file)") from None
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None
    return public_hex(key)


def public_hex(key):
    _, ser = _ed25519()
    return key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw).hex()


def load_key(path):
    ed25519, ser = _ed25519()
    try:
        key = ser.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as e:
        raise UserError(f"--sign {path}: {e.strerror}") from None
    except (ValueError, TypeError):
        raise UserError(f"--sign {path}: not a release key `openpole ota keygen` wrote (PEM Ed25519)") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise UserError(f"--sign {path}: not an Ed25519 key")
    return key


def build(board_id, out, version=None, sign=None, firmware=None, sim=False, micropython=DEFAULT_MICROPYTHON,
          vm=None):
    """Write a bundle to out; returns (manifest bytes, bytes of the zip). sim: for the simulator's
    nodes (the Unix port's architecture and simulated hardware); vm: that Unix port."""
    from openpole.field import appbuild, image

    board, chip = image.board_info(board_id)
    key = load_key(sign) if sign else None
    files, fw = [], None
    if firmware is not None:
        if not board_has_ota_partitions(board):
            raise UserError(f"--board {board_id} has no OTA partitions (`ota = true` in its board file): a firmware "
                            "bundle cannot go to it over the air")
        if not version:
            raise UserError("a firmware bundle needs --version (the firmware's, e.g. 1.28.0)")
        try:
            fw = Path(firmware).read_bytes()
        except OSError as e:
            raise UserError(f"--firmware {firmware}: {e.strerror}") from None
        if fw[:1] != b"\xe9":
            raise UserError(f"--firmware {firmware}: not an ESP32 app image (.app-bin starts with 0xE9)")
        arch = chip["mpy_arch"]
    else:
        if sim:
            from openpole.sim import node as simnode

            arch = simnode.vm_arch(vm)
        else:
            arch = chip["mpy_arch"]
        app = appbuild.build_app(arch=arch, include_sim=sim, version=version)
        version = version or image.app_version()
        files = [(p, data) for p, data in appbuild.app_files(app).items() if p not in GUARD]
    try:
        for v in micropython:
            if not re.fullmatch(r"\d+\.\d+", v):
                raise ValueError(f"--micropython {v!r}: major.minor, e.g. 1.24")
        if not version or re.search(r"\s", version) or len(version) > 32:
            raise ValueError(f"--version {version!r}: up to 32 characters without spaces")
        manifest = ota.manifest_text("firmware" if fw else "app", version, board_id, mpy_of(arch), tuple(micropython),
                                     files, fw)
        check_manifest(ota.parse_manifest(manifest))
    except ValueError as e:
        raise UserError(str(e)) from None
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.txt", manifest)
        for path, data in files:
            z.writestr(f"files/{path}", data)
        if fw is not None:
            z.writestr("firmware.app-bin", fw)
        if key is not None:
            z.writestr("manifest.sig", key.sign(manifest))
    data = buf.getvalue()
    try:
        Path(out).write_bytes(data)
    except OSError as e:
        raise UserError(f"--out {out}: {e.strerror}") from None
    return manifest, data


@dataclass
class Bundle:
    sha256: str  # of the zip file
    manifest_bytes: bytes
    manifest: dict
    objects: dict  # object number -> bytes (0: manifest.txt)
    signature: bytes | None = None
    signed_by: str | None = None  # the release key (hex) that signed it, when checked
    notes: list = field(default_factory=list)

    @property
    def total(self):
        return sum(len(v) for v in self.objects.values())


def read(data, release_keys=(), require_signed=False):
    """Open a bundle's bytes and check it whole: its manifest, every object's size and SHA-256, and
    its signature against release_keys (hex Ed25519 public keys). Returns a Bundle; UserError (one
    line: what is wrong) when anything fails."""
    if len(data) > BUNDLE_MAX:
        raise UserError(f"the bundle is {len(data)} bytes: at most {BUNDLE_MAX}")
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        infos = {i.filename: i for i in z.infolist()}
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise UserError(f"not a bundle (a zip `openpole ota build` wrote): {e}") from None

    def member(name, cap):
        info = infos.get(name)
        if info is None:
            raise UserError(f"the bundle has no {name}")
        if info.file_size > cap:
            raise UserError(f"the bundle's {name} is {info.file_size} bytes: at most {cap}")
        try:
            with z.open(info) as f:
                out = f.read(cap + 1)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError) as e:
            raise UserError(f"the bundle's {name} cannot be read: {e}") from None
        if len(out) > cap:
            raise UserError(f"the bundle's {name} is larger than it says")
        return out

    manifest_bytes = member("manifest.txt", MANIFEST_MAX)
    try:
        manifest = check_manifest(ota.parse_manifest(manifest_bytes))
    except ValueError as e:  # UnicodeDecodeError too
        raise UserError(f"the bundle's manifest.txt breaks the contract: {e}") from None
    objs = {0: manifest_bytes}
    expected = {"manifest.txt", "manifest.sig"}
    names = {i: f"files/{path}" for i, (_, _, path) in enumerate(manifest["files"], 1)}
    if manifest["firmware"]:
        names[ota.FIRMWARE_OBJ] = "firmware.app-bin"
    for (obj, sha, size), name in zip(objects(manifest), names.values()):
        body = member(name, OBJECT_MAX)
        if len(body) != size or hashlib.sha256(body).hexdigest() != sha:
            raise UserError(f"the bundle's {name} does not match its manifest (size or SHA-256): the bundle is damaged")
        objs[obj] = body
        expected.add(name)
    extra = sorted(set(infos) - expected)
    if extra:
        raise UserError(f"the bundle holds {extra[0]}, which its manifest does not list")
    b = Bundle(hashlib.sha256(data).hexdigest(), manifest_bytes, manifest, objs)
    if "manifest.sig" in infos:
        b.signature = member("manifest.sig", 64)
        if release_keys:
            b.signed_by = verify(manifest_bytes, b.signature, release_keys)
    if require_signed and b.signed_by is None:
        raise UserError("the bundle is not signed by a release key in [ota] release_keys, and require_signed is on: "
                        "build it with `openpole ota build --sign KEYFILE`")
    return b


def verify(manifest_bytes, signature, release_keys):
    """The release key (hex) whose signature this is; UserError when none of them made it."""
    ed25519, _ = _ed25519()
    from cryptography.exceptions import InvalidSignature

    for hexkey in release_keys:
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(hexkey)).verify(signature, manifest_bytes)
            return hexkey
        except (InvalidSignature, ValueError):
            continue
    raise UserError("the bundle's signature (manifest.sig) is not by any key in [ota] release_keys: refused")


def describe(b):
    """What `openpole ota inspect` shows, as one dict."""
    m = b.manifest
    return {"sha256": b.sha256, "kind": m["kind"], "version": m["version"], "board": m["board"], "mpy": m["mpy"],
            "micropython": list(m["micropython"]), "manifest_sha256": hashlib.sha256(b.manifest_bytes).hexdigest(),
            "total_bytes": b.total, "signed": b.signature is not None, "signed_by": b.signed_by,
            "files": [{"path": p, "size": s, "sha256": h} for h, s, p in m["files"]],
            "firmware": None if not m["firmware"] else {"size": m["firmware"][1], "sha256": m["firmware"][0]}}
