"""Run the real firmware under the MicroPython Unix port, with the simulated hardware layer.

The app is compiled with mpy-cross, as it is for a board (compiling source on the node would cost
the heap a pole does not have); the node's filesystem is a state directory holding config.json.
Laid out as a board has it (install(), then start(state, None)), the state directory is the VM's
root ("/"), so the module paths the VM interns for good are a board's ("/lib/noise.mpy") and its
heap figures are a board's.
"""

import json
import os
import subprocess
from pathlib import Path

from ..errors import UserError
from ..field import appbuild
from ..field.appbuild import venv_tool


def micropython(vm=None):
    """The MicroPython Unix port to run nodes on: `vm` (another build, e.g. a 32-bit one), else the venv's."""
    if vm:
        vm = Path(vm)
        if not (vm.is_file() and os.access(vm, os.X_OK)):
            raise UserError(f"--micropython {vm}: not an executable MicroPython Unix port")
        return str(vm.resolve())
    return venv_tool("micropython")


# sys.implementation._mpy >> 10: the native-code architecture a VM loads (py/persistentcode.h).
_MPY_ARCHS = {1: "x86", 2: "x64", 3: "armv6", 4: "armv6m", 5: "armv7m", 6: "armv7em", 7: "armv7emsp", 8: "armv7emdp",
              9: "xtensa", 10: "xtensawin", 11: "rv32imc"}
_arch_cache = {}


def vm_arch(vm=None):
    """The mpy-cross -march for a VM's viper code, asked of the VM itself."""
    exe = micropython(vm)
    if exe not in _arch_cache:
        r = subprocess.run([exe, "-c", "import sys; print(sys.implementation._mpy >> 10)"], capture_output=True,
                           text=True, timeout=30)
        try:
            _arch_cache[exe] = _MPY_ARCHS[int(r.stdout.strip())]
        except (ValueError, KeyError):
            raise UserError(f"{exe} did not say its architecture: is it a MicroPython Unix port?") from None
    return _arch_cache[exe]


def node_env(app=None, firmware_lib=None):
    """The environment of a node process. app=None: the app lives in the node's filesystem (the
    state directory), as on a board, put there by install(), `openpole deploy` or a flashed image.
    firmware_lib: a directory of modules standing for those a firmware has frozen in, where an ESP32
    keeps them: sys.path is ['', '.frozen', '/lib'] there."""
    # '' first, as on a device: a package is then found relative to the node's filesystem. '.frozen'
    # is where MicroPython looks for modules frozen into the VM (bench/node_manifest.py).
    frozen = [".frozen"] + ([str(Path(firmware_lib).resolve())] if firmware_lib else [])
    path = ["", str(app)] + frozen + [str(app / "lib")] if app else [""] + frozen + ["lib"]
    env = dict(os.environ)
    env["MICROPYPATH"] = os.pathsep.join(path)
    return env


FIRMWARE_LIB_MOUNT = "/.firmware-lib"  # where --firmware-lib appears in a node laid out as a board


def board_env(firmware_lib=None):
    """The environment of a node whose state directory is its root (start(state, None)): sys.path
    as on an ESP32, ['', '.frozen', '/lib'], the firmware's modules after '.frozen'."""
    env = dict(os.environ)
    env["MICROPYPATH"] = os.pathsep.join(["", ".frozen"] + ([FIRMWARE_LIB_MOUNT] if firmware_lib else []) + ["/lib"])
    return env


def install(app, state):
    """Put the compiled app in the node's own filesystem, as a flashed board has it (a file each,
    under the paths `openpole flash` and `deploy` give them)."""
    state = Path(state)
    for rel, data in appbuild.app_files(app).items():
        (state / rel).parent.mkdir(parents=True, exist_ok=True)
        (state / rel).write_bytes(data)


def write_config(state, cfg):
    state = Path(state)
    state.mkdir(parents=True, exist_ok=True)
    (state / "config.json").write_text(json.dumps(cfg))
    return state


ALL_SENSORS = ("bme280", "pms5003", "noise")


