"""openpole spec check / build: the sources of truth are valid, bad files are refused in one line
naming file and field, boards are checked against their chip, generated files are fresh."""

import shutil
import subprocess
import sys

import pytest

from openpole import paths
from openpole.spec import build, model
from openpole.spec.registry import digits


def test_repository_specs_are_valid_and_warning_free():
    specs = model.load(paths.SENSOR_SPECS, paths.BOARD_DEFS)
    assert specs.errors == []
    assert specs.warnings == []
    assert {"bme280", "sht31", "pms5003"} <= set(specs.sensors)
    assert {"inmp441", "ics43434", "sph0645"} <= set(specs.mics)
    assert {"esp32-devkitc", "esp32-s3-devkitc-1", "olimex-esp32-poe"} <= set(specs.boards)
    names = [q["name"] for q in specs.quantities]
    for name in ("temperature", "humidity", "pressure", "pm1", "pm2_5", "pm10", "pm1_cf1", "pm2_5_cf1", "pm10_cf1",
                 "pc0_3", "pc0_5", "pc1", "pc2_5", "pc5", "pc10", "laeq", "lamax", "lamin", "la10", "la50", "la90"):
        assert name in names


def test_every_board_file_passes_the_validator():
    specs = model.load(paths.SENSOR_SPECS, paths.BOARD_DEFS)
    board_files = sorted(p.stem for p in paths.BOARD_DEFS.glob("*.toml") if p.stem not in ("chips", "roles"))
    assert sorted(specs.boards) == board_files


def test_generated_files_are_fresh():
    specs = model.load(paths.SENSOR_SPECS, paths.BOARD_DEFS)
    assert build.stale(build.outputs(specs)) == [], "run `openpole spec build` and commit the result"


def test_firmware_constants_match_the_registry():
    import registry  # firmware/lib/registry.py, importable on CPython

    specs = model.load(paths.SENSOR_SPECS, paths.BOARD_DEFS)
    assert registry.KEYS == {q["name"]: q["key"] for q in specs.quantities}
    assert registry.DIGITS[registry.KEYS["temperature"]] == 2
    assert all(registry.DIGITS[q["key"]] == digits(q["resolution"]) for q in specs.quantities)
    import sensor_facts

    assert sensor_facts.SENSORS["bme280"]["address"] == 0x76


@pytest.fixture
def tree(tmp_path):
    """A writable copy of the specs to break."""
    shutil.copytree(paths.SENSOR_SPECS, tmp_path / "sensor_specs")
    shutil.copytree(paths.BOARD_DEFS, tmp_path / "board_defs")
    return tmp_path


def _edit(path, old, new):
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def _check(tree):
    r = subprocess.run(
        [sys.executable, "-m", "openpole", "spec", "check", "--specs", str(tree / "sensor_specs"), "--boards", str(tree / "board_defs")],
        capture_output=True, text=True,
    )
    return r.returncode, r.stdout, r.stderr


