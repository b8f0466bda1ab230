"""nbconv.optim against torch.optim: the same updates step for step.

Each comparison feeds both optimizers the same gradients (computed by nbconv's tape at nbconv's
parameters), so only the update formulas are compared: in float64 they agree to a few ulps after
20 steps. A WGAN-GP style critic, whose loss contains a gradient penalty (a second derivative through
convolutions), is then trained end to end by both libraries and compared.
"""
import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import nbconv
from nbconv import Tensor, optim


@pytest.fixture(autouse=True)
def one_thread():
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(threads)


SHAPES = [(3, 3, 2, 4), (4,), (16, 3)]


def problem(rng, dtype=np.float64):
    """Parameters and a loss: conv -> tanh -> linear -> cross_entropy on a fixed batch."""
    x = rng.standard_normal((4, 4, 4, 2)).astype(dtype)
    labels = rng.integers(0, 3, 4)
    arrays = [(rng.standard_normal(s) * 0.5).astype(dtype) for s in SHAPES]

    def loss(params):
        w, b, fc = params
        h = nbconv.conv2d(x, w, b, stride=2, padding=1).tanh()
        return nbconv.cross_entropy(nbconv.linear(h.reshape(4, -1), fc), labels)

    return arrays, loss


def run_both(ours_cls, theirs_cls, kwargs, rng, steps=20, dtype=np.float64, torch_kwargs=None):
    arrays, loss = problem(rng, dtype)
    params = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    tparams = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    ours = ours_cls(params, **kwargs)
    theirs = theirs_cls(tparams, **(torch_kwargs or kwargs))
    for _ in range(steps):
        ours.zero_grad()
        theirs.zero_grad()
        loss(params).backward()
        for p, t in zip(params, tparams):
            t.grad = torch.tensor(p.grad.copy())
        ours.step()
        theirs.step()
    return params, tparams


SGD_CASES = [dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=0.05, momentum=0.8, nesterov=True),
             dict(lr=0.1, weight_decay=0.01), dict(lr=0.1, momentum=0.5, weight_decay=0.1, nesterov=True)]


@pytest.mark.parametrize("kwargs", SGD_CASES, ids=str)
def test_sgd_matches_torch_for_20_steps(kwargs, rng):
    params, tparams = run_both(optim.SGD, torch.optim.SGD, kwargs, rng)
    for p, t in zip(params, tparams):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-13, atol=1e-15)


ADAM_CASES = [dict(), dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6), dict(lr=0.02, weight_decay=0.1),
              dict(lr=0.01, betas=(0.3, 0.9))]  # beta1 < 0.5: the other branch of torch's lerp


@pytest.mark.parametrize("kwargs", ADAM_CASES, ids=str)
@pytest.mark.parametrize("kind", ["Adam", "AdamW"])
def test_adam_and_adamw_match_torch_for_20_steps(kind, kwargs, rng):
    params, tparams = run_both(getattr(optim, kind), getattr(torch.optim, kind), kwargs, rng)
    for p, t in zip(params, tparams):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-13, atol=1e-15)


def test_adamw_default_weight_decay_is_torchs():
    assert optim.AdamW([Tensor(np.ones(2), requires_grad=True)]).param_groups[0]["weight_decay"] == 0.01
    assert optim.Adam([Tensor(np.ones(2), requires_grad=True)]).param_groups[0]["weight_decay"] == 0.0


@pytest.mark.parametrize("kind, kwargs", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.01)),
                                          ("AdamW", dict(lr=0.01))])
def test_float32_parameters_update_in_float32_like_torch(kind, kwargs, rng):
    params, tparams = run_both(getattr(optim, kind), getattr(torch.optim, kind), kwargs, rng, steps=10,
                               dtype=np.float32)
    for p, t in zip(params, tparams):
        assert p.data.dtype == np.float32
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_updates_are_in_place_and_parameters_without_gradients_are_skipped(rng):
    a, b = Tensor(rng.standard_normal(3), requires_grad=True), Tensor(rng.standard_normal(2), requires_grad=True)
    data_a, before_b = a.data, b.data.copy()
    opt = optim.Adam([a, b], lr=0.1)
    (a * a).sum().backward()
    opt.step()
    assert a.data is data_a and not np.array_equal(a.data, a.grad)
    np.testing.assert_array_equal(b.data, before_b)
    assert opt.state_dict()["state"].keys() == {0}
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_a_create_graph_gradient_tensor_is_used_by_its_values(rng):
    x = Tensor(rng.standard_normal(3), requires_grad=True)
    (x ** 3).sum().backward(create_graph=True)
    assert isinstance(x.grad, Tensor)
    expected = x.data - 0.1 * 3 * x.data ** 2
    optim.SGD([x], lr=0.1).step()
    np.testing.assert_allclose(x.data, expected, rtol=1e-15)


