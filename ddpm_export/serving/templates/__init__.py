"""Python-backend model files copied verbatim into a Triton repository as ``1/model.py``.

They run inside Triton's Python backend (``triton_python_backend_utils``), never in
ddpm_export itself, and import only NumPy and the ``runtime`` package copied beside them.
"""
