"""Real nats-server processes with JetStream, clustered on loopback ports, for the city tests
(openpole.city.services, which `openpole sim demo --city` starts too)."""

from openpole.city.services import NatsCluster, nats_server  # noqa: F401
