"""Open Inference Protocol v2 (protobuf package ``inference``, KServe's grpc_predict_v2.proto).

Generated from protos/digits/inference/grpc_predict_v2.proto by protos/generate.py (do not edit).
"""
