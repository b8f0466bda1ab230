"""The benchmark suite: named convolution shapes taken from real networks, the one definition that
``python -m nbconv bench`` (nbconv/_bench.py) and the asv suite (benchmarks/) both read.

A `Shape` is one convolution layer: batch size, input spatial sizes (1-D, 2-D or 3-D), channels,
per-dimension kernel, stride, padding and dilation, groups, whether it is a transposed convolution
(with its output_padding) and the dtype. Layouts are nbconv's: x (N, *sizes, C_in); the weight is
(*kernel, C_in // groups, C_out) for a convolution and (*kernel, C_out // groups, C_in) for a
transposed one. Each record is named after its source network and layer (``resnet50.conv2_3x3``).

APPEND ONLY: the asv benchmarks take the names as their parameter, and asv keys its stored results by
parameter value, so a record must never change under an existing name (that would silently splice
two different measurements into one history). Add a record with a new name instead, and retire an
old one only by deleting it (its history then ends).

SUITE is what ``python -m nbconv bench`` runs by default; ISSUE3 holds the earlier default (the
anonymous 2-D shapes of issue 3 and the 3-D shapes of issue 10), kept because the README's earlier
tables and the asv history of the per-dimension classes were measured on them.

Besides the records: `parse` (the ``--shape`` text forms), `make_data` (seeded arrays),
`nbconv_calls` and `torch_calls` (the forward and the backward of one shape as zero-argument
callables, with the same arguments for both libraries).
"""
import math
from dataclasses import asdict, dataclass, replace

import numpy as np

SEED = 20261122
DTYPES = ("float32", "float64")


def _per_dim(value, dims, what):
    """An int, or a tuple/list of one int per spatial dimension, as a tuple of `dims` ints."""
    if isinstance(value, (tuple, list)):
        value = tuple(value)
        if len(value) != dims:
            raise ValueError(f"{what} takes 1 or {dims} values for a {dims}-D shape, got {len(value)}")
    else:
        value = (value,) * dims
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{what} must be integers, got {value!r}")
    return tuple(int(v) for v in value)


