"""The engine version carried by every output (see docs/outcomes-method.md)."""

ENGINE_VERSION = "1.0.0"
