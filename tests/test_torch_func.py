"""nbconv.torch under torch.func transforms and forward-mode AD, against the same transforms over
torch.nn.functional / torch.nn (float64; every comparison is to 1e-10).

Each case is a function f(x, w, b) of a convolution's input, weight and bias: the functional
convolutions in 1, 2 and 3 spatial dims, the transposed ones, and a module with a padding mode
(through torch.func.functional_call)."""
import numba
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional
fwAD = torch.autograd.forward_ad
func = torch.func

import nbconv.torch as nt  # noqa: E402

F64 = torch.float64


def _module_case(ref_cls, our_cls, *args, **kwargs):
    """(ours, reference) functions f(x, w, b) of a module's input and parameters."""
    torch.manual_seed(0)
    ref, ours = ref_cls(*args, dtype=F64, **kwargs), our_cls(*args, dtype=F64, **kwargs)

    def call(module):
        return lambda x, w, b: func.functional_call(module, {"weight": w, "bias": b}, (x,))

    return call(ours), call(ref)


def _functional_case(ours, ref, **kwargs):
    return (lambda x, w, b: ours(x, w, b, **kwargs)), (lambda x, w, b: ref(x, w, b, **kwargs))


# name: ((ours, reference), input shape, weight shape)
CASES = {
    "conv1d": (_functional_case(nt.conv1d, F.conv1d, stride=2, padding=1, groups=2), (2, 4, 7), (6, 2, 3)),
    "conv2d": (_functional_case(nt.conv2d, F.conv2d, padding=(1, 0), dilation=(1, 2)), (2, 2, 5, 6), (3, 2, 2, 3)),
    "conv3d": (_functional_case(nt.conv3d, F.conv3d, stride=(1, 2, 1), padding=1, groups=2),
               (1, 2, 3, 4, 3), (2, 1, 2, 2, 2)),
    "conv_transpose1d": (_functional_case(nt.conv_transpose1d, F.conv_transpose1d, stride=2, padding=1,
                                          output_padding=1), (2, 4, 4), (4, 3, 3)),
    "conv_transpose2d": (_functional_case(nt.conv_transpose2d, F.conv_transpose2d, stride=(2, 1), groups=2),
                         (2, 4, 3, 3), (4, 1, 2, 3)),
    "conv_transpose3d": (_functional_case(nt.conv_transpose3d, F.conv_transpose3d, stride=2, padding=(1, 0, 0),
                                          dilation=(1, 1, 2)), (1, 2, 2, 3, 2), (2, 2, 2, 1, 2)),
    "Conv2d-reflect": (_module_case(nn.Conv2d, nt.Conv2d, 2, 3, 3, stride=2, padding=1, padding_mode="reflect"),
                       (2, 2, 5, 6), (3, 2, 3, 3)),
    "Conv1d-circular": (_module_case(nn.Conv1d, nt.Conv1d, 2, 4, 3, padding=2, dilation=2, groups=2,
                                     padding_mode="circular"), (2, 2, 6), (4, 1, 3)),
}
NAMES = list(CASES)


@pytest.fixture
def serial_numba():
    """One thread: these tests call the kernels hundreds of times on tiny arrays."""
    saved = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(saved)


def _case(name, seed=0):
    """(ours, ref, (x, w, b)) with float64 operands; b has the result's channel count."""
    (ours, ref), x_shape, w_shape = CASES[name]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(x_shape, dtype=F64, generator=gen)
    w = torch.randn(w_shape, dtype=F64, generator=gen)
    c_out = ref(x, w, None).shape[1]
    return ours, ref, (x, w, torch.randn(c_out, dtype=F64, generator=gen))


def _close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def _loss(f):
    """A scalar, nonlinear in f's result (so second derivatives are not trivially zero)."""
    return lambda x, w, b: f(x, w, b).sin().sum()


@pytest.mark.parametrize("name", NAMES)
def test_jvp(name, serial_numba):
    ours, ref, primals = _case(name)
    tangents = tuple(torch.randn_like(p) for p in primals)
    got, want = func.jvp(ours, primals, tangents), func.jvp(ref, primals, tangents)
    assert want[1].abs().max() > 1  # a real tangent, not a trivially zero one
    _close(got, want)
    for i in range(3):  # a tangent for one argument only: the others are constants
        only = lambda t, i=i: ours(*primals[:i], t, *primals[i + 1:])  # noqa: E731
        only_ref = lambda t, i=i: ref(*primals[:i], t, *primals[i + 1:])  # noqa: E731
        _close(func.jvp(only, (primals[i],), (tangents[i],)), func.jvp(only_ref, (primals[i],), (tangents[i],)))


@pytest.mark.parametrize("name", NAMES)
def test_forward_ad(name, serial_numba):
    """torch.autograd.forward_ad dual tensors, with and without tangents on the weights (never a None tangent)."""
    ours, ref, primals = _case(name)
    tangents = tuple(torch.randn_like(p) for p in primals)
    for which in [(0,), (1,), (2,), (0, 1, 2)]:
        results = []
        for f in (ours, ref):
            with fwAD.dual_level():
                args = [fwAD.make_dual(p, t) if i in which else p for i, (p, t) in enumerate(zip(primals, tangents))]
                primal, tangent = fwAD.unpack_dual(f(*args))
                assert tangent is not None
                results.append((primal, tangent))
        _close(results[0], results[1])


@pytest.mark.parametrize("name", NAMES)
def test_grad(name, serial_numba):
    ours, ref, primals = _case(name)
    _close(func.grad(_loss(ours), argnums=(0, 1, 2))(*primals), func.grad(_loss(ref), argnums=(0, 1, 2))(*primals))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("in_dims", [(0, None, None), (None, 0, None), (None, None, 0), (0, 0, 0), (2, 1, None)],
                         ids=["x", "w", "b", "xwb", "x2w1"])
