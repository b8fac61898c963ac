"""modeld's engine layer."""
