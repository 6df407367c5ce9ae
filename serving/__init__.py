"""The prediction service: one data plane (model store, batcher) behind gRPC and HTTP on one event loop.

gRPC serves ``digits.v1.DigitClassifier``, TF Serving's ``PredictionService`` and the Open Inference
Protocol v2 (``inference.GRPCInferenceService``), plus health and reflection; HTTP serves v2 REST (with
the binary tensor data extension), TF Serving REST and the drawing page; Prometheus metrics have their
own port. ``python -m serving.server`` runs it (``serving/server.py``); the layers are listed in
docs/serving.md.
"""
