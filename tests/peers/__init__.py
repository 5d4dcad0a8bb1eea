"""Third-party servers the contract tests run against (../shared/reference/test-peers.md)."""
