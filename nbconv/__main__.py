"""Command line: `python -m nbconv {bench,demo,lenet} [options]` (see --help of each)."""
import argparse
import importlib

# subcommand -> (module providing add_arguments(parser) and run(args), one-line help)
COMMANDS = {
    "bench": ("nbconv._bench", "benchmark table: nbconv vs PyTorch and NumPy im2col (forward and backward)"),
    "demo": ("nbconv._demo", "train a small CNN with nothing but nbconv and NumPy"),
    "lenet": ("nbconv._lenet", "LeNet on MNIST: torch.nn.Conv2d vs nbconv.torch.Conv2d (needs PyTorch)"),
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nbconv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        modules[name] = importlib.import_module(module_name)
        modules[name].add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    return modules[args.command].run(args)


if __name__ == "__main__":
    raise SystemExit(main())
