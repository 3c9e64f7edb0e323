"""The fused kernels against the reference path.

The CPU build runs the arithmetic of sgxl/csrc/sgxl_ops.h that the CUDA kernels run, so these tests check
the fused arithmetic without a GPU: forward values, first and second gradients (gradcheck/gradgradcheck
in float64 on the fused path itself), values exactly at the leaky ReLU's kink and at the clamp, the 2-bit
codes, the CUDA kernel's tiling (the CPU build's tiled mode runs the same per-sample phases), the
torch.library registration, the build machinery (cache, stale locks, failed builds) and bad input. The
CUDA tests at the end need a GPU and are skipped without one.
"""
import math
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import torch

from sgxl import ops, ops_build, ops_reference

RNG = np.random.default_rng(1)
HAS_CUDA = torch.cuda.is_available()
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason='needs a CUDA GPU')


@pytest.fixture(scope='module', autouse=True)
def cpu_build():
    "Every test here needs the CPU build; a failed build fails them with the compiler's reason."
    if ops_build.load_ops('cpu') is None:
        pytest.fail(f"the CPU build of the fused ops failed: {ops_build.ops_status()['cpu']}")


def lowpass(taps, cutoff=0.25):
    return ops_reference.setup_filter(scipy.signal.firwin(taps, min(cutoff * 2, 0.9), fs=2))


def t64(a):
    return torch.tensor(a, dtype=torch.float64)


def assert_same(a, b, rtol, what=''):
    "Max |a - b| relative to max |a| (1 when a is all zeros) is below rtol."
    scale = max(float(a.abs().max()), 1e-30) if a.numel() else 1.0
    err = float((a.double() - b.double()).abs().max()) / scale if a.numel() else 0.0
    assert err <= rtol, f'{what}: relative error {err:.2e} > {rtol:.0e}'


def values_and_grads(fn, inputs, impl, seed=0):
    "y = fn(impl, *inputs), the gradients of <y, w> for a fixed random w, and of <those grads, v> w.r.t. w."
    ins = [t.detach().clone().requires_grad_() for t in inputs]
    y = fn(impl, *ins)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y).requires_grad_()
    grads = torch.autograd.grad((y * w).sum(), ins, create_graph=True)
    v = [torch.randn(g.shape, generator=gen, dtype=torch.float64).to(g) for g in grads]
    s = sum((g * vi).sum() for g, vi in zip(grads, v))
    gw = torch.autograd.grad(s, [w], allow_unused=True)[0] if s.requires_grad else None   # double backward
    return [y.detach()] + [g.detach() for g in grads] + ([gw] if gw is not None else [])


