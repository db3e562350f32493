"""Serving DySink streams on NVIDIA Triton Inference Server: a generated model repository (a decoupled
Python-backend model over a bundle), `dysink-serve` to start the server, `dysink-client` to stream."""
