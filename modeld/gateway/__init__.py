"""modeld-gateway: an OpenAI-compatible HTTP front door to modeld.

A separate process and an ordinary client of the daemon's socket: each inference request
takes a lease on the model its body names (loading or switching as needed), is
forwarded to that model's backend and streamed back, and releases the lease when the
answer ends or the client hangs up. Only an allowlist of inference paths is forwarded.
It also serves the seed router's `/v1/models/status` and `/v1/models/switch`, the
OpenAI model list, modeld's events as server-sent events, and the dashboard.
"""