# --- bias_act --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('act', list(ops_reference.ACTIVATIONS))
@pytest.mark.parametrize('dtype,rtol', [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_bias_act_fused_matches_reference(act, dtype, rtol):
    x = torch.tensor(RNG.normal(size=(3, 5, 4, 6)) * 2, dtype=dtype)
    b5, b4 = torch.tensor(RNG.normal(size=5), dtype=dtype), torch.tensor(RNG.normal(size=4), dtype=dtype)
    for dim, bias in [(1, b5), (2, b4), (-1, torch.tensor(RNG.normal(size=6), dtype=dtype)), (1, None)]:
        fn = lambda impl, x, *b_: ops.bias_act(x, b_[0] if b_ else None, dim=dim, act=act, clamp=1.7, impl=impl)
        ins = [x] + ([bias] if bias is not None else [])
        for r, c in zip(values_and_grads(fn, ins, 'ref'), values_and_grads(fn, ins, 'cpu')):
            assert_same(r, c, rtol, f'{act} dim={dim}')


@pytest.mark.parametrize('act', ['lrelu', 'tanh', 'swish', 'elu', 'softplus'])
def test_bias_act_fused_gradgradcheck(act):
    v = RNG.normal(size=(2, 3, 4))
    x = t64(np.sign(v) * (np.abs(v) + 0.2)).requires_grad_()   # away from the kinks (|x + b| >= 0.18)
    b = t64(RNG.uniform(-0.02, 0.02, 3)).requires_grad_()
    fn = lambda x, b: ops.bias_act(x, b, act=act, clamp=2.5, impl='cpu')
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_bias_act_fused_at_kinks_and_clamp():
    "Values exactly at 0 and at +-clamp: the fused gradients agree with torch's conventions bit for bit."
    c, gain = 1.0, 2.0
    v = [0.0, -0.0, 0.5, -0.5, 0.25, 0.75, -1.0, 3.0]          # g*x = 0, +-c exactly, inside, outside
    for act in ['relu', 'lrelu', 'elu', 'linear']:
        for dtype in (torch.float32, torch.float64):
            x = torch.tensor(v, dtype=dtype)
            fn = lambda impl, x: ops.bias_act(x, None, dim=0, act=act, gain=gain, clamp=c, impl=impl)
            for r, k in zip(values_and_grads(fn, [x], 'ref'), values_and_grads(fn, [x], 'cpu')):
                assert torch.equal(r, k), (act, dtype, r, k)


# --- upfirdn2d -----------------------------------------------------------------------------------------------------
UPFIRDN_CASES = [  # (up, down, taps, padding): StyleGAN3-T's resampling and odd corners
    (1, 1, 1, 0), (2, 1, 4, (2, 1, 2, 1)), (1, 2, 4, (1, 1, 1, 1)), (2, 1, 12, (11, 10, 9, 12)),
    (4, 1, 24, (20, 23, 22, 21)), (1, 2, 12, (5, 6, 4, 7)), (2, 2, 12, (5, 6, 5, 6)), (4, 2, 24, (13, 10, 13, 10)),
    (3, 1, 5, (2, -1, 0, 3)), (1, 3, 2, (-1, 2, 3, -2)), ((2, 1), (1, 3), 5, (1, 2, 3, 0)),
]


@pytest.mark.parametrize('up,down,taps,padding', UPFIRDN_CASES)
@pytest.mark.parametrize('separable', [True, False])
def test_upfirdn2d_fused_matches_reference(up, down, taps, padding, separable):
    f = ops_reference.setup_filter(RNG.uniform(0.1, 1, taps), separable=separable)
    x = t64(RNG.normal(size=(2, 3, 9, 11)))
    for flip in (False, True):
        fn = lambda impl, x: ops.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=1.3, impl=impl)
        for r, c in zip(values_and_grads(fn, [x], 'ref'), values_and_grads(fn, [x], 'cpu')):
            assert_same(r, c, 1e-12, 'upfirdn2d')
        r32, c32 = fn('ref', x.float()), fn('cpu', x.float())
        assert_same(r32, c32, 1e-6, 'upfirdn2d float32')


@pytest.mark.parametrize('up,down,padding', [(2, 1, (2, 1, 2, 1)), (1, 2, (1, 2, 0, 3)), (4, 2, (4, 3, 5, 2))])
def test_upfirdn2d_fused_gradgradcheck(up, down, padding):
    f = ops_reference.setup_filter(RNG.uniform(0.1, 1, 5))
    x = t64(RNG.normal(size=(1, 2, 5, 6))).requires_grad_()
    fn = lambda x: ops.upfirdn2d(x, f, up=up, down=down, padding=padding, gain=1.3, impl='cpu')
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


# --- filtered_lrelu ------------------------------------------------------------------------------------------------
FLRELU_CASES = [  # (up, down, fu taps, fd taps, padding, clamp)
    (2, 2, 12, 12, (6, 5, 6, 5), None), (4, 2, 24, 12, (13, 11, 13, 11), 0.7), (2, 2, 12, 12, (5, 7, 4, 8), 0.5),
    (1, 1, 1, 1, 0, None), (2, 1, 12, 1, 5, 0.4), (1, 2, 1, 12, (6, 5, 6, 5), None), (2, 2, 4, 6, (-1, 2, 3, 0), None),
    (1, 3, 3, 5, (1, 1, 2, 0), None), (3, 2, 7, 5, (4, 3, 2, 5), 0.6),
]


def flrelu_fn(up, down, fu, fd, padding, clamp, gain=math.sqrt(2), slope=0.2, tile=0):
    "filtered_lrelu(impl, x, b); `tile` > 0 splits the CPU build's work in tiles, as the CUDA kernel does."
    return lambda impl, x, b: ops.filtered_lrelu(x, fu, fd, b, up=up, down=down, padding=padding, gain=gain,
                                                 slope=slope, clamp=clamp, impl=impl, cpu_tile=tile)


@pytest.mark.parametrize('up,down,ku,kd,padding,clamp', FLRELU_CASES)
@pytest.mark.parametrize('separable', [True, False])
@pytest.mark.parametrize('tile', [0, 1, 5])
def test_filtered_lrelu_fused_matches_reference(up, down, ku, kd, padding, clamp, separable, tile):
    fu = None if ku == 1 else lowpass(ku, 0.5 / up)
    fd = None if kd == 1 else lowpass(kd, 0.5 / down)
    if not separable:
        fu = None if fu is None else torch.outer(fu, fu)
        fd = None if fd is None else torch.outer(fd, fd)
    x, b = t64(RNG.normal(size=(2, 3, 10, 9))), t64(RNG.normal(size=3))
    fn = flrelu_fn(up, down, fu, fd, padding, clamp, tile=tile)   # tile 0: one tile per plane; else CUDA's tiling
    for r, c in zip(values_and_grads(fn, [x, b], 'ref'), values_and_grads(fn, [x, b], 'cpu')):
        assert_same(r, c, 1e-12, 'filtered_lrelu float64')
    for r, c in zip(values_and_grads(fn, [x.float(), b.float()], 'ref'), values_and_grads(fn, [x.float(), b.float()], 'cpu')):
        assert_same(r, c, 2e-5, 'filtered_lrelu float32')


@pytest.mark.parametrize('up,down,ku,kd,padding,out', [(2, 2, 12, 12, (9, 8, 9, 8), 36), (4, 2, 24, 12, (-6, -9, -6, -9), 52),
                                                       (2, 2, 12, 12, (-11, -12, -11, -12), 16)])
@pytest.mark.parametrize('tile', [0, 8])
def test_filtered_lrelu_fused_stylegan3_t_layers(up, down, ku, kd, padding, out, tile):
    "The exact geometries of StyleGAN3-T's layers (see test_ops.py), 38x38 inputs, clamp 256."
    fu, fd = lowpass(ku, 0.5 / up), lowpass(kd, 0.25)
    x, b = t64(RNG.normal(size=(2, 3, 38, 38)) * 100), t64(RNG.normal(size=3))      # large enough to hit the clamp
    fn = flrelu_fn(up, down, fu, fd, padding, 256.0, tile=tile)
    got, want = values_and_grads(fn, [x, b], 'cpu'), values_and_grads(fn, [x, b], 'ref')
    assert got[0].shape == (2, 3, out, out)
    for r, c in zip(want, got):
        assert_same(r, c, 1e-12, 'stylegan3-t layer')


@pytest.mark.parametrize('up,down,clamp', [(2, 2, None), (4, 2, 0.9), (1, 1, 0.5), (2, 1, None)])
def test_filtered_lrelu_fused_gradgradcheck(up, down, clamp):
    fu, fd = lowpass(2 * up, 0.5 / up), lowpass(4, 0.5 / down)
    x = t64(RNG.normal(size=(1, 2, 5, 6))).requires_grad_()
    b = t64(RNG.normal(size=2) * 0.1).requires_grad_()
    fn = lambda x, b: ops.filtered_lrelu(x, fu, fd, b, up=up, down=down, padding=2, clamp=clamp, impl='cpu')
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('tile', [0, 2])
def test_filtered_lrelu_fused_at_kinks_and_clamp(dtype, tile):
    """Upsampled samples exactly at 0 and at +-clamp. With fu = [1, 1] and up = 2 the upsampled signal is
    the input repeated (gain up^2 = 4 times taps 1/2 * 1/2), so it holds exact values: 0, the clamp
    boundary c/g, and values just past it. Values, gradients and double gradients agree exactly."""
    gain, slope, clamp = 2.0, 0.25, 1.0
    vals = [0.0, 0.5, -2.0, 0.5 + 2 ** -12, -2.0 - 2 ** -10, 0.25, -1.0, 3.0, -0.0]   # u = 0, +-c/g (for lrelu), past them
    x = torch.tensor(vals * 4, dtype=dtype)[:30].reshape(1, 1, 5, 6)
    x = torch.cat([x, -x.flip(-1)], 1)                                               # [1, 2, 5, 6]
    b = torch.zeros(2, dtype=dtype)
    for fu, fd, up, down, pad in [(None, None, 1, 1, 0), (ops_reference.setup_filter([1, 1]), ops_reference.setup_filter([1, 1]), 2, 2, 1)]:
        fn = flrelu_fn(up, down, fu, fd, pad, clamp, gain=gain, slope=slope, tile=tile)
        for r, c in zip(values_and_grads(fn, [x, b], 'ref'), values_and_grads(fn, [x, b], 'cpu')):
            assert torch.equal(r, c), (fu is None, r - c)


@pytest.mark.parametrize('separable', [True, False])
def test_filtered_lrelu_tile_size_is_an_argument_and_does_not_change_the_result(separable):
    "The CPU build's tile size is an argument of the op (no module state): tiles 0, 3 and 8 give the same values and grads."
    assert not hasattr(ops, 'CPU_TILE')
    fu, fd = lowpass(12, 0.25), lowpass(12, 0.25)
    if not separable: fu, fd = torch.outer(fu, fu), torch.outer(fd, fd)
    x, b = t64(RNG.normal(size=(2, 3, 19, 17))), t64(RNG.normal(size=3))
    runs = [values_and_grads(flrelu_fn(2, 2, fu, fd, (5, 6, 4, 7), 0.8, tile=t), [x, b], 'cpu') for t in (0, 3, 8)]
    for other in runs[1:]:
        for r, c in zip(runs[0], other):
            assert_same(r, c, 1e-13, 'tile sizes')
    with pytest.raises(ValueError, match='cpu_tile'):
        ops.filtered_lrelu(x, fu, fd, b, up=2, down=2, padding=2, impl='cpu', cpu_tile=-1)


def decode_codes(words: torch.Tensor, planes: int, hu: int, wu: int) -> np.ndarray:
    "The 2-bit codes as [planes, hu, wu]: 16 per int32 word, each plane starting on a fresh word."
    w = words.numpy().view(np.uint32).reshape(planes, -1)
    idx = np.arange(hu * wu)
    return ((w[:, idx // 16] >> (2 * (idx % 16)).astype(np.uint32)) & 3).reshape(planes, hu, wu)


@pytest.mark.parametrize('tile', [0, 1, 3, 7])
def test_filtered_lrelu_codes(tile):
    """The compact codes say, for each upsampled sample an output reads, whether it was positive (0),
    negative (1) or clamped (2) -- the same for every tiling -- in 2 bits per sample."""
    up, down, pad, gain, slope, clamp = 2, 2, (5, 6, 4, 7), 1.5, 0.2, 0.6
    fu, fd = lowpass(12, 0.25), lowpass(12, 0.25)
    x, b = torch.randn(2, 3, 11, 10), torch.randn(3)
    plan = ops._Plan(up, pad, float(up * up), down, (0, 0, 0, 0), 1.0)
    ta, tb = ops._corr_taps(fu, False, 'cpu'), ops._corr_taps(fd, False, 'cpu')
    y, codes = ops._filtered_lrelu_op(x, b, ta, tb, *plan.args(), slope, gain, clamp, tile)
    (hu, wu), (ho, wo) = plan.sizes(11, 10, ta, tb)
    assert codes.dtype == torch.int32 and codes.numel() == 6 * math.ceil(hu * wu / 16)   # 2 bits per sample
    u = ops_reference.upfirdn2d_ref(x + b[:, None, None], fu, ops_reference.Geometry((up, up), (1, 1), pad), False, up * up)
    v = torch.nn.functional.leaky_relu(u, slope) * gain
    want = np.where(v.abs().numpy() > clamp, 2, np.where(u.numpy() > 0, 0, 1)).reshape(6, hu, wu)
    used_h, used_w = (ho - 1) * down + 12, (wo - 1) * down + 12                             # samples some output reads
    got = decode_codes(codes, 6, hu, wu)
    np.testing.assert_array_equal(got[:, :used_h, :used_w], want[:, :used_h, :used_w])


def test_filtered_lrelu_fused_keeps_a_fraction_of_the_memory():
    "For backward the fused path keeps 2 bits per upsampled sample (plus filters), the reference far more."
    fu, fd = lowpass(12, 0.25), lowpass(12, 0.25)
    x = torch.randn(2, 64, 36, 36, requires_grad=True)
    b = torch.zeros(64, requires_grad=True)
    run = lambda impl: lambda: ops.filtered_lrelu(x, fu, fd, b, up=2, down=2, padding=(6, 5, 6, 5), clamp=256, impl=impl)
    ref, fused = ops.saved_bytes(run('ref')), ops.saved_bytes(run('cpu'))
    hu = 36 * 2 + 11 - 12 + 1
    assert fused < 2 * 64 * hu * hu / 4 + 4096            # codes: a quarter byte per upsampled sample
    assert fused < ref / 20, (fused, ref)


# --- torch.library and torch.compile ---------------------------------------------------------------------------------
def test_ops_registered_with_torch_library():
    for name in ('bias_act', 'bias_act_grad', 'bias_act_grad2', 'upfirdn2d', 'filtered_lrelu', 'filtered_lrelu_masked'):
        assert hasattr(getattr(torch.ops, ops._NS), name), name


def test_torch_compile_traces_the_fused_ops():
    fu, fd = ops_reference.setup_filter([1, 3, 5, 3, 1, 0.5]), ops_reference.setup_filter([1, 2, 4, 2, 1, 1])

    def layer(x, b, impl):
        y = ops.bias_act(x, b, act='lrelu', impl=impl)
        y = ops.upfirdn2d(y, fu, up=2, padding=3, impl=impl)
        return ops.filtered_lrelu(y, fu, fd, b, up=2, down=2, padding=5, clamp=1.0, impl=impl)

    x, b = torch.randn(2, 3, 8, 8, requires_grad=True), torch.randn(3, requires_grad=True)
    compiled = torch.compile(lambda x, b: layer(x, b, 'cpu'), backend='aot_eager', fullgraph=True)
    y, want = compiled(x, b), layer(x, b, 'ref')
    assert_same(want.detach(), y.detach(), 1e-5, 'compiled')
    g, g_want = torch.autograd.grad(y.square().sum(), [x, b]), torch.autograd.grad(want.square().sum(), [x, b])
    for a, c in zip(g_want, g):
        assert_same(a, c, 1e-5, 'compiled grad')


# --- impl selection and bad input ------------------------------------------------------------------------------------
def test_impl_selection(monkeypatch):
    calls = []
    monkeypatch.setattr(ops, '_ext', lambda t: calls.append(t) or ops_build.require_ops('cpu'))
    x, f = torch.randn(1, 2, 8, 8), ops_reference.setup_filter([1, 2, 1])
    ops.upfirdn2d(x, f[:, None] * f, impl='auto')          # CPU tensor, 2-D filter: 'auto' is the reference
    ops.filtered_lrelu(x, f, f, up=2, down=2, padding=1, impl='ref')
    assert not calls
    ops.filtered_lrelu(x, f, f, up=2, down=2, padding=1, impl='cpu')
    assert len(calls) == 1
    ops.upfirdn2d(x, f, impl='auto')                       # separable: 'auto' is the fast CPU path
    assert len(calls) == 2
    with pytest.raises(ValueError, match="impl='cuda' needs x on the cuda device"):
        ops.bias_act(x, impl='cuda')
    with pytest.raises(ValueError, match='impl=.gpu. is unknown'):
        ops.upfirdn2d(x, f, impl='gpu')


@pytest.mark.parametrize('impl', ['ref', 'cpu'])
def test_layouts_give_correct_results(impl):
    "Non-contiguous, channels_last and half-precision inputs give the result of the contiguous float input."
    fu, fd = lowpass(12, 0.25), lowpass(12, 0.25)
    x, b = torch.randn(2, 4, 12, 14), torch.randn(4)
    want = ops.filtered_lrelu(x, fu, fd, b, up=2, down=2, padding=6, impl='ref')
    variants = {'channels_last': x.to(memory_format=torch.channels_last),
                'transposed view': x.transpose(2, 3).contiguous().transpose(2, 3),
                'strided view': torch.randn(2, 4, 24, 14)[:, :, ::2]}
    variants['strided view'].copy_(x)
    for name, xv in variants.items():
        assert not xv.is_contiguous()
        got = ops.filtered_lrelu(xv, fu, fd, b, up=2, down=2, padding=6, impl=impl)
        assert_same(want, got, 1e-5, name)
        assert_same(ops.upfirdn2d(x, fu, up=2, padding=3), ops.upfirdn2d(xv, fu, up=2, padding=3, impl=impl), 1e-5, name)
        assert_same(ops.bias_act(x, b, act='swish'), ops.bias_act(xv, b, act='swish', impl=impl), 1e-6, name)
    for dtype in (torch.float16, torch.bfloat16):
        got = ops.filtered_lrelu(x.to(dtype), fu, fd, b.to(dtype), up=2, down=2, padding=6, impl=impl)
        assert got.dtype == dtype
        assert_same(want, got.float(), 2e-2, str(dtype))


@pytest.mark.parametrize('impl', ['ref', 'cpu'])
def test_bad_input_gets_a_clear_error(impl):
    f = ops_reference.setup_filter([1, 2, 1])
    x = torch.randn(1, 2, 8, 8)
    cases = [
        (lambda: ops.upfirdn2d(x[0], f, impl=impl), r'4-D tensor \[N, C, H, W\]'),
        (lambda: ops.filtered_lrelu(x[None], f, f, impl=impl), r'4-D tensor \[N, C, H, W\]'),
        (lambda: ops.upfirdn2d(x.long(), f, impl=impl), 'floating-point'),
        (lambda: ops.upfirdn2d(x, f, up=0, impl=impl), 'integers >= 1'),
        (lambda: ops.upfirdn2d(x, f, down=1.5, impl=impl), 'int or an'),
        (lambda: ops.upfirdn2d(x, f, padding=(1, 2, 3), impl=impl), 'padding must be'),
        (lambda: ops.upfirdn2d(x, torch.ones(1, 2, 3), impl=impl), 'a filter must be'),
        (lambda: ops.upfirdn2d(x, ops_reference.setup_filter(np.ones(20)), impl=impl), 'filter is larger'),
        (lambda: ops.filtered_lrelu(x, f, ops_reference.setup_filter(np.ones(30)), up=2, impl=impl), 'larger than'),
        (lambda: ops.filtered_lrelu(x, f, f, up=(2, 1), impl=impl), 'same factor on both axes'),
        (lambda: ops.filtered_lrelu(x, f, f, down=0, impl=impl), 'integers >= 1'),
        (lambda: ops.filtered_lrelu(x, f, f, b=torch.zeros(3), impl=impl), '1-D tensor of 2 values'),
        (lambda: ops.filtered_lrelu(x, f, f, b=torch.zeros(2, dtype=torch.float64), impl=impl), 'must match x'),
        (lambda: ops.filtered_lrelu(x, f, f, clamp=-1, impl=impl), 'clamp'),
        (lambda: ops.bias_act(x, torch.zeros(3), impl=impl), '1-D tensor of 2 values'),
        (lambda: ops.bias_act(x, act='gelu', impl=impl), "act='gelu' is unknown"),
        (lambda: ops.bias_act(x, act='tanh', alpha=0.3, impl=impl), 'takes no alpha'),
    ]
    for fn, message in cases:
        with pytest.raises(ValueError, match=message):
            fn()


def test_large_filters_and_factors_on_the_cpu_build():
    "Filters much larger than StyleGAN's, and up/down factors of 8, still give the reference result."
    x, b = torch.randn(1, 2, 20, 20), torch.randn(2)
    big = lowpass(80, 0.06)
    for fu, fd, up, down, pad in [(big, lowpass(12), 2, 2, 40), (lowpass(16), lowpass(64, 0.06), 8, 8, 8)]:
        fn = flrelu_fn(up, down, fu, fd, pad, None)
        assert_same(fn('ref', x, b), fn('cpu', x, b), 1e-5, 'large')
    assert_same(ops.upfirdn2d(x, big, up=8, down=3, padding=40), ops.upfirdn2d(x, big, up=8, down=3, padding=40, impl='cpu'),
                1e-5, 'upfirdn2d large')


# --- build machinery -------------------------------------------------------------------------------------------------
TINY_SOURCE = textwrap.dedent('''
    #include <Python.h>
    #define CAT_(a, b) a##b
    #define CAT(a, b) CAT_(a, b)
    #define STR_(a) #a
    #define STR(a) STR_(a)
    static PyModuleDef def_ = {PyModuleDef_HEAD_INIT, STR(TORCH_EXTENSION_NAME), nullptr, -1, nullptr};
    PyMODINIT_FUNC CAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
        PyObject* m = PyModule_Create(&def_);
        PyModule_AddIntConstant(m, "answer", ANSWER);
        return m;
    }
''')


def tiny_source(tmp_path, answer=42):
    src = tmp_path / f'tiny{answer}.cpp'
    src.write_text(TINY_SOURCE.replace('ANSWER', str(answer)))
    return src


def test_build_recovers_from_a_killed_build(tmp_path):
    """A builder killed while holding the lock, in the middle of a build (a half-written folder, torch's own
    lock file left behind): the next build neither waits forever nor trusts the leftovers."""
    build_dir = tmp_path / 'cache' / 'tiny_killed'
    holder = subprocess.Popen(
        [sys.executable, '-c', textwrap.dedent(f'''
            import time
            from pathlib import Path
            from sgxl import ops_build
            d = Path({str(build_dir)!r})
            with ops_build.file_lock(d.parent / (d.name + '.lock')):
                d.mkdir(parents=True)
                (d / 'lock').write_text('')                     # torch's lock file, as a killed build leaves it
                (d / 'tiny_killed.so').write_text('garbage')    # a half-written output
                print('locked', flush=True)
                time.sleep(600)
        ''')], stdout=subprocess.PIPE, text=True, env={**os.environ, 'PYTHONPATH': str(Path(__file__).parents[1])})
    assert holder.stdout.readline().strip() == 'locked'
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    mod = ops_build.build_extension('tiny_killed', [tiny_source(tmp_path)], build_dir)
    assert mod.answer == 42 and (build_dir / 'BUILT').exists()


def test_build_cache_reuses_and_rebuilds(tmp_path):
    build_dir = tmp_path / 'cache' / 'tiny_cache'
    src = tiny_source(tmp_path)
    ops_build.build_extension('tiny_cache', [src], build_dir)
    so = next(build_dir.glob('tiny_cache*.so'))
    stamp = so.stat().st_mtime_ns
    ops_build.build_extension('tiny_cache', [src], build_dir)          # unchanged: nothing recompiled
    assert so.stat().st_mtime_ns == stamp


def test_source_hash_follows_the_sources(tmp_path, monkeypatch):
    "The cache key changes when a source or the shared header changes (and only the sources decide the hash)."
    before = {k: ops_build.source_hash(k) for k in ('cpu', 'cuda')}
    fake = tmp_path / 'csrc'
    fake.mkdir()
    for p in ops_build.CSRC.iterdir():
        if p.is_file():
            (fake / p.name).write_bytes(p.read_bytes())
    monkeypatch.setattr(ops_build, 'CSRC', fake)
    assert {k: ops_build.source_hash(k) for k in ('cpu', 'cuda')} == before
    key = ops_build.build_key('cpu')
    (fake / 'sgxl_ops.h').write_text((fake / 'sgxl_ops.h').read_text() + '\n// changed\n')
    assert all(ops_build.source_hash(k) != before[k] for k in ('cpu', 'cuda')) and ops_build.build_key('cpu') != key


def test_failed_build_warns_once_and_falls_back(tmp_path, monkeypatch):
    fake = tmp_path / 'csrc'
    fake.mkdir()
    for name in ops_build.HEADERS:
        (fake / name).write_text('')
    (fake / 'sgxl_ops_cpu.cpp').write_text('this is not C++;\n')
    monkeypatch.setattr(ops_build, 'CSRC', fake)
    monkeypatch.setenv('SGXL_OPS_CACHE', str(tmp_path / 'cache'))
    saved_modules, saved_errors = dict(ops_build._modules), dict(ops_build._errors)
    ops_build.reset()
    try:
        with pytest.warns(RuntimeWarning, match='could not be built.*reference path.*error'):
            assert ops_build.load_ops('cpu') is None
        with warnings.catch_warnings():
            warnings.simplefilter('error')                                 # no second warning
            assert ops_build.load_ops('cpu') is None
        assert ops_build.ops_status()['cpu'].startswith('failed: ')
        with pytest.raises(RuntimeError, match="impl='cpu': the fused cpu ops are not available.*impl='ref'"):
            ops.filtered_lrelu(torch.randn(1, 1, 4, 4), impl='cpu')
        x = torch.randn(1, 1, 4, 4)
        assert torch.equal(ops.filtered_lrelu(x, impl='auto'), ops.filtered_lrelu(x, impl='ref'))
    finally:
        ops_build.reset()
        ops_build._modules.update(saved_modules)
        ops_build._errors.update(saved_errors)


# --- CUDA (skipped without a GPU) --------------------------------------------------------------------------------------
@cuda_only
@pytest.mark.parametrize('up,down,ku,kd,padding,clamp', FLRELU_CASES)
@pytest.mark.parametrize('separable', [True, False])
def test_filtered_lrelu_cuda_matches_reference(up, down, ku, kd, padding, clamp, separable):
    assert ops_build.load_ops('cuda') is not None, ops_build.ops_status()
    fu = None if ku == 1 else lowpass(ku, 0.5 / up)
    fd = None if kd == 1 else lowpass(kd, 0.5 / down)
    if not separable:
        fu = None if fu is None else torch.outer(fu, fu)
        fd = None if fd is None else torch.outer(fd, fd)
    dev = lambda t: None if t is None else t.cuda()
    x, b = t64(RNG.normal(size=(2, 5, 40, 37))).cuda(), t64(RNG.normal(size=5)).cuda()
    fn = flrelu_fn(up, down, dev(fu), dev(fd), padding, clamp)
    want = values_and_grads(fn, [x, b], 'ref')                               # float64 reference
    for dtype, rtol in [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.float16, 1e-3), (torch.bfloat16, 1e-2)]:
        got = values_and_grads(fn, [x.to(dtype), b.to(dtype)], 'cuda')
        if dtype in (torch.float16, torch.bfloat16):                      # inputs rounded: compare to the rounded input
            want_d = values_and_grads(fn, [x.to(dtype).double(), b.to(dtype).double()], 'ref')
            rtol_ = rtol * 2                                                 # outputs and gradients rounded once more
        else:
            want_d, rtol_ = want, rtol
        for r, c in zip(want_d, got):
            assert_same(r, c.double(), rtol_, f'cuda {dtype}')


@cuda_only
def test_cuda_codes_match_cpu_codes():
    fu, fd = lowpass(24, 0.125), lowpass(12, 0.25)
    x, b = torch.randn(2, 3, 36, 36), torch.randn(3)
    plan = ops._Plan(4, (13, 11, 13, 11), 16.0, 2, (0, 0, 0, 0), 1.0)
    args = lambda d: (ops._corr_taps(fu, False, d), ops._corr_taps(fd, False, d), *plan.args(), 0.2, 1.4, 0.7, 0)
    y_cpu, c_cpu = ops._filtered_lrelu_op(x, b, *args('cpu'))
    y_gpu, c_gpu = ops._filtered_lrelu_op(x.cuda(), b.cuda(), *args('cuda'))
    (hu, wu), (ho, wo) = plan.sizes(36, 36, fu, fd)
    used_h = (ho - 1) * 2 + 12
    a, g = decode_codes(c_cpu, 6, hu, wu), decode_codes(c_gpu.cpu(), 6, hu, wu)
    agree = (a[:, :used_h, :used_h] == g[:, :used_h, :used_h]).mean()
    assert agree > 0.9999, agree                          # a sample within rounding of 0 or the clamp may differ
    assert_same(y_cpu, y_gpu.cpu(), 1e-5, 'cuda vs cpu')


@cuda_only
@pytest.mark.parametrize('act', list(ops_reference.ACTIVATIONS))
def test_bias_act_cuda_matches_reference(act):
    x, b = t64(RNG.normal(size=(4, 8, 5, 6)) * 2).cuda(), t64(RNG.normal(size=8)).cuda()
    fn = lambda impl, x, b: ops.bias_act(x, b, act=act, clamp=1.7, impl=impl)
    want = values_and_grads(fn, [x, b], 'ref')
    for dtype, rtol in [(torch.float64, 1e-12), (torch.float32, 1e-5)]:
        for r, c in zip(want, values_and_grads(fn, [x.to(dtype), b.to(dtype)], 'cuda')):
            assert_same(r, c.double(), rtol, f'{act} {dtype}')
    half = fn('cuda', x.half(), b.half())
    assert_same(fn('ref', x.half().double(), b.half().double()), half.double(), 1e-3, 'fp16')


@cuda_only
@pytest.mark.parametrize('up,down,taps,padding', UPFIRDN_CASES)
def test_upfirdn2d_cuda_matches_reference(up, down, taps, padding):
    f = ops_reference.setup_filter(RNG.uniform(0.1, 1, taps)).cuda()
    x = t64(RNG.normal(size=(2, 3, 19, 21))).cuda()
    fn = lambda impl, x: ops.upfirdn2d(x, f, up=up, down=down, padding=padding, gain=1.3, impl=impl)
    want = values_and_grads(fn, [x], 'ref')
    for dtype, rtol in [(torch.float64, 1e-12), (torch.float32, 1e-5)]:
        for r, c in zip(want, values_and_grads(fn, [x.to(dtype)], 'cuda')):
            assert_same(r, c.double(), rtol, f'upfirdn2d {dtype}')


@cuda_only
def test_cuda_gradgradcheck_and_auto():
    fu, fd = lowpass(8, 0.125).cuda(), lowpass(4, 0.25).cuda()
    x = t64(RNG.normal(size=(1, 2, 6, 7))).cuda().requires_grad_()
    b = t64(RNG.normal(size=2) * 0.1).cuda().requires_grad_()
    fn = lambda x, b: ops.filtered_lrelu(x, fu, fd, b, up=4, down=2, padding=3, clamp=0.9, impl='cuda')
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))
    assert ops._pick_impl(x, 'auto', 'test') == 'cuda'
