"""Click commands of `dysink-export` for ONNX / TensorRT / bundles (to be written)."""

COMMANDS: list = []
