"""argparse `type=` validators shared by the subcommands, so that a bad option value is a usage error
(exit status 2, the usage line and a message naming the value), never a traceback::

    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--test-fraction", type=open_fraction, default=0.2)
    parser.add_argument("--threads", type=thread_count)
"""
import argparse
import math


def _number(text, kind):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text):
    """An integer >= 1."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def nonnegative_int(text):
    """An integer >= 0."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def positive_float(text):
    """A finite number > 0."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value


def open_fraction(text):
    """A number strictly between 0 and 1 (a held-out share that leaves both sides non-empty)."""
    value = _number(text, float)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {value}")
    return value


def thread_count(text):
    """An integer in 1..NUMBA_NUM_THREADS (Numba's thread pool cannot grow past it)."""
    import numba

    value = _number(text, int)
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= value <= limit:
        raise argparse.ArgumentTypeError(f"must be in 1..{limit} (NUMBA_NUM_THREADS), got {value}")
    return value
