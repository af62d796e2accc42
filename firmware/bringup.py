# The node's bring-up: everything done once at boot (the config, the node's fields, its outbox and
# MQTT client, each sensor's driver, the console), in a module app.py loads for it and drops after,
# so this code leaves the heap once the node runs. A sensor that failed is started again from here.
import gc
import os
import sys
import time
from array import array

from app import lazy
from node import VERSION, Node
from outbox import Outbox
from sensors import FAILED, I2S_READ, OK, STATE_NAMES, WARMING, NoiseSensor, Sensor
from transport import Transport

# Registry: sensor name -> (module, class, bus). Adding a sensor is a driver file and a line here.
DRIVERS = {
    "bme280": ("drivers.bme280", "BME280", "i2c"),
    "sht31": ("drivers.sht31", "SHT31", "i2c"),
    "pms5003": ("drivers.pms5003", "PMS5003", "uart"),
    "noise": ("noise", "NoiseMeter", "i2s"),
}

# The modules the node loads now and then, each loaded once at boot and let go.
WARM = ("shell", "diag", "commands", "ranges", "transport_connect", "redact")
BOOT_ID_SPAN = 0x3FF00000  # first boot id: random below 2**30 (a small int on a 32-bit VM), a million boots of room
HEALTHY_MS = 600000  # up this long, or a message delivered: the crash counter (main.py) starts again


def boot(wdt=None):
    """The config, the hardware layer and the Node made from them, its console attached."""
    # The modules the node loads now and then, each loaded once and let go while the heap is
    # empty: the names they intern (kept for good) are laid down at its bottom now, not later
    # between the running node's objects, where they would cut its free space into pieces
    # too small for the next module (at 56k the console's first line had failed so).
    for name in WARM:
        lazy(name)
        gc.collect()
    # The config first, while the heap is empty: its module and the JSON text go before the
    # long-lived modules and objects are laid out.
    cfg = lazy("config").load(unique_id=_unique_id())
    gc.collect()
    from console import PROMPT, LazyConsole

    n = node(cfg, platform(cfg, wdt))
    n.console = LazyConsole(n)
    gc.collect()  # start-up garbage (config text, import buffers) out of the way
    sys.stdout.write(PROMPT)
    return n


def platform(cfg, wdt=None):
    """The hardware layer (hw/): the board's, or the simulated one under the Unix port."""
    if sys.platform == "esp32":
        from hw.esp32 import Hardware
    else:
        from hw.sim import Hardware
    return Hardware(cfg, wdt)


def _unique_id():
    try:
        import machine

        return machine.unique_id()
    except (ImportError, AttributeError):
        return b"\x02\x00\x00\x00\x00\x01"


def node(cfg, hw):
    """The Node for this config and hardware layer, its sensors started."""
    n = Node()
    n.cfg = cfg
    n.hw = hw
    n.lines = []
    n.node_id = cfg["node_id"]
    n.boot = _next_boot()
    n.t0 = time.ticks_ms()
    n.seq = 0
    n.cycles = 0
    n.published = 0  # messages handed to the broker (first sends)
    n.delivered = 0  # messages the pole acknowledged (or the broker, with "ack": "broker")
    n.resent = 0
    n.inflight = 0  # outbox records from the oldest that were sent and await their ack
    n.sent_before = 0  # of those, how many had been sent before (a re-send carries DUP)
    n.ack_wait = time.ticks_ms()
    n.commands = []  # command payloads, run by the loop (never inside a read)
    n.last_publish = None
    n.heap_live = 0  # most heap in use after a collection: what the node really holds (but while connecting)
    n.tick_max_ms = 0  # the longest tick as it passed (ms)
    # The loop's figures (node.py's _T0 ... _KIND0): the longest tick's work in us, a simulated
    # board's bus round trips left out, what it did (commands.KINDS bits), the most heap held during
    # a connect attempt, the longest tick of each kind.
    n.stats = array("I", bytearray(4 * (5 + len(lazy("commands").KINDS))))
    n.did = 0
    n.heap_min_free = gc.mem_free()
    n.short_of_heap = 0  # reports, commands and console lines skipped for want of heap
    n.outbox = Outbox(ram_bytes=cfg["queue_ram_bytes"])
    n.samples = []  # of the message being gathered
    iv = int(cfg["interval_s"] * 1000)
    n.sensors = [_sensor(k, v, iv) for k, v in cfg["sensors"].items() if k in DRIVERS]
    for k in cfg["sensors"]:
        if k not in DRIVERS:
            n.log("config: unknown sensor %r ignored (known: %s)" % (k, ", ".join(DRIVERS)))
    n.noise = None
    key = cfg.get("key")
    n.key = bytes.fromhex(key) if key else None
    n.sign = __import__("cose").sign if key else None  # a node without a key never loads it
    b = cfg["broker"]
    base = "openpole/v1/%s/" % n.node_id
    n.topic, n.status_topic, n.diag_topic = base + "data", base + "status", base + "diag"
    # No word from the pole for this long: send the unacknowledged ones again (a broker that
    # restarted before the agent subscribed again dropped them).
    n.ack_timeout_ms = int(cfg["ack_timeout_s"] * 1000)
    n.mqtt = Transport(n.node_id, b["host"], b.get("port", 1883), user=b.get("user"), password=b.get("password"),
                       timeout_s=b.get("timeout_s", 10), keepalive_s=b.get("keepalive_s", 60),
                       subscribe=(base + "cmd", base + "ack", base + "ota"),
                       backoff_max_ms=int(b.get("backoff_max_s", 60) * 1000), resolve=hw.resolve,
                       tls=_tls() if b.get("tls") else None, will=(n.status_topic, b"offline"))
    n.mqtt.on_message = n._on_message
    n.mqtt.on_puback = None if cfg["ack"] == "pole" else n._freed  # None: the pole's ack frees a message
    n.diag_due = time.ticks_ms()
    n.healthy_due = time.ticks_add(n.diag_due, HEALTHY_MS)
    n.console = None
    n.watch = False  # the console's monitor: a line per reading
    facts = lazy("sensor_facts").SENSORS
    # The noise meter first: its 1.8 KB histogram needs a contiguous block, which a 56 KB heap
    # still has before the other drivers are laid out.
    for s in sorted(n.sensors, key=lambda s: s.name != "noise"):
        gc.collect()  # each driver's module laid out on a heap free of start-up garbage
        sensor(s, hw, facts)
        if s.name == "noise" and s.driver is not None:
            n.noise = s.driver
    n.ota_rejected = 0  # OTA messages refused or dropped (bad tickets, stale or bad chunks)
    n.ota_heap_min = 1 << 30  # the least heap free during an update's transfer
    # An update under way, on trial, or its outcome to report: resumed from flash (otajob.py; not
    # "ota", the name of its folder) once the node runs, its boot garbage gone (node.run).
    n.ota = None
    n.ota_resume = _exists("ota")
    n.log("openpole node %s: firmware %s on %s, boot %d, reset %s, sensors %s, queued %d" % (
        n.node_id, VERSION, n.hw.name, n.boot, n.hw.reset_cause(),
        ", ".join("%s=%s" % (s.name, STATE_NAMES[s.state]) for s in n.sensors), len(n.outbox)))
    return n


