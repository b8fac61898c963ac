"""modeld's cli layer."""
