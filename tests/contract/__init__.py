"""Contract tests against servers nobody on this team wrote (tests/peers)."""
