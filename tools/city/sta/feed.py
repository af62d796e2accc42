"""`openpole city feed`: each committed reading to MQTT as the SensorThings API renders it.

Topics (OGC 18-088 §14.2.1): v1.1/Observations, v1.1/Datastreams(ID)/Observations and
v1.1/Things(ID)/Datastreams/Observations; QoS 1, never retained. The broker lets anonymous clients
read v1.1/# and only this publisher write it (docs/sensorthings.md has the Mosquitto config).
"""

import asyncio
import logging
import time

from .live import Feed, topics
from .mapping import build
from .request import Api

log = logging.getLogger("openpole.city.feed")


class Publisher:
    def __init__(self, dsn, host, port, public_url, user=None, password=None, interval_s=0.2):
        self.dsn, self.host, self.port = dsn, host, port
        self.api = Api(build(public_url.rstrip("/") + "/specs/"), public_url.rstrip("/") + "/v1.1")
        self.user, self.password = user, password
        self.interval_s = interval_s
        self.sent = 0
        self.client = None

    def connect_mqtt(self):
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"openpole-feed-{int(time.time() * 1000)}")
        if self.user:
            c.username_pw_set(self.user, self.password)
        c.max_queued_messages_set(100_000)
        c.connect(self.host, self.port, keepalive=30)
        c.loop_start()
        self.client = c

    async def run(self, stop=None, ready=None):
        import json

        import psycopg
        from psycopg.rows import dict_row

        self.connect_mqtt()
        feed = Feed(self.api)
        conn = None
        try:
            while stop is None or not stop.is_set():
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, row_factory=dict_row)
                        await conn.execute("SET TIME ZONE 'UTC'")
                        await conn.execute("SET jit = off")
                        if feed.mark is None:
                            await feed.start(conn)
                            if ready:
                                ready.set()
                    new = await feed.poll(conn)
                except psycopg.OperationalError as e:
                    log.warning("feed: the database: %s; trying again", " ".join(str(e).split())[:200])
                    conn = None
                    await asyncio.sleep(2)
                    continue
                for obs, ds, thing in new:
                    payload = json.dumps(obs, ensure_ascii=False, separators=(",", ":"))
                    for t in topics(obs, ds, thing):
                        self.client.publish(t, payload, qos=1, retain=False)
                    self.sent += 1
                if not new:
                    await asyncio.sleep(self.interval_s)
        finally:
            if conn is not None:
                await conn.close()
            self.client.loop_stop()
            self.client.disconnect()