def node_config(node_id, host, port, interval_s=1.0, cycles=None, world=None, key=None, sensors=ALL_SENSORS, **extra):
    """A node config for the simulator. world: "HOST:PORT" of the world server (sim.world)."""
    cfg = {
        "node_id": node_id,
        "board": "esp32-devkitc",
        "interval_s": interval_s,
        "diag_interval_s": 60,
        "sensors": {name: {} for name in sensors},
        "broker": {"host": host, "port": port},
        "sim": {"world": world or "127.0.0.1:7450"},
    }
    if cycles:
        cfg["sim"]["cycles"] = cycles
    if key:
        cfg["key"] = key
    cfg.update(extra)
    return cfg


# What a board's boot does: run main.py when there is one, else straight to the REPL (-i: the REPL
# follows, as on a board after Ctrl-C or when the app ends).
RUN_SCRIPT = """try:
    import main
except ImportError as e:
    if "'main'" not in str(e):
        raise
    print("no main.py: a blank node, at the MicroPython REPL")
"""


def _board_boot(state, firmware_lib=None, interactive=False):
    """-c code that makes the state directory the VM's root, as a board's filesystem is mounted at /
    (and --firmware-lib at FIRMWARE_LIB_MOUNT), then boots as a board does."""
    mounts = "vfs.umount('/');vfs.mount(vfs.VfsPosix(%r),'/');" % str(Path(state).resolve())
    if firmware_lib:
        mounts += "vfs.mount(vfs.VfsPosix(%r),%r);" % (str(Path(firmware_lib).resolve()), FIRMWARE_LIB_MOUNT)
    return "import vfs,os\n" + mounts + "os.chdir('/')\n" + (RUN_SCRIPT if interactive else "import main\n")


def start(state, app, heap="64k", interactive=False, vm=None, firmware_lib=None, **popen):
    """Start a node whose filesystem is `state`; returns the Popen (stdout: the node's console).
    app=None: the app is in `state` itself, which is then the VM's root, as on a board; else it is
    run from the build directory `app` (longer module paths: more heap than a board's). vm: another
    MicroPython build."""
    exe = micropython(vm)
    if app is None:
        cmd = [exe, "-X", f"heapsize={heap}"] + (["-i"] if interactive else []) + \
              ["-c", _board_boot(state, firmware_lib, interactive)]
        return subprocess.Popen(cmd, cwd=state, env=board_env(firmware_lib), **popen)
    if interactive:
        (Path(state) / "run_node.py").write_text(RUN_SCRIPT)
        cmd = [exe, "-X", f"heapsize={heap}", "-i", "run_node.py"]
    else:
        cmd = [exe, "-X", f"heapsize={heap}", "-m", "main"]
    return subprocess.Popen(cmd, cwd=state, env=node_env(app, firmware_lib), **popen)


BOOT_IMAGE = Path(__file__).with_name("mp_boot_image.py")


def fs_from_image(image, workdir):
    """The filesystem part of an image from `openpole image build` (merged, or the fs alone),
    written to workdir; returns its path."""
    from ..field import image as fimage

    data = Path(image).read_bytes()
    for board in fimage.specs().boards.values():
        if len(data) in (board["fs_size"], board["fs_offset"] + board["fs_size"]):
            fs = Path(workdir) / "fs.img"
            fs.write_bytes(data[-board["fs_size"]:])
            return fs
    raise UserError(f"--image {image}: {len(data)} bytes is neither a filesystem nor a merged image of a known board")


def start_image(fs_path, world, heap="128k", interactive=False, vm=None, firmware_lib=None, **popen):
    """Boot a filesystem image under the Unix port (VfsLfs2, writes in RAM); returns the Popen."""
    cmd = [micropython(vm), "-X", f"heapsize={heap}"] + (["-i"] if interactive else [])
    cmd += [str(BOOT_IMAGE), str(fs_path)] + ([str(Path(firmware_lib).resolve())] if firmware_lib else [])
    env = dict(os.environ, OPENPOLE_WORLD=world)
    env.pop("MICROPYPATH", None)
    return subprocess.Popen(cmd, cwd=Path(fs_path).parent, env=env, **popen)
