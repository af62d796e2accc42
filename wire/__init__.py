"""openpole's wire formats, shared by the edge agent, the receiver and the city's loaders.

node_message: a node's message (sensor_specs/node_message.cddl), verified, decoded and validated.
batch: the pole's upstream batches, SenML-CBOR in an envelope (sensor_specs/upstream_batch.cddl).
sign: the pole's signature on a batch (COSE_Mac0).
"""
