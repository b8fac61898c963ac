"""modeld's core layer."""
