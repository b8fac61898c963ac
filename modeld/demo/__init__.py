"""modeld's demo layer."""
