"""modeld's adapters layer."""
