"""Bundles (openpole ota build / inspect / keygen): what is in one, per the contract, and what the
agent refuses before anything changes: a bad signature, a damaged file, a bundle unsigned where
signatures are required, a manifest that breaks a rule."""

import hashlib
import io
import json
import subprocess
import sys
import zipfile

import pytest

from openpole.errors import UserError
from openpole.ota import bundle
from openpole.wire import ota


def cli(*args):
    return subprocess.run([sys.executable, "-m", "openpole", *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    r = cli("ota", "keygen", d / "release.key")
    assert r.returncode == 0, r.stderr
    pub = r.stdout.split('release_keys = ["')[1].split('"')[0]
    r2 = cli("ota", "keygen", d / "other.key")
    other = r2.stdout.split('release_keys = ["')[1].split('"')[0]
    return d / "release.key", pub, other


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys):
    out = tmp_path_factory.mktemp("b") / "app.zip"
    r = cli("ota", "build", "--board", "esp32-devkitc", "--version", "0.3.0", "--out", out, "--sign", keys[0])
    assert r.returncode == 0, r.stderr
    assert "app 0.3.0 for esp32-devkitc" in r.stdout and "signed" in r.stdout
    return out.read_bytes()


def rezip(data, change):
    """The bundle with its members passed through change({name: bytes}) -> {name: bytes}."""
    z = zipfile.ZipFile(io.BytesIO(data))
    members = change({n: z.read(n) for n in z.namelist()})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        for n, b in members.items():
            out.writestr(n, b)
    return buf.getvalue()


def test_a_bundle_holds_the_app_compiled_for_the_chip_without_main_py_and_a_manifest_per_the_contract(signed, keys):
    b = bundle.read(signed, [keys[1]], require_signed=True)
    assert b.signed_by == keys[1]
    lines = b.manifest_bytes.decode().split("\n")
    assert lines[:6] == ["openpole-ota 1", "kind app", "version 0.3.0", "board esp32-devkitc", "mpy 11014",
                         "micropython 1.24 1.29"] and lines[-2:] == ["end", ""]
    paths = [p for _, _, p in b.manifest["files"]]
    assert "main.py" not in paths and "otaboot.mpy" not in paths and "node.mpy" in paths and "lib/noise.mpy" in paths
    assert not any(p.startswith("hw/sim") or p.startswith("hw/fake") for p in paths)  # simulator files stay out
    assert all(len(p) <= 48 for p in paths)
    for i, (sha, size, path) in enumerate(b.manifest["files"], 1):
        assert hashlib.sha256(b.objects[i]).hexdigest() == sha and len(b.objects[i]) == size
        assert b.objects[i][:1] == b"M"  # .mpy
    assert b"0.3.0" in b.objects[paths.index("node.mpy") + 1]  # the version went into the app itself
    assert b.total == sum(len(v) for v in b.objects.values())


def test_inspect_shows_it_and_json_says_the_same(tmp_path, signed, keys):
    f = tmp_path / "app.zip"
    f.write_bytes(signed)
    r = cli("ota", "inspect", f, "--json", "--key", keys[1])
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["kind"] == "app" and d["version"] == "0.3.0" and d["signed_by"] == keys[1] and d["mpy"] == 11014
    r = cli("ota", "inspect", f)
    assert r.returncode == 0 and "app 0.3.0 for esp32-devkitc (mpy 11014)" in r.stdout and "node.mpy" in r.stdout


@pytest.mark.parametrize("what", ["other_key", "tampered_manifest", "wrong_hash", "unsigned", "extra_file",
                                  "missing_file", "bad_line", "not_zip", "main_py"])
def test_the_agent_refuses_a_bundle_that_is_not_whole_and_signed_with_one_line_why(signed, keys, what):
    key, pub, other = keys
    data, ks, req = signed, [pub], True
    match = None
    if what == "other_key":
        ks, match = [other], "signature .* is not by any key in \\[ota\\] release_keys"
    elif what == "tampered_manifest":  # a version changed after signing: the signature no longer holds
        data = rezip(signed, lambda m: {**m, "manifest.txt": m["manifest.txt"].replace(b"version 0.3.0", b"version 9.9.9")})
        match = "signature"
    elif what == "wrong_hash":
        data = rezip(signed, lambda m: {**m, "files/node.mpy": m["files/node.mpy"][:-1] + b"\0"})
        match = "files/node.mpy does not match its manifest"
    elif what == "unsigned":
        data = rezip(signed, lambda m: {k: v for k, v in m.items() if k != "manifest.sig"})
        match = "not signed by a release key .* require_signed"
    elif what == "extra_file":
        data = rezip(signed, lambda m: {**m, "files/evil.py": b"x"})
        match = "holds files/evil.py, which its manifest does not list"
    elif what == "missing_file":
        data = rezip(signed, lambda m: {k: v for k, v in m.items() if k != "files/node.mpy"})
        match = "no files/node.mpy"
    elif what == "bad_line":
        data, req = rezip(signed, lambda m: {**m, "manifest.txt": m["manifest.txt"].replace(b"mpy 11014", b"mpy x")}), False
        match = "breaks the contract"
    elif what == "not_zip":
        data, match = b"PK\x03\x04 truncated", "not a bundle"
    elif what == "main_py":
        def add_main(m):
            text = m["manifest.txt"].replace(b"end\n", f"file {hashlib.sha256(b'x').hexdigest()} 1 main.py\nend\n".encode())
            return {**m, "manifest.txt": text, "files/main.py": b"x"}
        data, req, match = rezip(signed, add_main), False, "never in a bundle"
    with pytest.raises(UserError, match=match) as e:
        bundle.read(data, ks, require_signed=req)
    assert "\n" not in str(e.value)


def test_build_refuses_what_it_cannot_make_with_one_line(tmp_path):
    r = cli("ota", "build", "--board", "esp32-devkitc", "--out", tmp_path / "f.zip", "--firmware", tmp_path / "x.app-bin",
            "--version", "1.28.0")
    assert r.returncode == 2 and "has no OTA partitions" in r.stderr and "Traceback" not in r.stderr
    r = cli("ota", "build", "--board", "no-such-board", "--out", tmp_path / "f.zip")
    assert r.returncode == 2 and "unknown board" in r.stderr
    r = cli("ota", "build", "--board", "esp32-devkitc", "--out", tmp_path / "f.zip", "--micropython", "1.29", "1.24")
    assert r.returncode == 2 and "empty" in r.stderr
    r = cli("ota", "keygen", tmp_path / "k")
    assert r.returncode == 0 and cli("ota", "keygen", tmp_path / "k").returncode == 2  # never overwritten
    assert oct((tmp_path / "k").stat().st_mode & 0o777) == "0o600"


def test_a_firmware_bundle_carries_the_image_for_a_board_with_ota_partitions(tmp_path, monkeypatch):
    from openpole.field import image

    board, chip = image.board_info("esp32-devkitc")
    monkeypatch.setattr(image, "board_info", lambda b, s=None: ({**board, "ota": True}, chip))
    fw = tmp_path / "fw.app-bin"
    fw.write_bytes(b"\xe9" + bytes(range(256)) * 40)
    manifest, data = bundle.build("esp32-devkitc", tmp_path / "fw.zip", version="1.28.0", firmware=fw)
    b = bundle.read(data)
    assert b.manifest["kind"] == "firmware" and b.manifest["files"] == []
    assert b.objects[ota.FIRMWARE_OBJ] == fw.read_bytes()
    assert f"firmware {hashlib.sha256(fw.read_bytes()).hexdigest()} {len(fw.read_bytes())}" in manifest.decode()
