"""Runtimes start, stop and inspect model backends: Docker containers or child processes."""

from modeld.adapters.runtime.base import BackendState, BackendStatus, Runtime

__all__ = ["BackendState", "BackendStatus", "Runtime"]
