"""openpole at city scale: poles publish batches into a NATS JetStream cluster (the agent's nats://
upstream), and loaders write them to PostgreSQL."""
