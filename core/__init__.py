"""What the server and the client side share: types, errors, codec, asset kinds, wire converters.

Modules:
    types       data types and constants (Attr, ChunkRef, TreeRef, ... ROOT_INO, NAME_MAX)
    errors      one class per error reason, no transport
    status      error reason <-> gRPC status code and `google.rpc.Status`
    wire        protobuf messages <-> the types (the one place)
    codec       zstd: the seed's CompressionService, bounded decompression, per-thread contexts
    kinds       asset kinds (blob, tensor, embed, artifact): encoders, ids, URIs
    verbs       the method verbs of a capability token
    fileutil    atomic private-file writes, directory fsync
    malloc_tuning   keep MiB message buffers in glibc's heap (called once per process)
    gc_tuning   freeze the start-up heap, collect cycles less often (called once per process)

`aifs_server` and `aifsfs` each depend on this package and `aifs_proto`, never on each other;
`aifs_cli` (the `aifs` command) is the one place that composes both.
"""
