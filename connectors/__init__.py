"""One module per external system, built from shared parts in ``connectors.base``."""