@dataclass(frozen=True)
class Shape:
    """One convolution layer of the suite (see the module docstring). Ints given for kernel, stride,
    padding, dilation or output_padding apply to every spatial dimension; the fields always hold
    tuples. Construction checks the record (ValueError with the reason)."""
    name: str
    n: int
    sizes: tuple
    c_in: int
    c_out: int
    kernel: object = 3
    stride: object = 1
    padding: object = 0
    dilation: object = 1
    groups: int = 1
    transposed: bool = False
    output_padding: object = 0
    dtype: str = "float32"
    source: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"a shape needs a name without spaces, got {self.name!r}")
        sizes = tuple(self.sizes) if isinstance(self.sizes, (tuple, list)) else (self.sizes,)
        dims = len(sizes)
        if dims not in (1, 2, 3):
            raise ValueError(f"{self.name}: 1, 2 or 3 spatial sizes, got {sizes!r}")
        fields = dict(sizes=_per_dim(sizes, dims, "sizes"))
        for field in ("kernel", "stride", "padding", "dilation", "output_padding"):
            fields[field] = _per_dim(getattr(self, field), dims, f"{self.name}: {field}")
        for field, value in fields.items():
            object.__setattr__(self, field, value)
        for field in ("n", "c_in", "c_out", "groups"):
            value = getattr(self, field)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"{self.name}: {field} must be an integer, got {value!r}")
            object.__setattr__(self, field, int(value))
        object.__setattr__(self, "transposed", bool(self.transposed))
        self._check()

    def _check(self):
        name = self.name
        if min(self.n, *self.sizes, self.c_in, self.c_out, *self.kernel, *self.stride, *self.dilation,
               self.groups) < 1:
            raise ValueError(f"{name}: sizes, channels, kernel, stride, dilation and groups must be >= 1")
        if min(self.padding) < 0 or min(self.output_padding) < 0:
            raise ValueError(f"{name}: padding and output_padding must be >= 0")
        if self.c_in % self.groups or self.c_out % self.groups:
            raise ValueError(f"{name}: groups={self.groups} must divide C_in={self.c_in} and C_out={self.c_out}")
        if self.dtype not in DTYPES:
            raise ValueError(f"{name}: dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not self.transposed:
            if any(self.output_padding):
                raise ValueError(f"{name}: output_padding is for transposed convolutions only")
            if min(self.output_sizes) < 1:
                raise ValueError(f"{name}: the dilated kernel {'x'.join(map(str, self.span))} is larger than the "
                                 f"padded input {'x'.join(str(s + 2 * p) for s, p in zip(self.sizes, self.padding))}")
        else:
            # the backward composes convolutions whose output is exactly x's size (see nbconv_calls)
            if any(op >= s for op, s in zip(self.output_padding, self.stride)):
                raise ValueError(f"{name}: output_padding must be smaller than the stride, got "
                                 f"{self.output_padding} with stride {self.stride}")
            if min(self.output_sizes) < 1:
                raise ValueError(f"{name}: padding {self.padding} leaves no output")

    # ------------------------------------------------------------ derived sizes

    @property
    def dims(self):
        return len(self.sizes)

    @property
    def span(self):
        """The dilated kernel's extent per dimension: dilation * (kernel - 1) + 1."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))

    @property
    def output_sizes(self):
        if self.transposed:
            return tuple((s - 1) * st - 2 * p + e + op for s, st, p, e, op in
                         zip(self.sizes, self.stride, self.padding, self.span, self.output_padding))
        return tuple((s + 2 * p - e) // st + 1 for s, st, p, e in zip(self.sizes, self.stride, self.padding, self.span))

    @property
    def x_shape(self):
        return (self.n, *self.sizes, self.c_in)

    @property
    def y_shape(self):
        return (self.n, *self.output_sizes, self.c_out)

    @property
    def w_shape(self):
        """nbconv's weight layout: (*kernel, C_in // groups, C_out), transposed (*kernel, C_out // groups, C_in)."""
        if self.transposed:
            return (*self.kernel, self.c_out // self.groups, self.c_in)
        return (*self.kernel, self.c_in // self.groups, self.c_out)

    @property
    def taps(self):
        return math.prod(self.kernel)

    @property
    def flops(self):
        """2 x the multiply-adds of one forward (the backward w.r.t. input and weight costs twice this):
        per output element of a convolution, per input element of a transposed one."""
        if self.transposed:
            return 2.0 * self.n * math.prod(self.sizes) * self.c_in * self.taps * (self.c_out // self.groups)
        return 2.0 * self.n * math.prod(self.output_sizes) * self.c_out * self.taps * (self.c_in // self.groups)

    @property
    def dense(self):
        return self.groups == 1

    @property
    def depthwise(self):
        return self.groups > 1 and self.groups == self.c_in

    @property
    def function(self):
        """The name of nbconv's (and torch.nn.functional's) function: conv2d, conv_transpose1d, ..."""
        return f"conv_transpose{self.dims}d" if self.transposed else f"conv{self.dims}d"

    def options(self):
        """The keyword arguments of nbconv's function and of torch.nn.functional's alike."""
        opts = dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)
        if self.transposed:
            opts["output_padding"] = self.output_padding
        return opts

    # ------------------------------------------------------------ text forms

    @property
    def label(self):
        """A compact description: '8x56x56x64->64 k3 s2 p1 d2 g32 T op1 f64' (only what differs from the
        defaults: stride 1, padding 0, dilation 1, groups 1, convolution, float32)."""
        def v(values):
            return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))
        parts = [f"{'x'.join(map(str, self.x_shape))}->{self.c_out}", f"k{v(self.kernel)}"]
        parts += [f"{key}{v(val)}" for key, val, default in (("s", self.stride, 1), ("p", self.padding, 0),
                                                             ("d", self.dilation, 1)) if set(val) != {default}]
        if self.groups != 1:
            parts.append(f"g{self.groups}")
        if self.transposed:
            parts.append("T" + (f" op{v(self.output_padding)}" if any(self.output_padding) else ""))
        if self.dtype != "float32":
            parts.append("f" + self.dtype[-2:])
        return " ".join(parts)

    def spec(self):
        """The keyword form `parse` reads back: 'name=...,n=8,size=56x56,cin=64,cout=64,k=3,...' (without the
        name when it holds ',' or '=', as the name of a shape given in the positional form does)."""
        def v(values):
            return "x".join(map(str, values))
        named = f"name={self.name}," if not set(self.name) & set(",=") else ""
        text = (f"{named}n={self.n},size={v(self.sizes)},cin={self.c_in},cout={self.c_out},"
                f"k={v(self.kernel)},stride={v(self.stride)},pad={v(self.padding)},dilation={v(self.dilation)},"
                f"groups={self.groups}")
        if self.transposed:
            text += f",transposed,output_padding={v(self.output_padding)}"
        return text + f",dtype={self.dtype}"

    def to_dict(self):
        """The record as JSON-ready values (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def legacy_tuple(self):
        """(N, *sizes, C_in, C_out, K, stride, pad, groups), stride and pad an int when alike in every
        dimension: the form of the shapes of issues 3 and 10 (benchmarks/common.py's asv parameters)."""
        if self.transposed or set(self.dilation) != {1} or len(set(self.kernel)) != 1 or self.dtype != "float32":
            raise ValueError(f"{self.name} has no legacy tuple form")
        def v(values):
            return values[0] if len(set(values)) == 1 else values
        return (self.n, *self.sizes, self.c_in, self.c_out, self.kernel[0], v(self.stride), v(self.padding),
                self.groups)

    def with_dtype(self, dtype):
        return self if dtype is None or dtype == self.dtype else replace(self, dtype=dtype)

    def tiny(self):
        """A scaled-down copy for tests and smoke runs: N 2, at most 3 groups of at most 3 channels
        (depthwise stays depthwise), spatial sizes just large enough for about 3 outputs per
        dimension; kernel, stride, padding, dilation, transposition and dtype as they are."""
        groups = min(self.groups, 3)
        per_in, per_out = min(self.c_in // self.groups, 3), min(self.c_out // self.groups, 3)
        sizes = []
        for size, st, p, e in zip(self.sizes, self.stride, self.padding, self.span):
            if self.transposed:
                sizes.append(min(size, 3))
            else:  # the smallest size with 3 outputs (or with 1 when padding alone reaches past the kernel)
                sizes.append(min(size, max(1, 2 * st + e - 2 * p)))
        return replace(self, n=min(self.n, 2), sizes=tuple(sizes), c_in=groups * per_in, c_out=groups * per_out,
                       groups=groups)


# ---------------------------------------------------------------- the suite

def _s(name, n, sizes, c_in, c_out, kernel, source, **options):
    return Shape(name, n, sizes, c_in, c_out, kernel, source=source, **options)


_RESNET = "ResNet-50 (He et al. 2016)"
_MOBILENET = "MobileNetV2 (Sandler et al. 2018)"
_EFFICIENTNET = "EfficientNet-B0 (Tan and Le 2019)"
_LENET = "LeNet-5 (LeCun et al. 1998)"

# The 3-D shapes of issue 10 (their names are new, the layers are the ones measured since).
SHAPES_3D = [
    _s("unet3d.encoder_3x3x3", 2, (16, 32, 32), 32, 32, 3, "3-D U-Net encoder layer (Cicek et al. 2016)",
       padding=1),
    _s("c3d.video_3x3x3_ts2", 4, (16, 28, 28), 64, 64, 3,
       "video layer, C3D-style 3x3x3 with a temporal stride (Tran et al. 2015)", stride=(2, 1, 1), padding=1),
    _s("x3d.dw3x3x3", 4, (16, 28, 28), 64, 64, 3, "depthwise 3x3x3 (X3D's channelwise convolution, "
       "Feichtenhofer 2020)", padding=1, groups=64),
    _s("i3d.proj_1x1x1", 4, (8, 28, 28), 128, 128, 1, "1x1x1 bottleneck projection (I3D / X3D)"),
]

SUITE = [
    _s("resnet50.stem", 4, (224, 224), 3, 64, 7, f"{_RESNET}: conv1, 7x7/2 on the RGB image", stride=2, padding=3),
    _s("resnet50.conv2_3x3", 8, (56, 56), 64, 64, 3, f"{_RESNET}: conv2_x bottleneck 3x3", padding=1),
    _s("resnet50.conv3_3x3_s2", 8, (56, 56), 128, 128, 3, f"{_RESNET}: conv3_1 bottleneck 3x3/2 (v1.5 stride)",
       stride=2, padding=1),
    _s("resnet50.conv4_1x1_reduce", 8, (14, 14), 1024, 256, 1, f"{_RESNET}: conv4_x bottleneck 1x1 reduce"),
    _s("resnet50.conv2_1x1_expand", 8, (56, 56), 64, 256, 1, f"{_RESNET}: conv2_x bottleneck 1x1 expand"),
    _s("resnext50_32x4d.conv2_grouped", 4, (56, 56), 128, 128, 3,
       "ResNeXt-50 32x4d (Xie et al. 2017): conv2_x grouped 3x3, 32 groups of 4 channels", padding=1, groups=32),
    _s("mobilenetv2.dw3x3", 8, (56, 56), 144, 144, 3, f"{_MOBILENET}: block 3 depthwise 3x3", padding=1, groups=144),
    _s("mobilenetv2.dw3x3_s2", 4, (112, 112), 96, 96, 3, f"{_MOBILENET}: block 2 depthwise 3x3/2", stride=2,
       padding=1, groups=96),
    _s("efficientnet_b0.dw5x5", 8, (14, 14), 672, 672, 5, f"{_EFFICIENTNET}: stage 6 MBConv6 depthwise 5x5",
       padding=2, groups=672),
    _s("efficientnet_b0.dw5x5_s2", 8, (28, 28), 240, 240, 5, f"{_EFFICIENTNET}: stage 4 MBConv6 depthwise 5x5/2",
       stride=2, padding=2, groups=240),
    _s("mobilenetv2.expand_1x1", 8, (28, 28), 32, 192, 1, f"{_MOBILENET}: block 4 expansion 1x1 (t=6)"),
    _s("mobilenetv2.project_1x1", 8, (28, 28), 192, 32, 1, f"{_MOBILENET}: block 4 projection 1x1"),
    _s("lenet5.conv1", 64, (28, 28), 1, 6, 5, f"{_LENET}: C1 on padded MNIST (C_in = 1)", padding=2),
    _s("lenet5.conv2", 64, (14, 14), 6, 16, 5, f"{_LENET}: C3 (all-to-all)"),
    _s("deeplabv3.atrous_3x3", 2, (28, 28), 256, 256, 3, "DeepLabv3 (Chen et al. 2017): ASPP atrous 3x3, rate 2",
       padding=2, dilation=2),
    _s("wavenet.dilated_1d", 4, (16384,), 64, 64, 3, "WaveNet (van den Oord et al. 2016): dilated causal-style "
       "1-D layer, dilation 4 (symmetric padding here)", padding=4, dilation=4),
    _s("dcgan.deconv", 16, (16, 16), 128, 64, 4, "DCGAN (Radford et al. 2016): generator 4x4/2 transposed "
       "convolution, 16x16 -> 32x32", stride=2, padding=1, transposed=True),
    _s("unet.decoder_up", 4, (32, 32), 128, 64, 2, "U-Net (Ronneberger et al. 2015): decoder 2x2/2 up-convolution",
       stride=2, transposed=True),
    *SHAPES_3D,
]
SUITE += [replace(s, name=f"{s.name}.f64", dtype="float64", source=f"{s.source}; float64")
          for s in SUITE if s.name in ("resnet50.conv2_3x3", "mobilenetv2.dw3x3")]

# The 2-D shapes of issue 3 (anonymous then: named by their position) and the 3-D shapes of issue 10.
ISSUE3 = [
    _s("issue3.0", 10, (32, 32), 8, 16, 3, "issue 3, shape 0"),
    _s("issue3.1", 64, (28, 28), 1, 32, 3, "issue 3, shape 1 (C_in = 1)"),
    _s("issue3.2", 64, (26, 26), 32, 64, 3, "issue 3, shape 2"),
    _s("issue3.3", 8, (56, 56), 64, 64, 3, "issue 3, shape 3", padding=1),
    _s("issue3.4", 8, (28, 28), 128, 128, 3, "issue 3, shape 4", stride=2, padding=1),
    _s("issue3.5", 32, (14, 14), 256, 256, 1, "issue 3, shape 5"),
    _s("issue3.6", 8, (56, 56), 64, 64, 3, "issue 3, shape 6 (depthwise)", padding=1, groups=64),
    *SHAPES_3D,
]

SUITES = {"named": SUITE, "issue3": ISSUE3,
          "all": SUITE + [s for s in ISSUE3 if s.name not in {t.name for t in SUITE}]}
BY_NAME = {s.name: s for s in SUITES["all"]}


def by_name(name):
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no suite shape is named {name!r}") from None


# ---------------------------------------------------------------- the --shape text forms

POSITIONAL = {1: "N,L,C_in,C_out,K,stride,pad,groups", 2: "N,H,W,C_in,C_out,K,stride,pad,groups",
              3: "N,D,H,W,C_in,C_out,K,stride,pad,groups"}
KEYS = {"name": "name", "n": "n", "size": "sizes", "sizes": "sizes", "cin": "c_in", "c_in": "c_in",
        "cout": "c_out", "c_out": "c_out", "k": "kernel", "kernel": "kernel", "stride": "stride", "s": "stride",
        "pad": "padding", "padding": "padding", "p": "padding", "dilation": "dilation", "d": "dilation",
        "groups": "groups", "g": "groups", "output_padding": "output_padding", "op": "output_padding",
        "transposed": "transposed", "dtype": "dtype"}
REQUIRED = ("n", "sizes", "c_in", "c_out", "kernel")


def _ints(text, what):
    """'3' -> 3, '2x1x1' -> (2, 1, 1)."""
    try:
        values = tuple(int(v) for v in text.split("x"))
    except ValueError:
        raise ValueError(f"{what}: expected an integer or integers joined by 'x' (like 2x1x1), got {text!r}") from None
    return values[0] if len(values) == 1 else values


def parse(text):
    """A `Shape` from the ``--shape`` text, in one of two forms (ValueError says what is wrong):

    - positional, as before: 'N,H,W,C_in,C_out,K,stride,pad,groups' (2-D), with one more size for 3-D
      (N,D,H,W,...) or one fewer for 1-D (N,L,...); K, stride and pad may be one per dimension (2x1x1);
    - keywords, any order: 'n=16,size=16x16,cin=128,cout=64,k=4,stride=2,pad=1,transposed'; keys n,
      size (one value per spatial dimension, joined by 'x'), cin, cout, k, and optionally stride, pad,
      dilation, groups, output_padding (op), transposed (a flag, or =0/1), dtype, name.

    Unnamed shapes are named by their text."""
    text = text.strip()
    if "=" in text or any(part.strip() == "transposed" for part in text.split(",")):
        return _parse_keywords(text)
    fields = text.split(",")
    dims = len(fields) - 7
    if dims not in POSITIONAL:
        raise ValueError("expected " + " or ".join(f"{len(f.split(','))} fields {f}" for f in POSITIONAL.values())
                         + f" (or key=value fields), got {text!r}")
    values = [_ints(f, "N, sizes and channels" if i < dims + 3 else "K, stride, pad and groups")
              for i, f in enumerate(fields)]
    if any(isinstance(v, tuple) for v in values[:dims + 3]) or isinstance(values[-1], tuple):
        raise ValueError(f"only K, stride and pad may be given per dimension (like 2x1x1), got {text!r}")
    n, sizes, (c_in, c_out, k, stride, pad, groups) = values[0], tuple(values[1:1 + dims]), values[1 + dims:]
    return Shape(text, n, sizes, c_in, c_out, k, stride=stride, padding=pad, groups=groups)


def _parse_keywords(text):
    fields = {}
    for part in text.split(","):
        key, eq, value = part.strip().partition("=")
        if key not in KEYS:
            raise ValueError(f"unknown key {key!r} in {text!r}; keys: {', '.join(sorted(set(KEYS)))}")
        field = KEYS[key]
        if field in fields:
            raise ValueError(f"{key!r} given twice in {text!r}")
        if field == "transposed":
            if eq and value not in ("0", "1"):
                raise ValueError(f"transposed is a flag (or transposed=0/1), got {part!r}")
            fields[field] = value != "0"
        elif not eq:
            raise ValueError(f"expected key=value, got {part!r}")
        elif field in ("name", "dtype"):
            fields[field] = value
        else:
            value = _ints(value, key)
            if field == "sizes" and not isinstance(value, tuple):
                value = (value,)
            if field in ("n", "c_in", "c_out", "groups") and isinstance(value, tuple):
                raise ValueError(f"{key} takes one integer, got {'x'.join(map(str, value))}")
            fields[field] = value
    missing = [k for k in REQUIRED if k not in fields]
    if missing:
        names = {"n": "n", "sizes": "size", "c_in": "cin", "c_out": "cout", "kernel": "k"}
        raise ValueError(f"missing {', '.join(names[k] for k in missing)} in {text!r}")
    fields.setdefault("name", text)
    return Shape(**fields)


# ---------------------------------------------------------------- data and the two libraries' calls

def make_data(shape, dtype=None, seed=SEED):
    """Seeded x, w (nbconv's layouts), bias (C_out,) and grad_out (y's shape) of `shape`, in its dtype
    (or `dtype`); weights scaled by 1/sqrt(fan-in)."""
    dtype = np.dtype(dtype or shape.dtype)
    rng = np.random.default_rng(seed)
    fan_in = shape.taps * (shape.c_in // shape.groups)
    x = rng.standard_normal(shape.x_shape).astype(dtype)
    w = (rng.standard_normal(shape.w_shape) * fan_in ** -0.5).astype(dtype)
    bias = (rng.standard_normal(shape.c_out) * 0.1).astype(dtype)
    gy = rng.standard_normal(shape.y_shape).astype(dtype)
    return x, w, bias, gy


NEEDS = ("input", "weight", "bias")


def nbconv_calls(shape, data):
    """(forward, backward): zero-argument callables running nbconv on data = (x, w, bias, grad_out).
    forward() returns y; backward() returns the gradients (input, weight, bias) in nbconv's layouts.

    A transposed convolution's backward composes the public functions the way nbconv's tape does:
    conv_transpose(x, w) is the adjoint of conv(., w), so dL/dx = conv(grad_out, w), dL/dw is the weight
    gradient of conv(grad_out, w) for the output gradient x (roles swapped), dL/dbias sums grad_out."""
    import nbconv
    from nbconv.conv import bias_grad

    x, w, b, gy = data
    opts = shape.options()
    function = getattr(nbconv, shape.function)
    conv, conv_backward = getattr(nbconv, f"conv{shape.dims}d"), getattr(nbconv, f"conv{shape.dims}d_backward")

    def forward():
        return function(x, w, b, **opts)

    if not shape.transposed:
        def backward():
            return tuple(conv_backward(gy, x, w, needs=NEEDS, **opts))
    else:
        # output_padding < stride: conv(grad_out, w) has exactly x's size
        adjoint = {k: v for k, v in opts.items() if k != "output_padding"}

        def backward():
            return (conv(gy, w, **adjoint), conv_backward(x, gy, w, needs=("weight",), **adjoint).weight,
                    bias_grad(gy))
    return forward, backward


def torch_layout(torch, dims):
    """PyTorch's fastest memory format on the CPU for `dims` spatial dimensions: channels_last (2-D),
    channels_last_3d (3-D); for 1-D (no such format) the contiguous (N, C, L), measured 1.7-1.8x faster
    than the channels-last (N, L, C) view, forward and backward (PyTorch 2.13, float32)."""
    return {1: torch.contiguous_format, 2: torch.channels_last, 3: torch.channels_last_3d}[dims]


def torch_activation(torch, a, requires_grad=False):
    """A channels-last array (N, *sizes, C) as PyTorch's (N, C, *sizes): a permuted view, which is a
    channels_last (channels_last_3d) tensor; 1-D data is copied to the contiguous (N, C, L) instead
    (see torch_layout)."""
    t = torch.from_numpy(a).permute(0, a.ndim - 1, *range(1, a.ndim - 1))
    if a.ndim == 3:
        t = t.contiguous()
    return t.requires_grad_(requires_grad)


def torch_weight(torch, w, requires_grad=False):
    """nbconv's (*kernel, I, O) weight as PyTorch's (O, I, *kernel) for a convolution -- the same permutation
    turns a transposed convolution's (*kernel, C_out // groups, C_in) into PyTorch's (C_in, C_out // groups,
    *kernel) -- in the memory format torch_layout gives."""
    dims = w.ndim - 2
    t = torch.from_numpy(w).permute(dims + 1, dims, *range(dims)).contiguous(memory_format=torch_layout(torch, dims))
    return t.requires_grad_(requires_grad)


def from_torch(shape, results):
    """PyTorch's forward result or (input, weight, bias) gradients as NumPy arrays in nbconv's layouts."""
    dims = shape.dims
    def activation(t):
        return t.detach().permute(0, *range(2, 2 + dims), 1).numpy()
    if not isinstance(results, tuple):
        return activation(results)
    gx, gw, gb = results
    return activation(gx), gw.detach().permute(*range(2, 2 + dims), 1, 0).numpy(), gb.detach().numpy()


def torch_calls(torch, shape, data):
    """(forward, backward) of PyTorch on the same data in its fast layouts (channels_last, channels_last_3d;
    contiguous for 1-D, see torch_layout): forward() without an autograd graph; backward() = autograd of
    a graph built once (retain_graph) w.r.t. input, weight and bias with the same grad_out. Results are
    PyTorch tensors (see from_torch)."""
    x, w, b, gy = data
    function = getattr(torch.nn.functional, shape.function)
    opts = shape.options()
    tx = torch_activation(torch, x, requires_grad=True)
    tw = torch_weight(torch, w, requires_grad=True)
    tb = torch.from_numpy(b).requires_grad_(True)
    tgy = torch_activation(torch, gy)

    def forward():
        with torch.no_grad():
            return function(tx, tw, tb, **opts)

    ty = function(tx, tw, tb, **opts)

    def backward():
        return torch.autograd.grad(ty, (tx, tw, tb), tgy, retain_graph=True)
    return forward, backward
