"""modeld's daemon layer."""
