"""Per-service gRPC clients over one retrying channel (see channel.py)."""
