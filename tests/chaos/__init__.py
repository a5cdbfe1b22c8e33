"""Fault tests (issue 16): toxiproxy, broker, registry and consumer faults, invariants."""
