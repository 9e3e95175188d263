"""Make the top-level modules importable; TensorFlow's settings (runtime.py) before any test."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import runtime  # noqa: E402, F401  (oneDNN on, quiet logs: before TensorFlow loads)