BAD_SPECS = [
    ("duplicate key", "sensor_specs/quantities.toml", 'name = "humidity"\nkey = 2', 'name = "humidity"\nkey = 1',
     "sensor_specs/quantities.toml: quantity humidity.key: duplicate key 1"),
    ("duplicate name", "sensor_specs/quantities.toml", 'name = "la90"', 'name = "la50"',
     "sensor_specs/quantities.toml: quantity la50.name: duplicate name"),
    ("unknown unit", "sensor_specs/quantities.toml", 'unit = "%RH"', 'unit = "percent"',
     "sensor_specs/quantities.toml: quantity humidity.unit: unknown unit 'percent'"),
    ("min > max", "sensor_specs/quantities.toml", "min = 300\nmax = 1100", "min = 1100\nmax = 300",
     "sensor_specs/quantities.toml: quantity pressure.min: min 1100 must be below max 300"),
    ("missing field", "sensor_specs/sensors/sht31.toml", 'datasheet = "https', 'not_the_datasheet = "https',
     "sensor_specs/sensors/sht31.toml: datasheet: missing field"),
    ("unknown bus", "sensor_specs/sensors/bme280.toml", 'bus = "i2c"', 'bus = "onewire"',
     "sensor_specs/sensors/bme280.toml: bus: unknown bus 'onewire'"),
    ("wrong type", "sensor_specs/sensors/pms5003.toml", "warmup_s = 30", 'warmup_s = "thirty"',
     "sensor_specs/sensors/pms5003.toml: warmup_s: must be a number, not str"),
    ("unknown quantity", "sensor_specs/sensors/bme280.toml", 'quantity = "pressure"', 'quantity = "altitude"',
     "sensor_specs/sensors/bme280.toml: measures[2].quantity: unknown quantity 'altitude'"),
    ("mic bits", "sensor_specs/mics/inmp441.toml", "data_bits = 24", "data_bits = 40",
     "sensor_specs/mics/inmp441.toml: data_bits: 40 must be between 8 and frame_bits (32)"),
    ("flash pin", "board_defs/esp32-devkitc.toml", '"i2c.sda" = 21', '"i2c.sda" = 7',
     "board_defs/esp32-devkitc.toml: pins.i2c.sda: GPIO 7 is wired to the SPI flash on the ESP32"),
    ("input-only pin as output", "board_defs/esp32-devkitc.toml", '"pm.set" = 4', '"pm.set" = 34',
     "board_defs/esp32-devkitc.toml: pins.pm.set: GPIO 34 is input-only on the ESP32, but pm.set drives it"),
    ("pin used twice", "board_defs/esp32-devkitc.toml", '"pm.set" = 4', '"pm.set" = 21',
     "board_defs/esp32-devkitc.toml: pins.pm.set: GPIO 21 is already used by i2c.sda"),
    ("reserved pin", "board_defs/olimex-esp32-poe.toml", '"pm.set" = 14', '"pm.set" = 23',
     "board_defs/olimex-esp32-poe.toml: pins.pm.set: GPIO 23 is reserved on this board"),
    ("S3 flash pin", "board_defs/esp32-s3-devkitc-1.toml", '"i2s.sd" = 6', '"i2s.sd" = 28',
     "board_defs/esp32-s3-devkitc-1.toml: pins.i2s.sd: GPIO 28 is wired to the SPI flash on the ESP32-S3"),
    ("filesystem past flash", "board_defs/esp32-devkitc.toml", "fs_size = 0x200000", "fs_size = 0x300000",
     "board_defs/esp32-devkitc.toml: fs_size: filesystem ends at 0x500000, past the 4 MB flash"),
    ("unknown chip", "board_defs/esp32-devkitc.toml", 'chip = "esp32"', 'chip = "esp8266"',
     "board_defs/esp32-devkitc.toml: chip: unknown chip 'esp8266'"),
    ("bad TOML", "sensor_specs/sensors/sht31.toml", 'model = "SHT31"', 'model = "SHT31',
     "sensor_specs/sensors/sht31.toml: (file): not valid TOML"),
    ("unknown mpy arch", "board_defs/chips.toml", 'mpy_arch = "xtensawin"', 'mpy_arch = "xtensa-win"',
     "board_defs/chips.toml: esp32.mpy_arch: 'xtensa-win' is not an mpy-cross architecture"),
    ("box with an unknown sensor", "sensor_specs/boxes/street.toml", 'sensors = ["bme280", "pms5003"]',
     'sensors = ["bme280", "sds011"]', "sensor_specs/boxes/street.toml: sensors[1]: unknown sensor 'sds011'"),
    ("box on an unknown board", "sensor_specs/boxes/poe.toml", 'board = "olimex-esp32-poe"', 'board = "olimex-poe"',
     "sensor_specs/boxes/poe.toml: board: unknown board 'olimex-poe'"),
    ("box part without a quantity", "sensor_specs/boxes/school.toml", "qty = 1\nnote = \"holds the SHT31", "note = \"holds the SHT31",
     "sensor_specs/boxes/school.toml: parts[0].qty: missing field"),
]


@pytest.mark.parametrize("what,rel,old,new,expected", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_check_refuses_bad_spec_in_one_line(tree, what, rel, old, new, expected):
    _edit(tree / rel, old, new)
    code, out, err = _check(tree)
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert errors[0].startswith("error: " + expected), err
    assert "Traceback" not in err


def test_strapping_pin_is_a_warning_not_an_error(tree):
    _edit(tree / "board_defs/esp32-devkitc.toml", '"pm.reset" = 27', '"pm.reset" = 12')
    code, out, err = _check(tree)
    assert code == 0, err
    assert "warning: board_defs/esp32-devkitc.toml: pins.pm.reset: GPIO 12 is a strapping pin" in err


def test_build_check_reports_a_stale_file(tree, tmp_path):
    specs = model.load(tree / "sensor_specs", tree / "board_defs")
    files = build.outputs(specs)
    build.write(files, root=tmp_path / "out")
    assert build.stale(files, root=tmp_path / "out") == []
    _edit(tree / "sensor_specs/quantities.toml", "resolution = 0.01", "resolution = 0.1")
    changed = build.outputs(model.load(tree / "sensor_specs", tree / "board_defs"))
    assert "firmware/lib/registry.py" in build.stale(changed, root=tmp_path / "out")


def test_docs_have_a_page_per_sensor_mic_and_board():
    specs = model.load(paths.SENSOR_SPECS, paths.BOARD_DEFS)
    files = build.outputs(specs)
    for stem in specs.sensors:
        assert f"docs/specs/sensors/{stem}.md" in files
    for stem in specs.mics:
        assert f"docs/specs/mics/{stem}.md" in files
    for bid in specs.boards:
        page = files[f"docs/specs/boards/{bid}.md"]
        assert "| `i2c.sda` |" in page
    assert files[next(iter(files))].startswith("# Generated by `openpole spec build`")
