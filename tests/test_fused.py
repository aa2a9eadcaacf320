"""The compiled instance norms (latentinv.nn.fused) and the decoders' switches that use them.

On the CPU torch.compile generates C++ kernels; on CUDA, Triton ones (the CUDA graph test is in
test_graphed.py). Every answer is compared with the modules run in float64.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from latentinv.nn import ConvDecoder, fused
from latentinv.nn.sgan import SpatialGenerator


def _reference(h, relu_first, eps=1e-5):
    h = h.double()
    return F.instance_norm(F.relu(h), eps=eps) if relu_first else F.relu(F.instance_norm(h, eps=eps))


@pytest.mark.parametrize("relu_first", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_norms_are_instance_norm_and_relu(relu_first, channels_last):
    """Values and input gradient of both orders, NCHW and NHWC, against float64 modules; the result
    keeps the input's dtype and shape."""
    g = torch.Generator().manual_seed(int(relu_first) + 2 * int(channels_last))
    h = torch.randn(3, 5, 7, 4, generator=g) * 3 + 1
    if channels_last:
        h = h.contiguous(memory_format=torch.channels_last)
    h.requires_grad_(True)
    w = torch.randn(3, 5, 7, 4, generator=g, dtype=torch.float64)
    got = (fused.relu_norm if relu_first else fused.norm_relu)(h, 1e-5)
    (got_grad,) = torch.autograd.grad(got, h, w.float())
    hd = h.detach().double().requires_grad_(True)
    want = _reference(hd, relu_first)
    (want_grad,) = torch.autograd.grad(want, hd, w)
    assert got.dtype == torch.float32 and got.shape == h.shape
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-6)
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=0, atol=2e-5 * float(want_grad.abs().max()))


def test_fused_norm_of_bfloat16_maps_keeps_float32_statistics():
    """A bfloat16 map (the convolutions' output under autocast) comes back bfloat16, normalised from
    float32 statistics: within bfloat16's rounding of the float64 answer, under autocast too."""
    h = (torch.randn(2, 4, 9, 6, generator=torch.Generator().manual_seed(4)) * 5 + 3).to(torch.bfloat16)
    want = _reference(h, relu_first=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fused.norm_relu(h, 1e-5)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), want, rtol=8e-3, atol=8e-3)


def _decoder():
    torch.manual_seed(0)
    decoder = ConvDecoder((65, 33), 6, (4, 8, 8, 16)).eval().requires_grad_(False)
    decoder.fast_frozen_path = False        # the path CUDA takes
    return decoder


