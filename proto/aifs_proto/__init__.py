"""Generated gRPC code for aifs.v1 (scripts/gen_proto.sh). Do not edit."""