@pytest.mark.parametrize("kind, kwargs", [("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
                                          ("Adam", dict(lr=0.01, weight_decay=0.1)), ("AdamW", dict(lr=0.01))])
def test_state_dict_round_trip_continues_the_same_trajectory(kind, kwargs, rng):
    arrays, loss = problem(rng)
    cls = getattr(optim, kind)
    straight = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    opt = cls(straight, **kwargs)
    for _ in range(10):
        opt.zero_grad()
        loss(straight).backward()
        opt.step()
    resumed = [Tensor(p.data.copy(), requires_grad=True) for p in straight]
    saved = opt.state_dict()
    for _ in range(5):
        opt.zero_grad()
        loss(straight).backward()
        opt.step()
    opt2 = cls(resumed, lr=123.0)                                  # options come from the state dict
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["lr"] == kwargs["lr"]
    for _ in range(5):
        opt2.zero_grad()
        loss(resumed).backward()
        opt2.step()
    for p, q in zip(straight, resumed):
        np.testing.assert_array_equal(p.data, q.data)
    layout = saved["state"][0]
    expected = {"momentum_buffer"} if kind == "SGD" else {"step", "exp_avg", "exp_avg_sq"}
    assert set(layout) == expected and saved["param_groups"][0]["params"] == [0, 1, 2]
    saved["state"][0][sorted(expected)[0]] = np.zeros(5)
    if kind != "SGD":
        saved["state"][0]["exp_avg"] = np.zeros(5)
        with pytest.raises(ValueError, match=r"state 'exp_avg' of parameter 0 has shape \(5,\) but the parameter has "
                                             r"shape \(3, 3, 2, 4\)"):
            opt2.load_state_dict(saved)
    with pytest.raises(ValueError, match=r"parameter groups have sizes \[3\], this optimizer's \[1\]"):
        cls(straight[:1], lr=0.1).load_state_dict(opt.state_dict())


def test_parameter_groups_and_changing_the_learning_rate(rng):
    a, b = Tensor(np.ones(2), requires_grad=True), Tensor(np.ones(2), requires_grad=True)
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    (a + b).sum().backward()
    opt.step()
    np.testing.assert_allclose(a.data, 0.9)
    np.testing.assert_allclose(b.data, 0.5)
    opt.param_groups[0]["lr"] = 0.2
    opt.step()
    np.testing.assert_allclose(a.data, 0.7)
    assert "group 1: 1 parameters" in repr(opt)


@pytest.mark.parametrize("make, error, match", [
    (lambda p: optim.SGD(p[0], lr=0.1), TypeError, "got a single Tensor; wrap it in a list"),
    (lambda p: optim.SGD([], lr=0.1), ValueError, "empty parameter list"),
    (lambda p: optim.SGD([p[0], p[0].data], lr=0.1), TypeError, "parameter 1 must be a Tensor, got ndarray"),
    (lambda p: optim.SGD([p[0] * 2], lr=0.1), ValueError, r"parameter 0 \(shape \(3,\)\) must be a leaf Tensor"),
    (lambda p: optim.Adam([p[0], p[0]]), ValueError, "parameter 1 .* appears more than once"),
    (lambda p: optim.SGD(p, lr=-1), ValueError, "lr must be >= 0.0, got -1"),
    (lambda p: optim.SGD(p, lr=float("nan")), ValueError, "lr must be a finite real number"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=True), ValueError, "nesterov momentum needs momentum > 0"),
    (lambda p: optim.Adam(p, betas=(0.9, 1.0)), ValueError, r"betas\[1\] must be >= 0.0 and < 1.0, got 1.0"),
    (lambda p: optim.Adam(p, betas=0.9), ValueError, r"betas must be a pair"),
    (lambda p: optim.AdamW([{"params": p, "momentum": 0.9}]), TypeError, r"unknown options \['momentum'\]"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_argument_errors(make, error, match):
    params = [Tensor(np.ones(3), requires_grad=True)]
    with pytest.raises(error, match=match):
        make(params)


def test_a_step_between_forward_and_backward_makes_that_backward_raise(rng):
    """The optimizer writes a parameter that a live graph saved (allowed, like PyTorch's in-place
    update under no_grad); the stale graph's backward then raises naming the operation and the step."""
    arrays, loss = problem(rng)
    params = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    opt = optim.SGD(params, lr=0.1)
    first = loss(params)
    first.backward()
    second = loss(params)                                          # saved the parameters again
    opt.step()
    with pytest.raises(RuntimeError, match=r"modified in place by SGD.step after the forward pass"):
        second.backward()
    with pytest.raises(RuntimeError, match=r"^(linear|conv2d): input [12].*SGD.step"):
        first.backward()                                           # a second pass over the first graph too
    opt.zero_grad()
    loss(params).backward()                                        # a fresh forward pass is fine
    opt.step()


# ------------------------------------------------------------------------------------ WGAN-GP against PyTorch

def critic(params, x, conv, mean):
    w1, b1, w2, b2 = params
    h = conv(x, w1, b1, padding=1, stride=1).tanh()
    return mean(conv(h, w2, b2, stride=2, padding=0))


def torch_conv(x, w, b, stride=1, padding=0):
    return F.conv2d(x.movedim(-1, 1), w.permute(3, 2, 0, 1).contiguous(), b, stride=stride,
                    padding=padding).movedim(1, -1)


def test_wgan_gp_critic_trains_like_pytorch(rng):
    """A critic trained for 5 Adam steps on loss = D(fake) - D(real) + 10 * (||grad_x D(x_hat)|| - 1) ** 2:
    the gradient penalty differentiates through a gradient (create_graph). Both libraries compute their
    own gradients; the weights agree to ~1e-10 after every step."""
    real, fake = rng.standard_normal((3, 6, 6, 2)), rng.standard_normal((3, 6, 6, 2)) * 0.5 + 0.3
    alpha = rng.random((3, 1, 1, 1))
    x_hat = alpha * real + (1 - alpha) * fake
    shapes = [(3, 3, 2, 4), (4,), (2, 2, 4, 1), (1,)]
    arrays = [rng.standard_normal(s) * 0.4 for s in shapes]

    ours = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    opt = optim.Adam(ours, lr=0.01, betas=(0.5, 0.9))
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    topt = torch.optim.Adam(theirs, lr=0.01, betas=(0.5, 0.9))
    per_sample = lambda h: h.mean(axis=(1, 2, 3))  # noqa: E731
    torch_per_sample = lambda h: h.mean(dim=(1, 2, 3))  # noqa: E731

    for step in range(5):
        opt.zero_grad()
        xh = Tensor(x_hat, requires_grad=True)
        (g,) = nbconv.grad(critic(ours, xh, nbconv.conv2d, per_sample).sum(), xh, create_graph=True)
        penalty = (((g * g).sum(axis=(1, 2, 3)).sqrt() - 1) ** 2).mean()
        loss = (critic(ours, fake, nbconv.conv2d, per_sample).mean() - critic(ours, real, nbconv.conv2d,
                                                                             per_sample).mean() + 10 * penalty)
        loss.backward()
        opt.step()

        topt.zero_grad()
        txh = torch.tensor(x_hat, requires_grad=True)
        (tg,) = torch.autograd.grad(critic(theirs, txh, torch_conv, torch_per_sample).sum(), txh, create_graph=True)
        tpenalty = (((tg * tg).sum(dim=(1, 2, 3)).sqrt() - 1) ** 2).mean()
        tloss = (critic(theirs, torch.tensor(fake), torch_conv, torch_per_sample).mean()
                 - critic(theirs, torch.tensor(real), torch_conv, torch_per_sample).mean() + 10 * tpenalty)
        tloss.backward()
        topt.step()

        assert loss.item() == pytest.approx(tloss.item(), rel=1e-10, abs=1e-12)
        assert penalty.item() > 0
        for p, t in zip(ours, theirs):
            np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-9, atol=1e-11)
