"""Parsing and authentication of the webhooks crawldex receives (pure: no I/O)."""
