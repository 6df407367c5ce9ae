"""Generated protobuf/gRPC code of the digit classifier's API (source: protos/, see protos/generate.py)."""
