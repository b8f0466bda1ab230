"""Command line: `python -m nbconv {bench,demo,lenet,compile,info,cache,plot} [options]` (see --help of each)."""
import argparse
import importlib
import sys

from . import __version__

# subcommand -> (module providing add_arguments(parser) and run(args), one-line help)
COMMANDS = {
    "bench": ("nbconv._bench", "benchmark table of named layers from real networks (1-D/2-D/3-D, transposed, "
                               "float64), forward and backward: nbconv vs PyTorch and NumPy im2col, GFLOP/s "
                               "beside the matmul roof"),
    "demo": ("nbconv._demo", "train a small CNN with nothing but nbconv and NumPy"),
    "lenet": ("nbconv._lenet", "LeNet on MNIST: torch.nn.Conv2d vs nbconv.torch.Conv2d (needs PyTorch)"),
    "compile": ("nbconv._cli_compile", "compile the CPU kernels into Numba's on-disk cache ahead of time"),
    "info": ("nbconv._cli_info", "versions, CPU, threading layer, kernel cache and CUDA availability"),
    "cache": ("nbconv._cli_cache", "where the kernel cache lives and its size; --clear empties it"),
    "plot": ("nbconv._cli_plot", "chart of `bench --json` results or of a training history (needs matplotlib)"),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m nbconv", description=__doc__)
    parser.add_argument("--version", action="version", version=f"nbconv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {name: sub.add_parser(name, help=help_text, description=help_text)
               for name, (_, help_text) in COMMANDS.items()}
    # Only the chosen subcommand's module is imported (one may need an optional dependency).
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = None
    if chosen in COMMANDS:
        module = importlib.import_module(COMMANDS[chosen][0])
        module.add_arguments(parsers[chosen])
    args = parser.parse_args(argv)
    return module.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
