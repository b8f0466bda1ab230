"""Sphinx configuration: the user guide (hand-written pages) and the API reference, generated from the
docstrings of every name each public module exports (``__all__``), so that a new public function
appears without editing the docs.

Build: ``python -m pip install -e ".[docs]" && python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""
import importlib
import inspect
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")  # importing nbconv's CUDA helpers needs no GPU

import nbconv  # noqa: E402

project = "nbconv"
author = "the nbconv developers"
copyright = "2026, the nbconv developers"
release = version = nbconv.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx", "sphinx.ext.viewcode", "numpydoc"]
exclude_patterns = ["_build"]
templates_path = []
default_role = "code"          # `x` in a docstring is inline code, as in the README
autodoc_member_order = "bysource"
autodoc_default_options = {}   # members where a directive asks (classes); a default "members": False wins there
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# Overloaded functions (concatenate, stack) get their signatures from Sphinx, not from _hints_as_written below:
# these keep their aliases there.
autodoc_type_aliases = {"Values": "nbconv.ops_core.Values", "NDArray": "numpy.typing.NDArray"}
add_module_names = True
nitpicky = False
suppress_warnings = []
intersphinx_mapping = {}       # no network when building: no cross-project links
try:
    import furo  # noqa: F401
    html_theme = "furo"
except ImportError:
    html_theme = "alabaster"
html_title = f"nbconv {release}"
html_static_path = []

# ---------------------------------------------------------------- the API reference, from __all__

# Public modules: (module, title, description, [(section title, predicate on a name)])
_CONV = [("Convolutions", lambda n: n.startswith("conv") and "backward" not in n and "transpose" not in n),
         ("Gradients of convolutions", lambda n: n.endswith("_backward") or n.endswith("Grads")),
         ("Transposed convolutions", lambda n: n.startswith("conv_transpose")),
         ("The tape", lambda n: n in {"Tensor", "Function", "no_grad", "enable_grad", "grad", "gradcheck",
                                      "gradgradcheck", "GradcheckError"}),
         ("Devices", lambda n: "cuda" in n)]
MODULES = [
    ("nbconv", "nbconv", "Convolutions and operations on NumPy arrays, CUDA device arrays and tape Tensors.",
     _CONV + [("Operations", lambda n: True)]),
    ("nbconv.optim", "nbconv.optim", "Optimizers for tape Tensors.", [("Optimizers", lambda n: True)]),
    ("nbconv.torch", "nbconv.torch", "PyTorch adapter: drop-ins for ``torch.nn.functional`` and ``torch.nn`` "
     "(needs PyTorch; ``import nbconv`` never imports torch).",
     [("Functions", lambda n: n[0].islower()), ("Modules", lambda n: True)]),
    ("nbconv.dask", "nbconv.dask", "Convolutions on Dask arrays (needs the ``dask`` extra).",
     [("Functions", lambda n: True)]),
]


def _directive(module, name):
    obj = getattr(module, name)
    if inspect.ismodule(obj):   # a public submodule (nbconv.optim) has a page of its own
        return f"See :mod:`{obj.__name__}`.\n"
    if isinstance(obj, type):
        if issubclass(obj, BaseException):
            return f".. autoexception:: {module.__name__}.{name}\n"
        if issubclass(obj, tuple) and hasattr(obj, "_fields"):   # named tuples: the fields are the docs
            return f".. autoclass:: {module.__name__}.{name}\n"
        return f".. autoclass:: {module.__name__}.{name}\n   :members:\n"
    return f".. autofunction:: {module.__name__}.{name}\n"


def _write_api_pages(app):
    """docs/api/<module>.rst for each public module that imports here (the others get a short note)."""
    out = os.path.join(HERE, "api")
    os.makedirs(out, exist_ok=True)
    pages = []
    seen = {}  # id(object) -> the name it is documented under (aliases and re-exports are documented once)
    for name, title, description, sections in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            if name in ("nbconv.optim", "nbconv.dask") and error.name == name:
                continue   # not part of this version of nbconv
            text = f"{title}\n{'=' * len(title)}\n\n{description}\n\n.. note::\n\n   Not documented in this " \
                   f"build: importing ``{name}`` failed ({error}).\n"
        else:
            names = list(getattr(module, "__all__", []))
            text = f"{title}\n{'=' * len(title)}\n\n.. module:: {name}\n   :no-index:\n\n{description}\n"
            left = names
            for section, keep in sections:
                chosen = [n for n in left if keep(n)]
                left = [n for n in left if n not in chosen]
                if not chosen:
                    continue
                text += f"\n{section}\n{'-' * len(section)}\n\n"
                # aliases (Conv2dGrads = ConvGrads) are documented once, under their first name
                for n in chosen:
                    obj = getattr(module, n)
                    if id(obj) in seen and isinstance(obj, type):
                        text += f".. class:: {name}.{n}\n   :no-index:\n\n   The same class as " \
                                f":class:`{seen[id(obj)]}`.\n\n"
                        continue
                    seen[id(obj)] = f"{name}.{n}"
                    text += _directive(module, n) + "\n"
        page = name.replace(".", "_")
        pages.append(page)
        path = os.path.join(out, page + ".rst")
        old = open(path).read() if os.path.exists(path) else None
        if text != old:  # rewrite only on change, so incremental builds stay incremental
            with open(path, "w") as f:
                f.write(text)
    index = "API reference\n=============\n\nGenerated from the docstrings of each module's public names " \
            "(``__all__``).\n\n.. toctree::\n   :maxdepth: 2\n\n" + "".join(f"   {p}\n" for p in pages)
    path = os.path.join(out, "index.rst")
    if not os.path.exists(path) or open(path).read() != index:
        with open(path, "w") as f:
            f.write(index)


# ---------------------------------------------------------------- plain-text docstrings

_LITERAL = re.compile(r"(``.*?``)")


def _escape_plain_text(app, what, name, obj, options, lines):
    """Docstrings are written to read well as plain text (``help()``), where |x| is an absolute
    value, not a reStructuredText substitution: escape such bars outside literals, doctest lines
    and tables."""
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        if "|" not in line or stripped.startswith(("|", "+", ">>>", "...")):
            continue
        parts = _LITERAL.split(line)
        lines[i] = "".join(p if p.startswith("``") else p.replace("|", "\\|") for p in parts)


# ---------------------------------------------------------------- type hints as written

class _Written:
    """A type hint as the source writes it (a string, under ``from __future__ import annotations``),
    formatted without quotes."""

    def __init__(self, text):
        self.text = text

    def __repr__(self):
        return self.text


def _written(annotation):
    return _Written(annotation) if isinstance(annotation, str) else annotation


def _is_static(name):
    """Whether the method called `name` (module.Class.method) is a staticmethod."""
    parts = name.split(".")
    for i in range(len(parts) - 2, 0, -1):
        owner = sys.modules.get(".".join(parts[:i]))
        if owner is not None:
            for part in parts[i:-1]:
                owner = getattr(owner, part)
            return isinstance(inspect.getattr_static(owner, parts[-1], None), staticmethod)
    return False


def _hints_as_written(app, what, name, obj, options, signature, return_annotation):
    """Signatures show the type hints as the code writes them (``x: Tensor | Array``). Sphinx would
    evaluate them and print the expansions of the aliases (ArrayLike alone is a union of eight types),
    and its own alias option (autodoc_type_aliases) garbles aliases inside unions."""
    if signature is None or what not in ("function", "method", "class"):
        return None
    if getattr(obj, "_is_protocol", False):   # a typing.Protocol (DeviceArray) is never instantiated
        return "", None
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):   # builtins, exceptions: keep what Sphinx found
        return None
    parameters = list(sig.parameters.values())
    if what == "method" and parameters and not inspect.ismethod(obj) and not _is_static(name):
        parameters = parameters[1:]   # self (also when a module-level function is installed as a method)
    sig = sig.replace(parameters=[p.replace(annotation=_written(p.annotation)) for p in parameters],
                      return_annotation=inspect.Signature.empty)
    returns = sig.return_annotation if what == "class" else inspect.signature(obj).return_annotation
    return str(sig), (None if returns is inspect.Signature.empty else inspect.formatannotation(_written(returns)))


def setup(app):
    app.connect("builder-inited", _write_api_pages)
    app.connect("autodoc-process-docstring", _escape_plain_text)
    app.connect("autodoc-process-signature", _hints_as_written)
