"""The exception for bad input data or a data configuration that cannot work."""


class DataError(ValueError):
    """Bad data or data configuration. The message is one line saying what is wrong and what to
    do, so command-line entry points print it as is instead of a traceback."""
