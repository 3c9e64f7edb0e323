"""sgxl.ops: the reference path against independent formulations, and its first and second gradients.

The oracles here do not share code with sgxl.ops: `upfirdn2d_scatter` scatters every input sample
through the filter (numpy, float64) and `upfirdn_scipy` uses scipy.signal.upfirdn; the activations are
written out in numpy.
"""
import math

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from sgxl import ops, ops_reference

RNG = np.random.default_rng(0)


# --- independent oracles --------------------------------------------------------------------------------
def upfirdn2d_scatter(x, f, up, down, pad, flip=False, gain=1.0):
    """x [H, W], f [fh, fw] (2-D) in numpy float64. Input sample (i, j) sits at padded position
    (i*uy + y0, j*ux + x0); a true convolution sends it to valid output r with tap k = r + K - 1 - pos."""
    (ux, uy), (dx, dy), (x0, x1, y0, y1) = up, down, pad
    H, W = x.shape
    fh, fw = f.shape
    if flip:                                   # correlation = true convolution with the flipped filter
        f = f[::-1, ::-1]
    ho, wo = (H * uy + y0 + y1 - fh) // dy + 1, (W * ux + x0 + x1 - fw) // dx + 1
    out = np.zeros((ho, wo))
    pos_y = np.arange(H) * uy + y0                # [H]
    pos_x = np.arange(W) * ux + x0                # [W]
    for ky in range(fh):
        for kx in range(fw):
            ry, rx = pos_y - (fh - 1 - ky), pos_x - (fw - 1 - kx)   # valid-conv index each input reaches via this tap
            oky = (ry % dy == 0) & (ry >= 0) & (ry // dy < ho)
            okx = (rx % dx == 0) & (rx >= 0) & (rx // dx < wo)
            np.add.at(out, (ry[oky, None] // dy, rx[None, okx] // dx), gain * f[ky, kx] * x[np.ix_(oky, okx)])
    return out


def upfirdn_scipy(x, f1, up, down, pad):
    """Separable 1-D filter via scipy.signal.upfirdn along x then y. scipy computes the full true
    convolution of the zero-inserted signal, s[t] = sum_i x[i] f[t - i*up]; the valid, padded output j of
    our definition is s[j*down + K - 1 - pad0]."""
    def axis(a, u, d, p0, p1):
        K = len(f1)
        n_out = (a.shape[-1] * u + p0 + p1 - K) // d + 1
        s = scipy.signal.upfirdn(f1, a, up=u, down=1, axis=-1)
        idx = np.arange(n_out) * d + K - 1 - p0
        ok = (idx >= 0) & (idx < s.shape[-1])
        out = np.zeros(a.shape[:-1] + (n_out,))
        out[..., ok] = s[..., idx[ok]]
        return out
    (ux, uy), (dx, dy), (x0, x1, y0, y1) = up, down, pad
    a = axis(x, ux, dx, x0, x1)
    return axis(a.T, uy, dy, y0, y1).T


def lrelu_np(v, slope):
    return np.where(v > 0, v, v * slope)


def filtered_lrelu_np(x, fu, fd, b, up, down, pad, gain, slope, clamp):
    "x [C, H, W]; fu, fd 2-D numpy filters; the op written as its definition, channel by channel."
    out = []
    for c in range(x.shape[0]):
        xc = x[c] + (0 if b is None else b[c])
        u = upfirdn2d_scatter(xc, fu, (up, up), (1, 1), pad, gain=up * up)
        v = lrelu_np(u, slope) * gain
        if clamp is not None:
            v = np.clip(v, -clamp, clamp)
        out.append(upfirdn2d_scatter(v, fd, (1, 1), (down, down), (0, 0, 0, 0)))
    return np.stack(out)


def as2d(f):
    f = f.numpy().astype(np.float64)
    return np.outer(f, f) if f.ndim == 1 else f


def lowpass(taps, cutoff=0.25):
    "A Kaiser-windowed sinc, the kind of filter StyleGAN3-T uses (any taps would do for these tests)."
    return ops_reference.setup_filter(scipy.signal.firwin(taps, min(cutoff * 2, 0.9), fs=2))


# --- upfirdn2d ---------------------------------------------------------------------------------------------
# (up, down, filter taps, padding): every case StyleGAN3-T uses (up 2 / 4 with 12 / 24 taps, down 2 with 12
# taps, asymmetric padding), the [1,3,3,1] resampling of the ResNet D, and odd corners.
UPFIRDN_CASES = [
    (1, 1, 1, 0), (1, 1, 3, 1), (1, 1, 4, (2, 1)), (2, 1, 4, (2, 1, 2, 1)), (1, 2, 4, (1, 1, 1, 1)),
    (2, 1, 12, (11, 10, 9, 12)), (4, 1, 24, (20, 23, 22, 21)), (1, 2, 12, (5, 6, 4, 7)), (2, 2, 12, (5, 6, 5, 6)),
    (4, 2, 24, (13, 10, 13, 10)), (3, 1, 5, (2, -1, 0, 3)), (1, 3, 2, (-1, 2, 3, -2)), (2, 4, 7, (3, 0, 1, 2)),
]


@pytest.mark.parametrize('up,down,taps,padding', UPFIRDN_CASES)
@pytest.mark.parametrize('separable', [True, False])
def test_upfirdn2d_ref_matches_scatter_loop(up, down, taps, padding, separable):
    f = ops_reference.setup_filter(RNG.uniform(0.1, 1, taps), separable=separable)
    x = torch.tensor(RNG.normal(size=(2, 3, 9, 11)))
    flip = taps % 3 == 1                          # exercise flip_filter too (these filters are asymmetric)
    y = ops.upfirdn2d(x, f.double(), up=up, down=down, padding=padding, flip_filter=flip, gain=1.7, impl='ref')
    g = ops_reference.resolve_upfirdn2d(x, f, up, down, padding)
    for n in range(2):
        for c in range(3):
            want = upfirdn2d_scatter(x[n, c].numpy(), as2d(f), g.up, g.down, g.pad, flip, 1.7)
            np.testing.assert_allclose(y[n, c].numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('up,down,taps,padding', UPFIRDN_CASES)
def test_upfirdn2d_ref_matches_scipy(up, down, taps, padding):
    taps_ = RNG.uniform(0.1, 1, taps)
    f = torch.tensor(taps_)                      # float64 taps, used as given
    x = torch.tensor(RNG.normal(size=(1, 1, 10, 7)))
    g = ops_reference.resolve_upfirdn2d(x, f, up, down, padding)
    y = ops.upfirdn2d(x, f, up=up, down=down, padding=padding)
    np.testing.assert_allclose(y[0, 0].numpy(), upfirdn_scipy(x[0, 0].numpy(), taps_, g.up, g.down, g.pad), rtol=1e-10, atol=1e-12)


def test_upfirdn2d_anisotropic_factors():
    f = ops_reference.setup_filter([1, 2, 3, 4, 2])
    x = torch.tensor(RNG.normal(size=(1, 2, 6, 8)))
    y = ops.upfirdn2d(x, f.double(), up=(2, 1), down=(1, 3), padding=(1, 2, 3, 0))
    want = upfirdn2d_scatter(x[0, 1].numpy(), as2d(f), (2, 1), (1, 3), (1, 2, 3, 0))
    np.testing.assert_allclose(y[0, 1].numpy(), want, rtol=1e-10, atol=1e-12)


def test_helpers_keep_size_and_dc():
    for taps in ([1, 3, 3, 1], list(scipy.signal.firwin(12, 0.5))):
        f = ops_reference.setup_filter(taps)
        x = torch.ones(1, 2, 16, 16)
        k = len(taps)
        up, dn, same = ops.upsample2d(x, f), ops.downsample2d(x, f), ops.filter2d(x, f)
        assert up.shape == (1, 2, 32, 32) and dn.shape == (1, 2, 8, 8) and same.shape == x.shape
        b = k // 2 + 1
        torch.testing.assert_close(up[..., b:-b, b:-b], torch.ones_like(up[..., b:-b, b:-b]))
        torch.testing.assert_close(same[..., b:-b, b:-b], torch.ones_like(same[..., b:-b, b:-b]))
        bd = k // 4 + 1
        torch.testing.assert_close(dn[..., bd:-bd, bd:-bd], torch.ones_like(dn[..., bd:-bd, bd:-bd]))


def test_upsample_then_downsample_is_centred():
    "A smooth ramp upsampled then downsampled with a symmetric filter comes back in place (no shift)."
    f = ops_reference.setup_filter(scipy.signal.firwin(12, 0.5))
    ramp = torch.linspace(-1, 1, 32, dtype=torch.float64)
    x = (ramp[None, :] + 0 * ramp[:, None])[None, None]
    y = ops.downsample2d(ops.upsample2d(x, f.double()), f.double())
    torch.testing.assert_close(y[..., 8:-8, 8:-8], x[..., 8:-8, 8:-8], atol=2e-3, rtol=0)


def test_setup_filter():
    f = ops_reference.setup_filter([1, 2, 1])
    assert f.dtype == torch.float32 and f.shape == (3,) and abs(float(f.sum()) - 1) < 1e-6
    f2 = ops_reference.setup_filter([1, 2, 1], separable=False, gain=4)
    assert f2.shape == (3, 3) and abs(float(f2.sum()) - 4) < 1e-5
    assert abs(float(ops_reference.setup_filter([1, 2, 1], gain=4).sum()) - 2) < 1e-6       # sqrt(gain) per axis
    assert torch.equal(ops_reference.setup_filter([1, 2, 3], flip_filter=True, normalize=False), torch.tensor([3., 2, 1]))
    assert ops_reference.setup_filter(None).shape == (1,)
    with pytest.raises(ValueError, match='sum to 0'):
        ops_reference.setup_filter([1, -1])


# --- bias_act ----------------------------------------------------------------------------------------------
def act_np(name, v, alpha):
    sig = 1 / (1 + np.exp(-v))
    alpha = 0.0 if alpha is None else alpha
    return {
        'linear': v, 'relu': np.maximum(v, 0), 'lrelu': np.where(v > 0, v, alpha * v), 'tanh': np.tanh(v),
        'sigmoid': sig, 'elu': np.where(v > 0, v, alpha * (np.exp(v) - 1)),
        'selu': 1.0507009873554804934193349852946 * np.where(v > 0, v, 1.6732632423543772848170429916717 * (np.exp(v) - 1)),
        'softplus': np.where(v > 20, v, np.log1p(np.exp(np.minimum(v, 20)))), 'swish': v * sig,
    }[name]


@pytest.mark.parametrize('act', list(ops_reference.ACTIVATIONS))
@pytest.mark.parametrize('dim', [1, 2, -1])
def test_bias_act_ref_matches_formula(act, dim):
    x = torch.tensor(RNG.normal(size=(3, 4, 5)) * 3)
    b = torch.tensor(RNG.normal(size=x.shape[dim]))
    spec = ops_reference.ACTIVATIONS[act]
    alpha, gain = spec.default_alpha, spec.default_gain
    shape = [1, 1, 1]
    shape[dim] = -1
    v = x.numpy() + b.numpy().reshape(shape)
    want = act_np(act, v, alpha) * gain
    torch.testing.assert_close(ops.bias_act(x, b, dim=dim, act=act), torch.tensor(want))
    want_c = np.clip(act_np(act, v, 0.3 if alpha else None) * 1.5, -1.2, 1.2)
    got = ops.bias_act(x, b, dim=dim, act=act, alpha=0.3 if alpha else None, gain=1.5, clamp=1.2)
    torch.testing.assert_close(got, torch.tensor(want_c))


def test_bias_act_defaults():
    assert ops_reference.ACTIVATIONS['lrelu'].default_gain == math.sqrt(2) and ops_reference.ACTIVATIONS['tanh'].default_gain == 1
    x = torch.tensor([-2.0, 3.0])
    torch.testing.assert_close(ops.bias_act(x, dim=0, act='lrelu'), torch.tensor([-0.4, 3.0]) * math.sqrt(2))
    torch.testing.assert_close(ops.bias_act(x, dim=0), x)


# --- filtered_lrelu ----------------------------------------------------------------------------------------
# (up, down, fu taps, fd taps, padding): StyleGAN3-T's layers (up 2 / 4 with 6 taps per unit of up, down 2
# with 12 taps), the 2-D radial filter form of config R, and the trivial and odd cases.
FLRELU_CASES = [
    (2, 2, 12, 12, (6, 5, 6, 5)), (4, 2, 24, 12, (13, 11, 13, 11)), (2, 2, 12, 12, (5, 7, 4, 8)),
    (1, 1, 1, 1, 0), (2, 1, 12, 1, 5), (1, 2, 1, 12, (6, 5, 6, 5)), (2, 2, 4, 6, 1), (1, 1, 3, 3, (1, 1, 2, 0)),
]


@pytest.mark.parametrize('up,down,ku,kd,padding', FLRELU_CASES)
@pytest.mark.parametrize('separable', [True, False])
def test_filtered_lrelu_ref_matches_definition(up, down, ku, kd, padding, separable):
    fu = None if ku == 1 else lowpass(ku, 0.5 / up)
    fd = None if kd == 1 else lowpass(kd, 0.5 / max(down, 1))
    if not separable:
        fu = None if fu is None else fu[:, None] * fu[None, :]
        fd = None if fd is None else fd[:, None] * fd[None, :]
    x = torch.tensor(RNG.normal(size=(2, 3, 10, 9)))
    b = torch.tensor(RNG.normal(size=3))
    for gain, slope, clamp in [(math.sqrt(2), 0.2, None), (1.3, 0.1, 0.5)]:
        y = ops.filtered_lrelu(x, None if fu is None else fu.double(), None if fd is None else fd.double(), b,
                               up=up, down=down, padding=padding, gain=gain, slope=slope, clamp=clamp)
        one = np.ones((1, 1))
        for n in range(2):
            want = filtered_lrelu_np(x[n].numpy(), one if fu is None else as2d(fu), one if fd is None else as2d(fd),
                                     b.numpy(), up, down, ops_reference.parse_padding(padding), gain, slope, clamp)
            np.testing.assert_allclose(y[n].numpy(), want, rtol=1e-9, atol=1e-10)


def test_filtered_lrelu_output_size_formula():
    fu, fd = lowpass(24, 0.125), lowpass(12, 0.25)
    x = torch.randn(1, 2, 36, 30)
    y = ops.filtered_lrelu(x, fu, fd, up=4, down=2, padding=(10, 11, 12, 13))
    hu, wu = 36 * 4 + 25 - 24 + 1, 30 * 4 + 21 - 24 + 1
    assert y.shape == (1, 2, (hu - 12) // 2 + 1, (wu - 12) // 2 + 1)


# --- gradients (float64): first and second order -----------------------------------------------------------
def away_from_kinks(shape, lo=0.2):
    "Random values with |v| >= lo, so finite differences do not straddle a kink of relu/lrelu/clamp."
    v = RNG.normal(size=shape)
    return torch.tensor(np.sign(v) * (np.abs(v) + lo))


@pytest.mark.parametrize('act', list(ops_reference.ACTIVATIONS))
def test_bias_act_gradcheck(act):
    x = away_from_kinks((2, 3, 4)).requires_grad_()
    b = (torch.tensor(RNG.uniform(-0.05, 0.05, 3))).requires_grad_()
    clamp = 1.1 if act in ('tanh', 'sigmoid') else 2.5
    fn = lambda x, b: ops.bias_act(x, b, act=act, clamp=clamp)
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.parametrize('up,down,taps,padding', [(1, 1, 3, 1), (2, 1, 4, (2, 1, 2, 1)), (1, 2, 5, (2, 1, 0, 3)),
                                                   (4, 2, 8, (4, 3, 5, 2)), (2, 2, 3, (-1, 2, 1, 0))])
@pytest.mark.parametrize('separable', [True, False])
def test_upfirdn2d_gradcheck(up, down, taps, padding, separable):
    f = ops_reference.setup_filter(RNG.uniform(0.1, 1, taps), separable=separable).double()
    x = torch.tensor(RNG.normal(size=(1, 2, 5, 6)), requires_grad=True)
    fn = lambda x: ops.upfirdn2d(x, f, up=up, down=down, padding=padding, gain=1.3)
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize('up,down,clamp', [(2, 2, None), (4, 2, 0.9), (1, 1, 0.5)])
def test_filtered_lrelu_gradcheck(up, down, clamp):
    fu, fd = lowpass(2 * up, 0.5 / up).double(), lowpass(4, 0.5 / down).double()
    x = torch.tensor(RNG.normal(size=(1, 2, 5, 6)), requires_grad=True)
    b = torch.tensor(RNG.normal(size=2) * 0.1, requires_grad=True)
    fn = lambda x, b: ops.filtered_lrelu(x, fu, fd, b, up=up, down=down, padding=2, clamp=clamp)
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


# The exact filtered_lrelu geometries of a StyleGAN3-T generator (benchmarks/ops.py derives them from the
# paper's schedule): 38x38 after the 3x3 conv -> 36 (up 2, down 2), -> 52 (up 4, down 2, negative padding),
# and the critically sampled last layer's cropping padding (here 38 -> 16, the same padding as 278 -> 256).
SG3T_LAYERS = [(2, 2, 12, 12, (9, 8, 9, 8), 36), (4, 2, 24, 12, (-6, -9, -6, -9), 52),
               (2, 2, 12, 12, (-11, -12, -11, -12), 16)]


@pytest.mark.parametrize('up,down,ku,kd,padding,out', SG3T_LAYERS)
def test_filtered_lrelu_ref_stylegan3_t_layers(up, down, ku, kd, padding, out):
    fu, fd = lowpass(ku, 0.5 / up), lowpass(kd, 0.25)
    x, b = torch.tensor(RNG.normal(size=(1, 2, 38, 38))), torch.tensor(RNG.normal(size=2))
    y = ops.filtered_lrelu(x, fu.double(), fd.double(), b, up=up, down=down, padding=padding, clamp=1.0)
    assert y.shape == (1, 2, out, out)
    want = filtered_lrelu_np(x[0].numpy(), as2d(fu), as2d(fd), b.numpy(), up, down, padding, math.sqrt(2), 0.2, 1.0)
    np.testing.assert_allclose(y[0].numpy(), want, rtol=1e-9, atol=1e-10)
