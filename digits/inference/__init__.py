"""Open Inference Protocol v2 (package ``inference``): generated from protos/digits/inference/grpc_predict_v2.proto by protos/generate.py (do not edit)."""
