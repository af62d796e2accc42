"""The walking skeleton's data path in a 64 KB heap: the firmware's BME280 driver on the simulated
bus, its message encoder and its MQTT transport publish node messages v1 at QoS 1 to Mosquitto.
(The whole node runtime, with scheduler, outbox, console and all sensors, needs more: bench/node.py.)"""


from helpers import Collector

from openpole.wire import node_message

SKELETON = """
import time, gc
import cbor
import message
from drivers.bme280 import BME280
from hw.sim import _World, SimI2C
from transport import Transport
world = _World(%(world)r, "skel-1")
bme = BME280(SimI2C(world))
mqtt = Transport("skel-1", "127.0.0.1", %(port)d, timeout_s=2)
t0 = time.ticks_ms()
while not mqtt.ensure() and time.ticks_diff(time.ticks_ms(), t0) < 3000:
    time.sleep_ms(5)
status = cbor.dumps({"bme280": [0, 0]})
for seq in range(5):
    values = message.encode_values(bme.read())
    assert mqtt.publish("openpole/v1/skel-1/data", message.encode("skel-1", 1, seq, [(0, values)], status))
    gc.collect()
while mqtt.unacked and time.ticks_diff(time.ticks_ms(), t0) < 5000:
    mqtt.poll()
    time.sleep_ms(5)
assert not mqtt.unacked, "every PUBACK arrived"
mqtt.close()
print("published 5, heap in use", gc.mem_alloc())
"""


def test_driver_message_and_transport_publish_in_a_64k_heap(mp, mosquitto, world):
    sub = Collector(mosquitto, "openpole/v1/skel-1/data")
    out = mp.run(SKELETON % {"world": f"{world.host}:{world.port}", "port": mosquitto.port}, heap="64k")
    msgs = sub.wait_for(lambda m: len(m) >= 5)
    sub.close()
    assert "published 5" in out
    got = [node_message.decode(p) for _, p, _ in msgs]
    assert [m.seq for m in got] == [0, 1, 2, 3, 4]
    assert all({r.name for r in m.readings} == {"temperature", "humidity", "pressure"} for m in got)