def _sensor(name, settings, interval_ms):
    s = Sensor()
    s.name = name
    s.settings = settings
    s.interval_ms = int(settings.get("interval_s", 0) * 1000) or interval_ms
    if duty(s):
        s.duty = True  # (Sensor.duty: False, a field fewer for the others)
    s.driver = None
    s.state = FAILED
    s.errors = 0
    s.last = None
    s.last_error = None
    s.due = time.ticks_ms()
    s.awake_since = None  # PMS5003: when the laser was switched on
    s.pending = False  # a reading asked for and not yet in (PMS5003)
    return s


def duty(s):
    """Does the sensor sleep between readings? A PMS5003's laser lasts about 8,000 h: it sleeps when its
    interval is a minute or more, unless its duty_cycle setting says otherwise."""
    return s.name == "pms5003" and s.settings.get("duty_cycle", s.interval_ms >= 60000)


def sensor(s, hw, facts=None):
    """Make a sensor's driver (Sensor.start); a fault is counted and retried at its next reading.
    facts: sensor_facts.SENSORS, when the caller has it loaded already."""
    module, cls, bus = DRIVERS[s.name]
    spec = (facts or lazy("sensor_facts").SENSORS).get(s.name, {})
    kwargs = dict(spec.get("settings", {}))  # from sensor_specs/: oversampling, filters
    try:
        mod = __import__(module, None, None, [cls])
        if bus == "i2c":
            kwargs["address"] = s.settings.get("address", spec.get("address"))
            s.driver = getattr(mod, cls)(hw.i2c(), **kwargs)
        elif bus == "uart":
            s.driver = getattr(mod, cls)(hw.uart_pm(), set_pin=hw.pin("pm.set"))
        else:
            mics = lazy("mics").MICS  # profiles, needed only here
            d = s.driver = NoiseSensor()
            d.meter = getattr(mod, cls)(mics[s.settings.get("mic", "inmp441")])
            d.i2s = hw.i2s(48000, 32)
            d.buf = bytearray(4 * I2S_READ)
            d.next = None  # ticks when the audio read so far ends, had it been read on time
            d.lost = 0
            d.first = True
        s.state = WARMING if s.name == "pms5003" else OK
        s.awake_since = time.ticks_ms()
    except (OSError, ValueError, KeyError) as e:
        s.fault(e)


def _exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def _tls():
    from brokertls import Wrap

    return Wrap()


def _next_boot(path="boot_count"):
    """This boot's id: one more than the last. A filesystem without one (new, reflashed, another
    board) starts at a random point, so (node, boot, seq) never repeats across a reflash."""
    try:
        with open(path) as f:
            n = int(f.read()) + 1
    except (OSError, ValueError):
        n = int.from_bytes(os.urandom(4), "big") % BOOT_ID_SPAN + 1
    with open(path + ".tmp", "w") as f:
        f.write(str(n))
    os.rename(path + ".tmp", path)  # atomic on LittleFS and POSIX
    return n
