"""openpole host tools: specs, simulation, receiver and the `openpole` command."""

__version__ = "0.1.0"
