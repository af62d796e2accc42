"""Field tools: what a technician runs against a node on a serial port."""
