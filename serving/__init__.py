"""The gRPC prediction service: digits.v1 and TF Serving's PredictionService over the model repository."""
