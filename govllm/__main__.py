"""`python -m govllm ...`: the same command line as the `govllm` script.

The benchmark starts other checkouts' stacks this way (`govllm@PYTHONPATH=...`): the installed
console script names this checkout's entry point, which another version may not have.
"""

from govllm.cli.main import main

main()
