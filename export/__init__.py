"""PyTorch -> ONNX -> TensorRT, the bundle manifest, and validation (installs as dysink_deploy.export)."""
