"""A stateful fake of the DECODE OpenCloud worker-facing API, for tests, demos and local runs."""
