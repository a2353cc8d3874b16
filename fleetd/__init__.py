"""fleet-py's daemon: agent, engine, registry and API of a fleet cluster."""

__version__ = "0.1.0"
