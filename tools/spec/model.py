"""Load and validate sensor_specs/ and board_defs/: the sources of truth everything else reads.

Every problem becomes one line, `file: field: reason`; the loader never raises on bad content.
"""

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

BUSES = ("i2c", "uart", "i2s", "spi")
KINDS = ("linear", "level")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
BOARD_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass(frozen=True)
class Problem:
    file: str
    field: str
    reason: str

    def __str__(self):
        return f"{self.file}: {self.field}: {self.reason}"


# mpy-cross -march values
MPY_ARCHS = ("x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp", "xtensa", "xtensawin", "rv32imc", "rv64imc")


@dataclass
class Specs:
    units: dict = field(default_factory=dict)       # id -> table
    quantities: list = field(default_factory=list)  # tables, registry order
    sensors: dict = field(default_factory=dict)     # file stem -> table
    mics: dict = field(default_factory=dict)        # file stem -> table
    chips: dict = field(default_factory=dict)
    roles: dict = field(default_factory=dict)       # role -> in/out/io
    boards: dict = field(default_factory=dict)      # board id -> table
    boxes: dict = field(default_factory=dict)       # box profile (file stem) -> table
    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    def quantity(self, name):
        return next((q for q in self.quantities if q["name"] == name), None)


class _Checker:
    """Type and presence checks that record problems against one file."""

    def __init__(self, specs, path, root):
        self.specs = specs
        # Relative to the specs' common folder, unless that is the filesystem root: /x stays /x.
        shared = path.is_relative_to(root) and Path(root) != Path(Path(root).anchor)
        self.file = str(path.relative_to(root)) if shared else str(path)

    def error(self, fld, reason):
        self.specs.errors.append(Problem(self.file, fld, reason))

    def warn(self, fld, reason):
        self.specs.warnings.append(Problem(self.file, fld, reason))

    def get(self, table, key, types, prefix="", required=True):
        fld = f"{prefix}{key}"
        if key not in table:
            if required:
                self.error(fld, "missing field")
            return None
        value = table[key]
        if isinstance(value, bool) and bool not in _tuple(types):
            self.error(fld, f"must be {_type_names(types)}, not a boolean")
            return None
        if not isinstance(value, types):
            self.error(fld, f"must be {_type_names(types)}, not {type(value).__name__}")
            return None
        return value


def _tuple(types):
    return types if isinstance(types, tuple) else (types,)


def _type_names(types):
    if float in _tuple(types):
        return "a number"
    names = {int: "an integer", str: "a string", list: "a list", dict: "a table", bool: "a boolean"}
    return " or ".join(names[t] for t in _tuple(types))


NUMBER = (int, float)


def _read_toml(path, specs, root):
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        _Checker(specs, path, root).error("(file)", f"not valid TOML: {e}")
    except OSError as e:
        _Checker(specs, path, root).error("(file)", f"cannot read: {e.strerror}")
    return None


def load(spec_dir, board_dir):
    """Read and validate every spec file; problems are collected in .errors and .warnings."""
    spec_dir, board_dir = Path(spec_dir), Path(board_dir)
    root = Path(_common_root(spec_dir, board_dir))
    s = Specs()
    _load_units(s, spec_dir / "units.toml", root)
    _load_quantities(s, spec_dir / "quantities.toml", root)
    for path in sorted((spec_dir / "sensors").glob("*.toml")):
        _load_sensor(s, path, root)
    for path in sorted((spec_dir / "mics").glob("*.toml")):
        _load_mic(s, path, root)
    _load_chips(s, board_dir / "chips.toml", root)
    _load_roles(s, board_dir / "roles.toml", root)
    for path in sorted(board_dir.glob("*.toml")):
        if path.name not in ("chips.toml", "roles.toml"):
            _load_board(s, path, root)
    # A box naming a file that exists but has errors is not reported again: its own errors are.
    files = {"sensors": {p.stem for p in (spec_dir / "sensors").glob("*.toml")},
             "mics": {p.stem for p in (spec_dir / "mics").glob("*.toml")},
             "boards": {p.stem for p in board_dir.glob("*.toml")}}
    for path in sorted((spec_dir / "boxes").glob("*.toml")):
        _load_box(s, path, root, files)
    return s


def _common_root(a, b):
    import os.path

    return os.path.commonpath([a.resolve(), b.resolve()])


