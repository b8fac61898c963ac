"""Support for modeld's tests and benchmarks (and for anyone testing against modeld):
a fake runtime whose backends speak vLLM's HTTP protocol, the fake-vLLM Docker image
built with `docker import`, and ways to wait on other processes. Nothing in the daemon
imports it."""