def test_vmap(name, in_dims, serial_numba):
    """A batch of inputs (a bigger N), of weights (a grouped convolution), of biases, of all; batch dims
    in any position."""
    ours, ref, primals = _case(name)
    gen = torch.Generator().manual_seed(1)
    batched = tuple(p if d is None else torch.randn(*p.shape[:d], 3, *p.shape[d:], dtype=F64, generator=gen)
                    for p, d in zip(primals, in_dims))
    _close(func.vmap(ours, in_dims=in_dims)(*batched), func.vmap(ref, in_dims=in_dims)(*batched))


def test_vmap_uses_batching_rules_not_a_loop(monkeypatch, serial_numba):
    """vmap calls each op once for the whole batch (no per-sample fallback, no warning)."""
    calls = []
    real = nt.core.forward

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(nt.core, "forward", counting)
    ours, _, (x, w, b) = _case("conv2d")
    xs, ws = torch.randn(5, *x.shape, dtype=F64), torch.randn(5, *w.shape, dtype=F64)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        func.vmap(ours, in_dims=(0, None, None))(xs, w, b)
        func.vmap(ours, in_dims=(None, 0, None))(x, ws, b)
    n, c = x.shape[0], x.shape[1]
    assert calls[0][0] == 5 * n  # a bigger N (channels-last shape (N, H, W, C))
    assert calls[1][0] == n and calls[1][-1] == 5 * c  # the weights' batch as channel groups


@pytest.mark.parametrize("name", NAMES)
def test_per_sample_grad(name, serial_numba):
    """vmap(grad(...)) over the samples of a batch: the per-sample-gradient recipe (unbatched inputs inside)."""
    ours, ref, (x, w, b) = _case(name)

    def per_sample(f):
        loss = lambda w, b, xi: _loss(f)(xi, w, b)  # noqa: E731
        return func.vmap(func.grad(loss, argnums=(0, 1)), in_dims=(None, None, 0))(w, b, x)

    _close(per_sample(ours), per_sample(ref))


@pytest.mark.parametrize("name", NAMES)
def test_jacrev_jacfwd(name, serial_numba):
    ours, ref, primals = _case(name)
    want = func.jacrev(ref, argnums=(0, 1, 2))(*primals)
    _close(func.jacrev(ours, argnums=(0, 1, 2))(*primals), want)
    _close(func.jacfwd(ours, argnums=(0, 1, 2))(*primals), want)


@pytest.mark.parametrize("name", ["conv2d", "conv_transpose1d", "conv3d", "Conv2d-reflect"])
def test_hessian(name, serial_numba):
    """Forward-over-reverse (jacfwd(jacrev)): the jvp rules of the backward's own ops."""
    ours, ref, (x, w, b) = _case(name)
    x = x[:1]
    _close(func.hessian(_loss(ours), argnums=(0, 1))(x, w, b), func.hessian(_loss(ref), argnums=(0, 1))(x, w, b))


@pytest.mark.parametrize("name", ["conv2d", "conv_transpose2d", "Conv1d-circular"])
def test_gradcheck_forward_and_batched(name, serial_numba):
    """torch.autograd.gradcheck's own forward-mode and batched (vmap) checks, first and second order."""
    ours, _, primals = _case(name)
    primals = tuple(p.requires_grad_() for p in primals)
    assert torch.autograd.gradcheck(ours, primals, fast_mode=True, check_forward_ad=True, check_batched_grad=True,
                                    check_batched_forward_grad=True)
    assert torch.autograd.gradgradcheck(ours, primals, fast_mode=True, check_fwd_over_rev=True,
                                        check_batched_grad=True)


def test_ops_themselves(serial_numba):
    """The custom ops (torch.ops.nbconv.*) carry batching rules; forward-mode AD through them raises (a
    torch.library custom op has no jvp hook) instead of giving zero or missing tangents."""
    ops = torch.ops.nbconv
    _, _, (x, w, b) = _case("conv2d")
    args = ([1, 1], [1, 1, 0, 0], [1, 2], 1, "zeros")
    xs = torch.randn(3, *x.shape, dtype=F64)
    _close(func.vmap(lambda x: ops.conv(x, w, b, *args))(xs),
           func.vmap(lambda x: F.conv2d(x, w, b, padding=(1, 0), dilation=(1, 2)))(xs))
    with pytest.raises(RuntimeError, match="forward-mode AD"):
        func.jvp(lambda x: ops.conv(x, w, b, *args), (x,), (x,))
    with pytest.raises(RuntimeError, match="forward-mode AD"), fwAD.dual_level():
        ops.conv(x, fwAD.make_dual(w, w), b, *args)


def test_under_torch_compile(serial_numba):
    """Inside torch.compile the functions call the custom ops: vmap works (fullgraph), forward-mode AD raises."""
    ours, ref, (x, w, b) = _case("conv2d")
    torch._dynamo.reset()
    xs = torch.randn(3, *x.shape, dtype=F64)
    compiled = torch.compile(lambda xs: func.vmap(ours, in_dims=(0, None, None))(xs, w, b), backend="aot_eager",
                             fullgraph=True)
    _close(compiled(xs), func.vmap(ref, in_dims=(0, None, None))(xs, w, b))
    compiled = torch.compile(lambda x, t: func.jvp(lambda x: ours(x, w, b), (x,), (t,)), backend="aot_eager")
    with pytest.raises(Exception, match="forward-mode AD"):
        compiled(x, x)
    compiled = torch.compile(lambda x: ours(x, w, b), backend="aot_eager")
    with pytest.raises(Exception, match="forward-mode AD"), fwAD.dual_level():
        compiled(fwAD.make_dual(x, x))