def _load_units(s, path, root):
    data = _read_toml(path, s, root)
    if data is None:
        return
    c = _Checker(s, path, root)
    for i, u in enumerate(data.get("unit", [])):
        p = f"unit[{i}]."
        uid = c.get(u, "id", str, p)
        c.get(u, "symbol", str, p)
        if uid is not None:
            if uid in s.units:
                c.error(p + "id", f"duplicate unit {uid!r}")
            s.units[uid] = u


def _load_quantities(s, path, root):
    data = _read_toml(path, s, root)
    if data is None:
        return
    c = _Checker(s, path, root)
    names, keys = {}, {}
    for i, q in enumerate(data.get("quantity", [])):
        p = f"quantity[{i}]."
        name = c.get(q, "name", str, p)
        label = f"quantity {name}." if name else p
        key = c.get(q, "key", int, label)
        unit = c.get(q, "unit", str, label)
        lo = c.get(q, "min", NUMBER, label)
        hi = c.get(q, "max", NUMBER, label)
        res = c.get(q, "resolution", NUMBER, label)
        kind = c.get(q, "kind", str, label)
        c.get(q, "description", str, label)
        ok = None not in (name, key, unit, lo, hi, res, kind)
        if name is not None:
            if not NAME_RE.match(name):
                c.error(label + "name", f"{name!r} must be lower case letters, digits and _")
                ok = False
            elif name in names:
                c.error(label + "name", f"duplicate name (also quantity[{names[name]}])")
                ok = False
            names.setdefault(name, i)
        if key is not None:
            if not 1 <= key <= 65535:
                c.error(label + "key", f"{key} is outside 1..65535")
                ok = False
            elif key in keys:
                c.error(label + "key", f"duplicate key {key} (also {keys[key]})")
                ok = False
            keys.setdefault(key, name)
        if unit is not None and unit not in s.units:
            c.error(label + "unit", f"unknown unit {unit!r} (known: {', '.join(s.units)})")
            ok = False
        if lo is not None and hi is not None and lo >= hi:
            c.error(label + "min", f"min {lo} must be below max {hi}")
            ok = False
        if res is not None and res <= 0:
            c.error(label + "resolution", "must be above 0")
            ok = False
        if kind is not None and kind not in KINDS:
            c.error(label + "kind", f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
            ok = False
        # A flawed quantity stays known by name, so sensors measuring it do not report a second,
        # cascading error; nothing is generated while any error stands.
        if ok or (name is not None and names.get(name) == i):
            s.quantities.append(q)


def _check_wiring(c, table, s):
    wiring = c.get(table, "wiring", dict)
    for pin, target in (wiring or {}).items():
        if not isinstance(target, str):
            c.error(f"wiring.{pin}", "must be a string (a supply, GND or a pin role)")
        elif "." in target or target == "status_led":
            if s.roles and target not in s.roles:
                c.error(f"wiring.{pin}", f"unknown pin role {target!r}")


def _load_sensor(s, path, root):
    t = _read_toml(path, s, root)
    if t is None:
        return
    c = _Checker(s, path, root)
    n_err = len(s.errors)
    for key in ("model", "manufacturer", "datasheet", "placement", "calibration"):
        c.get(t, key, str)
    c.get(t, "driver", str, required=False)
    c.get(t, "warmup_s", NUMBER)
    bus = c.get(t, "bus", str)
    if bus is not None and bus not in BUSES:
        c.error("bus", f"unknown bus {bus!r} (known: {', '.join(BUSES)})")
    if bus == "i2c":
        addr = c.get(t, "address", int)
        if addr is not None and not 0x08 <= addr <= 0x77:
            c.error("address", f"0x{addr:02x} is not a 7-bit I2C device address (0x08..0x77)")
    if bus == "uart":
        c.get(t, "baudrate", int)
    measures = c.get(t, "measures", list)
    for i, m in enumerate(measures or []):
        q = c.get(m, "quantity", str, f"measures[{i}].") if isinstance(m, dict) else None
        if q is not None and s.quantity(q) is None:
            c.error(f"measures[{i}].quantity", f"unknown quantity {q!r} (not in quantities.toml)")
    _check_wiring(c, t, s)
    if len(s.errors) == n_err:
        s.sensors[path.stem] = t


def _load_mic(s, path, root):
    t = _read_toml(path, s, root)
    if t is None:
        return
    c = _Checker(s, path, root)
    n_err = len(s.errors)
    for key in ("model", "manufacturer", "datasheet", "placement"):
        c.get(t, key, str)
    bus = c.get(t, "bus", str)
    if bus is not None and bus != "i2s":
        c.error("bus", f"unknown bus {bus!r} for a microphone (known: i2s)")
    c.get(t, "sensitivity_dbfs", NUMBER)
    frame = c.get(t, "frame_bits", int)
    data = c.get(t, "data_bits", int)
    if frame is not None and frame not in (16, 24, 32):
        c.error("frame_bits", f"{frame} is not an I2S slot width (16, 24 or 32)")
    if frame is not None and data is not None and not 8 <= data <= frame:
        c.error("data_bits", f"{data} must be between 8 and frame_bits ({frame})")
    align = c.get(t, "alignment", str)
    if align is not None and align not in ("left", "right"):
        c.error("alignment", f"unknown alignment {align!r} (known: left, right)")
    eq = c.get(t, "eq_highpass_hz", NUMBER, required=False)
    if eq is not None and not 1 <= eq <= 500:
        c.error("eq_highpass_hz", f"{eq} Hz: the mic's low-frequency corner should be 1-500 Hz")
    floor = c.get(t, "noise_floor_dba", NUMBER)
    aop = c.get(t, "aop_db", NUMBER)
    if floor is not None and aop is not None and floor >= aop:
        c.error("noise_floor_dba", f"noise floor {floor} must be below the overload point {aop}")
    _check_wiring(c, t, s)
    if len(s.errors) == n_err:
        s.mics[path.stem] = t


def _load_chips(s, path, root):
    data = _read_toml(path, s, root)
    if data is None:
        return
    c = _Checker(s, path, root)
    for cid, chip in data.items():
        p = f"{cid}."
        ok = all(c.get(chip, k, list, p) is not None for k in ("gpio", "flash_pins", "input_only", "strapping"))
        for k in ("name", "esptool_name"):
            ok = c.get(chip, k, str, p) is not None and ok
        arch = c.get(chip, "mpy_arch", str, p)
        if arch is not None and arch not in MPY_ARCHS:
            c.error(f"{p}mpy_arch", f"{arch!r} is not an mpy-cross architecture ({', '.join(MPY_ARCHS)})")
        if ok:
            s.chips[cid] = chip


def _load_roles(s, path, root):
    data = _read_toml(path, s, root)
    if data is None:
        return
    c = _Checker(s, path, root)
    for role, direction in data.items():
        if direction not in ("in", "out", "io"):
            c.error(role, f"direction must be in, out or io, not {direction!r}")
        else:
            s.roles[role] = direction


def _load_board(s, path, root):
    t = _read_toml(path, s, root)
    if t is None:
        return
    c = _Checker(s, path, root)
    n_err = len(s.errors)
    bid = c.get(t, "id", str)
    if bid is not None and bid != path.stem:
        c.error("id", f"{bid!r} must match the file name {path.stem!r}")
    for key in ("name", "module", "micropython_board", "network"):
        c.get(t, key, str)
    chip_id = c.get(t, "chip", str)
    chip = s.chips.get(chip_id) if chip_id is not None else None
    if chip_id is not None and chip is None:
        c.error("chip", f"unknown chip {chip_id!r} (known: {', '.join(s.chips)})")
    flash_mb = c.get(t, "flash_mb", int)
    off = c.get(t, "fs_offset", int)
    size = c.get(t, "fs_size", int)
    if off is not None and size is not None:
        if off % 4096 or size % 4096:
            c.error("fs_offset", "filesystem offset and size must be multiples of 4096 (one flash sector)")
        if flash_mb is not None and off + size > flash_mb * 1024 * 1024:
            c.error("fs_size", f"filesystem ends at 0x{off + size:x}, past the {flash_mb} MB flash")
    reserved = c.get(t, "reserved", list, required=False) or []
    network = t.get("network")
    if network is not None and network not in NETWORKS:
        c.error("network", f"{network!r} is not a network the node brings up ({', '.join(NETWORKS)})")
    if network == "ethernet":
        _check_ethernet(c, t, chip)
    pins = c.get(t, "pins", dict)
    if pins is not None and chip is not None:
        _check_pins(c, pins, chip, reserved, s.roles)
    if len(s.errors) == n_err and bid is not None:
        s.boards[bid] = t


NETWORKS = ("wifi", "ethernet")
# MicroPython's network.PHY_* names (esp32 port): the PHY chips network.LAN drives.
ETHERNET_PHYS = ("LAN8710", "LAN8720", "IP101", "RTL8201", "DP83848", "KSZ8041", "KSZ8081")


def _check_ethernet(c, t, chip):
    """[ethernet]: the PHY and its pins, read by the node to bring up network.LAN."""
    eth = c.get(t, "ethernet", dict)
    if eth is None:
        return
    p = "ethernet."
    phy = c.get(eth, "phy", str, p)
    if phy is not None and phy not in ETHERNET_PHYS:
        c.error(f"{p}phy", f"{phy!r} is not a PHY MicroPython drives ({', '.join(ETHERNET_PHYS)})")
    addr = c.get(eth, "phy_addr", int, p)
    if addr is not None and not 0 <= addr <= 31:
        c.error(f"{p}phy_addr", "an MDIO address from 0 to 31")
    for key, required in (("mdc", True), ("mdio", True), ("power", False), ("ref_clk", False)):
        gpio = c.get(eth, key, int, p, required=required)
        if gpio is not None and chip is not None and gpio not in chip["gpio"]:
            c.error(f"{p}{key}", f"GPIO {gpio} does not exist on the {chip.get('name')}")
    mode = c.get(eth, "ref_clk_mode", str, p, required=False)
    if mode is not None and mode not in ("in", "out"):
        c.error(f"{p}ref_clk_mode", "in (the PHY drives the clock) or out (the ESP32 does)")


def _check_pins(c, pins, chip, reserved, roles):
    used = {}
    for role, gpio in pins.items():
        fld = f"pins.{role}"
        if role not in roles:
            c.error(fld, f"unknown pin role (known: {', '.join(roles)})")
            continue
        if not isinstance(gpio, int) or isinstance(gpio, bool):
            c.error(fld, "must be a GPIO number")
            continue
        if gpio not in chip["gpio"]:
            c.error(fld, f"GPIO {gpio} does not exist on the {chip.get('name')}")
        elif gpio in chip["flash_pins"]:
            c.error(fld, f"GPIO {gpio} is wired to the SPI flash on the {chip.get('name')}; choose another pin")
        elif gpio in reserved:
            c.error(fld, f"GPIO {gpio} is reserved on this board (listed in reserved)")
        elif gpio in chip["input_only"] and roles[role] in ("out", "io"):
            c.error(fld, f"GPIO {gpio} is input-only on the {chip.get('name')}, but {role} drives it")
        elif gpio in chip["strapping"]:
            c.warn(fld, f"GPIO {gpio} is a strapping pin: a sensor holding it at reset can stop the boot")
        elif gpio in chip.get("console_pins", []):
            c.warn(fld, f"GPIO {gpio} carries the serial console or USB")
        if gpio in used:
            c.error(fld, f"GPIO {gpio} is already used by {used[gpio]}")
        used.setdefault(gpio, role)


def _load_box(s, path, root, files):
    """A box profile: a board, its sensors and microphone, and the other parts (its bill of materials)."""
    t = _read_toml(path, s, root)
    if t is None:
        return
    c = _Checker(s, path, root)
    n_err = len(s.errors)
    for key in ("name", "description"):
        c.get(t, key, str)
    board = c.get(t, "board", str)
    if board is not None and board not in files["boards"]:
        c.error("board", f"unknown board {board!r} (known: {', '.join(sorted(files['boards'] - {'chips', 'roles'}))})")
    for i, name in enumerate(c.get(t, "sensors", list) or []):
        if name not in files["sensors"]:
            c.error(f"sensors[{i}]", f"unknown sensor {name!r} (known: {', '.join(sorted(files['sensors']))})")
    mic = c.get(t, "mic", str, required=False)
    if mic is not None and mic not in files["mics"]:
        c.error("mic", f"unknown microphone {mic!r} (known: {', '.join(sorted(files['mics']))})")
    for i, part in enumerate(c.get(t, "parts", list, required=False) or []):
        p = f"parts[{i}]."
        if not isinstance(part, dict):
            c.error(f"parts[{i}]", "a table with part, qty and an optional note")
            continue
        c.get(part, "part", str, p)
        qty = c.get(part, "qty", int, p)
        if qty is not None and qty < 1:
            c.error(f"{p}qty", "at least 1")
        c.get(part, "note", str, p, required=False)
    known = board in s.boards and all(n in s.sensors for n in t.get("sensors", [])) and (mic is None or mic in s.mics)
    if len(s.errors) == n_err and known:
        s.boxes[path.stem] = t