@pytest.mark.parametrize("others", [False, True])
def test_decoder_fused_norm_switch_equals_the_modules(others, monkeypatch):
    """``layout_fused_norm`` (alone, and with channels-last maps, the folded last layer and the composed
    fully-connected layers, whose composition is cached on the module): every
    instance norm + ReLU through the compiled kernels, and models and latent gradients those of the
    modules in float64 to float32 round-off."""
    plain = _decoder()
    switched = copy.deepcopy(plain)
    switched.layout_fused_norm = True
    switched.layout_channels_last = switched.layout_fold_last = switched.layout_compose_fc = others
    calls = []
    real = fused.norm_relu
    monkeypatch.setattr(fused, "norm_relu", lambda h, eps: calls.append(tuple(h.shape)) or real(h, eps))
    z = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    g = torch.randn(4, plain.n_cells, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    zf = z.clone().requires_grad_(True)
    x = switched(zf)
    (grad,) = torch.autograd.grad(x, zf, g.float())
    assert len(calls) == 3                  # the three hidden layers' norms
    assert ("_latentinv_composed" in switched.fc.__dict__) == others
    exact = copy.deepcopy(plain).double()
    zd = z.double().requires_grad_(True)
    xd = exact(zd)
    (grad_d,) = torch.autograd.grad(xd, zd, g)
    assert float((x.double() - xd).abs().max().detach()) <= 2e-6
    assert float((grad.double() - grad_d).abs().max()) <= 2e-6 * float(grad_d.abs().max())


def _generator(**switches):
    # 2 stride-2 layers (the published 5): 2 ReLU + instance norms of distinct shapes to compile, not 5, the
    # switches' code being the same for any depth (compiling took 20 s per test on a 2-core AMD EPYC)
    torch.manual_seed(3)
    generator = SpatialGenerator(n_filters=4, n_layers=2).eval().requires_grad_(False)
    switched = copy.deepcopy(generator)
    for name, value in switches.items():
        setattr(switched, name, value)
    return switched, generator


@pytest.mark.parametrize("channels_last,fused_norm", [(True, False), (False, True), (True, True)])
def test_sgan_layout_switches_equal_the_generator(channels_last, fused_norm, monkeypatch):
    """The SGAN generator's switches: channels-last maps into every transposed convolution (with the
    weights' channels-last copies cached on the layers), every ReLU + instance norm compiled (2 here);
    images and latent gradients those of the modules in float64. A batch of 2, as the tests below, whose
    compiled norms it shares."""
    switched, plain = _generator(layout_channels_last=channels_last, layout_fused_norm=fused_norm)
    norms, layouts = [], []
    real_norm, real_conv = fused.relu_norm, F.conv_transpose2d
    monkeypatch.setattr(fused, "relu_norm", lambda h, eps=1e-5: norms.append(1) or real_norm(h, eps))
    monkeypatch.setattr(F, "conv_transpose2d", lambda x, *a, **k: layouts.append(
        x.is_contiguous(memory_format=torch.channels_last)) or real_conv(x, *a, **k))
    z = torch.rand(2, 1, 5, 3, generator=torch.Generator().manual_seed(5)) * 2 - 1
    w = torch.randn(2, 1, 17, 9, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    zf = z.clone().requires_grad_(True)
    x = switched(zf)
    (grad,) = torch.autograd.grad(x, zf, w.float())
    assert len(norms) == (2 if fused_norm else 0)       # after the first stride-2 layer and the first dilated one
    assert len(layouts) == 4 and (all(layouts) if channels_last else not all(layouts))
    convs = list(switched.upsample) + list(switched.refine)
    assert all(("_latentinv_channels_last_weight" in c.__dict__) == channels_last for c in convs)
    exact = copy.deepcopy(plain).double()
    zd = z.double().requires_grad_(True)
    xd = exact(zd)
    (grad_d,) = torch.autograd.grad(xd, zd, w)
    assert x.shape == xd.shape == (2, 1, 17, 9)
    # float32 through 4 transposed convolutions and 2 instance norms: 4.3e-7 from float64 on an AVX2 CPU
    # (the published 5 layers reached 1.1e-5 there); a wrong switch is off by the images' scale
    assert float((x.double() - xd).abs().max().detach()) <= 1e-5
    assert float((grad.double() - grad_d).abs().max()) <= 1e-5 * float(grad_d.abs().max())


def test_sgan_switches_leave_training_to_the_modules():
    """Weights that ask for gradients (training): the modules as they are, bit for bit, and every
    weight gets its gradient."""
    switched, plain = _generator(layout_channels_last=True, layout_fused_norm=True)
    switched.requires_grad_(True)
    plain.requires_grad_(True)
    z = torch.rand(2, 1, 5, 3, generator=torch.Generator().manual_seed(7))
    y = switched(z)
    assert torch.equal(y, plain(z))
    y.sum().backward()
    assert all(p.grad is not None for p in switched.parameters())
    assert not any("_latentinv_channels_last_weight" in c.__dict__ for c in switched.upsample)


@pytest.mark.parametrize("relu_first", [False, True])
def test_float64_maps_keep_float64_arithmetic(relu_first):
    """A float64 map was normalised from float32 statistics (5e-8 from the float64 modules in a float64
    decoder with ``layout_fused_norm``, 1.8e-6 in the SGAN's, where every other switch kept 1e-15): its
    statistics and result are float64, to float64 round-off; float32 maps keep float32 statistics."""
    g = torch.Generator().manual_seed(9)
    h = (torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64) * 4 + 2).requires_grad_(True)
    w = torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64)
    got = (fused.relu_norm if relu_first else fused.norm_relu)(h, 1e-5)
    (got_grad,) = torch.autograd.grad(got, h, w)
    hd = h.detach().clone().requires_grad_(True)
    want = _reference(hd, relu_first)
    (want_grad,) = torch.autograd.grad(want, hd, w)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=1e-12 * float(want_grad.abs().max()))


