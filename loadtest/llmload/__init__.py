"""The parts of the locust suite that do not need locust: streaming measurement, metrics,
SLOs, load shapes and the Japanese prompt set. Kept free of gevent so unit tests, the report
command and other tools can import them without monkey-patching the interpreter.
"""
