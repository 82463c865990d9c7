"""The `govllm` command line (assembled in govllm/cli/main.py)."""
