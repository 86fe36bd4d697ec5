"""Closed-loop tasks where success is defined (pure NumPy: imports under the LeRobot venv too)."""
