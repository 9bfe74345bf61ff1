"""The AIFS server: storage core (codec, envelope, KMS, chunk store, metadata) and gRPC services."""
