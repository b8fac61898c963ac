"""modeld: the model supervisor for GPU hosts that serve several LLMs with vLLM."""

__version__ = "0.1.0"
