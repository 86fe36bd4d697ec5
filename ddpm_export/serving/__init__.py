"""Serving: a Triton Inference Server model repository from an engine (``ddpm-export triton``)."""