def test_the_sgan_switch_in_float64_is_the_float64_generator():
    """The SGAN generator in float64 with the compiled norms: images and latent gradients of the float64
    modules to float64 round-off."""
    switched, plain = _generator(layout_fused_norm=True)
    switched, plain = switched.double(), plain.double()
    z = (torch.rand(2, 1, 5, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * 2 - 1)
    grads = []
    for net in (switched, plain):
        zz = z.clone().requires_grad_(True)
        x = net(zz)
        grads.append((x.detach(), torch.autograd.grad(x.sum(), zz)[0]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=1e-12)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=0, atol=1e-12 * float(grads[1][1].abs().max()))


def test_a_backward_that_keeps_its_graph_is_refused_naming_the_switch():
    """After a first-order backward through the SGAN's compiled norms (an inversion's step), a backward with
    ``retain_graph=True`` or ``create_graph=True`` (LatentSampler's Gauss-Newton preconditioner) was torch's
    RuntimeError "This backward function was compiled with non-empty donated buffers ... set
    torch._functorch.config.donated_buffer=False", which names neither latentinv nor the switch (and
    whether it came depended on which backward had compiled first). It is an error naming the switch; the
    first-order backward stays the modules'."""
    switched, plain = _generator(layout_fused_norm=True)
    z = torch.rand(2, 1, 5, 3, generator=torch.Generator().manual_seed(10)) * 2 - 1
    zp = z.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(plain(zp).square().sum(), zp)
    zz = z.clone().requires_grad_(True)
    (got,) = torch.autograd.grad(switched(zz).square().sum(), zz)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    for keep in (dict(retain_graph=True), dict(create_graph=True)):
        zz = z.clone().requires_grad_(True)
        if keep == dict(retain_graph=True) and not fused._KEEP_GRAPH_KNOWN:
            # a torch that cannot tell the hook (2.2 can't): the compiled backward runs twice, and is right
            out = switched(zz).square().sum()
            for again in (dict(retain_graph=True), {}):
                torch.testing.assert_close(torch.autograd.grad(out, zz, **again)[0], want,
                                           rtol=1e-4, atol=1e-4 * float(want.abs().max()))
            continue
        with pytest.raises(RuntimeError, match="layout_fused_norm"):
            torch.autograd.grad(switched(zz).square().sum(), zz, **keep)


@pytest.mark.parametrize("fn", [fused.norm_relu, fused.relu_norm])
def test_a_map_of_one_cell_is_refused_as_the_modules_refuse_it(fn):
    # the compiled norms returned 0 (an SGAN of a 1 x 1 latent: a constant image) where the modules raise
    with pytest.raises(ValueError, match=r"Expected more than 1 spatial element"):
        torch.nn.functional.instance_norm(torch.randn(2, 3, 1, 1))
    with pytest.raises(ValueError, match=r"latentinv.nn.fused: instance normalisation needs more than 1 spatial "
                                         r"element \(the modules' rule\), got input size \(2, 3, 1, 1\)"):
        fn(torch.randn(2, 3, 1, 1))
    generator = SpatialGenerator(n_filters=4).eval().requires_grad_(False)
    generator.layout_fused_norm = True
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        generator(torch.rand(1, 1, 1, 1) * 2 - 1)
