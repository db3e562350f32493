"""dysink-deploy: export and stream DySink long-video generation.

This top-level package stays import-light (no torch, no onnx) because
`dysink_deploy.runtime` lives under it and must run where only numpy and a
backend library are installed.
"""

__version__ = "0.1.0"
