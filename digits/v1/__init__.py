"""digits.v1: generated from protos/digits/v1/digits.proto by protos/generate.py (do not edit)."""
