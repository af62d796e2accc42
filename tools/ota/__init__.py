"""Over-the-air updates from the command line: bundles (build, inspect, keys) and the fleet (push,
status, cancel against the pole's running agent). docs/ota.md."""
