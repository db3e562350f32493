"""Backends: one folder-level module per framework, all behind `Backend`."""

BACKENDS = ("torch", "onnxruntime", "tensorrt")
