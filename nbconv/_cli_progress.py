"""Progress bars for the long-running subcommands (demo, bench, lenet).

A bar is drawn with tqdm on stderr, and only where someone can watch it: tqdm installed, the
command's ``--no-progress`` not given, and both stdout and stderr terminals (redirect either to a
file, a pipe or a CI log and the output stays the plain lines it always was). Otherwise `bar`
returns None and the caller prints its usual lines.
"""
import sys


def interactive():
    """True when stdout and stderr are both terminals."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is None or not stream.isatty():
                return False
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            return False
    return True


def bar(total, description="", unit="it", enabled=True):
    """A tqdm bar on stderr (leave=False: it disappears when closed), or None (see the module docstring)."""
    if not enabled or not interactive():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=description, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)


def writer(progress):
    """The function that prints a line without breaking the bar (tqdm.write), or print."""
    if progress is None:
        return lambda line: print(line, flush=True)
    return lambda line: progress.write(line, file=sys.stdout)


def add_argument(parser):
    """The ``--no-progress`` option shared by the subcommands that draw a bar."""
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (it is drawn on stderr, only when stdout and stderr are terminals "
                             "and tqdm is installed)")
