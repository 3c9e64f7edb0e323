"""The fast CPU path (issue 11) against the reference, on the shapes the generator really runs.

benchmarks/cpu_step.py times two generators: a config-T generator at 32x32 (channel_base 8192, channel_max 256,
8 layers) and the tiny preset. Here every filtered_lrelu and bias_act call those generators make is recorded and
replayed with impl='ref' and impl='cpu' (forward, first gradients, and the gradient of the gradients), on both
builds of the kernels (AVX2 and the baseline instruction set). Then whole generators, 'auto' picking the fast
path on CPU, bfloat16, and a full tiny training step (G, D and R1 phases) giving the same losses either way.
"""
import math

import pytest
import torch

from sgxl import ops, ops_build, ops_reference, stylegan3
from sgxl.baseline import RungA
from sgxl.core import make_config, seed_everything
from sgxl.stylegan3 import Generator

BENCHMARKED = {                       # the models of benchmarks/cpu_step.py
    'a': lambda: make_config('A', resolution=32, num_layers=8, channel_base=8192, channel_max=256, batch=8),
    'tiny': lambda: make_config('A', 'tiny'),
}


@pytest.fixture(scope='module', autouse=True)
def cpu_build():
    if ops_build.load_ops('cpu') is None:
        pytest.fail(f"the CPU build of the fused ops failed: {ops_build.ops_status()['cpu']}")


@pytest.fixture(params=['native', 'base'])
def isa(request, monkeypatch):
    "Run a test on the AVX2 build (where the CPU has it) and on the baseline build (SGXL_CPU_ISA=base)."
    if request.param == 'base':
        monkeypatch.setenv('SGXL_CPU_ISA', 'base')
    else:
        monkeypatch.delenv('SGXL_CPU_ISA', raising=False)
    got = ops_build.load_ops('cpu').cpu_isa()
    assert got == 'base' if request.param == 'base' else got in ('avx2', 'base')
    return got


def record_calls(cfg):
    "The distinct filtered_lrelu and bias_act calls of cfg's generator in one forward pass."
    calls = {'filtered_lrelu': {}, 'bias_act': {}}
    real_fl, real_ba = stylegan3.filtered_lrelu, stylegan3.bias_act

    def fl(x, fu, fd, b, **kw):
        kw = {k: v for k, v in kw.items() if k != 'impl'}
        key = (tuple(x.shape[1:]), tuple(fu.tolist()), tuple(fd.tolist()), tuple(sorted(kw.items())))
        calls['filtered_lrelu'].setdefault(key, (x.shape, fu, fd, kw))
        return real_fl(x, fu, fd, b, impl='ref', **kw)

    def ba(x, b=None, **kw):
        kw = {k: v for k, v in kw.items() if k != 'impl'}
        key = (tuple(x.shape[1:]), b is None, tuple(sorted(kw.items())))
        calls['bias_act'].setdefault(key, (x.shape, b is not None, kw))
        return real_ba(x, b, impl='ref', **kw)

    stylegan3.filtered_lrelu, stylegan3.bias_act = fl, ba
    try:
        seed_everything(0)
        G = Generator.from_config(cfg).set_ops_impl('ref')
        with torch.no_grad():
            G(torch.randn(1, cfg.z_dim))
    finally:
        stylegan3.filtered_lrelu, stylegan3.bias_act = real_fl, real_ba
    return list(calls['filtered_lrelu'].values()), list(calls['bias_act'].values())


LAYERS = {name: record_calls(make()) for name, make in BENCHMARKED.items()}


def values_and_grads(fn, inputs, seed=0):
    "fn(*inputs); the gradients of <fn, w> w.r.t. the inputs; the gradient of <those gradients, v> w.r.t. w."
    ins = [t.detach().clone().requires_grad_() for t in inputs]
    y = fn(*ins)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y).requires_grad_()
    grads = torch.autograd.grad((y * w).sum(), ins, create_graph=True)
    v = [torch.randn(g.shape, generator=gen, dtype=torch.float64).to(g) for g in grads]
    (gw,) = torch.autograd.grad(sum((g * vi).sum() for g, vi in zip(grads, v)), [w])   # through the backward pass
    return [y.detach()] + [g.detach() for g in grads] + [gw]


def rel_err(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))


def assert_close(fn, inputs, rtol, what):
    "fn('ref', *inputs) and fn('cpu', *inputs) agree: values, gradients and the gradient of the gradients."
    want, got = values_and_grads(lambda *t: fn('ref', *t), inputs), values_and_grads(lambda *t: fn('cpu', *t), inputs)
    names = ['value'] + [f'grad of input {i}' for i in range(len(inputs))] + ['grad of grad']
    for name, r, c in zip(names, want, got):
        assert r.shape == c.shape and rel_err(r, c) <= rtol, f'{what}: {name} differs by {rel_err(r, c):.1e}'


@pytest.mark.parametrize('model', list(BENCHMARKED))
def test_every_filtered_lrelu_layer_matches_reference(model, isa):
    "Each layer geometry of the benchmarked generators, 9 planes (a full block of 8 and a partial one)."
    layers = LAYERS[model][0]
    assert len(layers) >= 3 and any(kw['up'] > 1 for _, _, _, kw in layers)     # the recording saw the layers
    g = torch.Generator().manual_seed(2)
    for shape, fu, fd, kw in layers:
        _, C, H, W = shape
        x = torch.randn(1, 9, H, W, generator=g, dtype=torch.float64) * 200         # reaches the clamp (256)
        b = torch.randn(9, generator=g, dtype=torch.float64)
        fn = lambda impl, x, b: ops.filtered_lrelu(x, fu.double(), fd.double(), b, impl=impl, **kw)
        assert_close(fn, [x, b], 1e-12, f'{model} {tuple(shape)} {kw} float64')
        fn32 = lambda impl, x, b: ops.filtered_lrelu(x, fu, fd, b, impl=impl, **kw)
        assert_close(fn32, [x.float(), b.float()], 2e-5, f'{model} {tuple(shape)} {kw} float32')


@pytest.mark.parametrize('model', list(BENCHMARKED))
def test_every_bias_act_call_matches_reference(model, isa):
    calls = LAYERS[model][1]
    assert calls
    g = torch.Generator().manual_seed(3)
    for shape, has_b, kw in calls:
        x = torch.randn(3, *shape[1:], generator=g, dtype=torch.float64) * 3
        b = torch.randn(shape[1], generator=g, dtype=torch.float64)
        if has_b:
            assert_close(lambda impl, x, b: ops.bias_act(x, b, impl=impl, **kw), [x, b], 1e-12, f'bias_act {kw}')
        else:
            assert_close(lambda impl, x: ops.bias_act(x, impl=impl, **kw), [x], 1e-12, f'bias_act {kw}')


def count_kernel_calls(monkeypatch):
    "A list that grows by one each time an op calls the compiled kernels."
    calls = []
    real = ops._ext
    monkeypatch.setattr(ops, '_ext', lambda t: calls.append(t.device.type) or real(t))
    return calls


def test_auto_uses_the_fast_path_on_cpu(monkeypatch):
    calls = count_kernel_calls(monkeypatch)
    x, f1 = torch.randn(1, 2, 8, 8), ops_reference.setup_filter([1, 3, 3, 1])
    ops.filtered_lrelu(x, f1, f1, up=2, down=2, padding=3)
    ops.upfirdn2d(x, f1, up=2)
    ops.bias_act(x, act='lrelu')
    assert calls == ['cpu'] * 3
    f2 = ops_reference.setup_filter([[1., 2, 1], [2, 4, 2], [1, 2, 1]])                  # 2-D: the kernels' slow loop
    ops.upfirdn2d(x, f2)
    ops.filtered_lrelu(x, f2, f1, padding=1)
    assert calls == ['cpu'] * 3
    ops.upfirdn2d(x, f2, impl='cpu')                                          # still available when asked for
    assert calls == ['cpu'] * 4
    x64 = x.double()
    ops.upfirdn2d(x64, torch.tensor([0.1, 0.7, 0.2], dtype=torch.float64))     # taps float32 would round: reference
    assert calls == ['cpu'] * 4
    ops.upfirdn2d(x64, f1.double())                                          # float64 taps float32 holds exactly
    assert calls == ['cpu'] * 5


def test_generators_match_reference_and_default_to_the_fast_path(monkeypatch):
    "Whole benchmarked generators, images and every parameter's gradient, float32; 'auto' runs the kernels."
    calls = count_kernel_calls(monkeypatch)
    for name, make in BENCHMARKED.items():
        cfg = make()
        seed_everything(0)
        G = Generator.from_config(cfg).train()
        z = torch.randn(2, cfg.z_dim, generator=torch.Generator().manual_seed(1))
        outs = {}
        for impl in ('ref', 'auto'):
            G.set_ops_impl(impl).zero_grad(set_to_none=True)
            n = len(calls)
            img = G(z)
            img.square().mean().backward()
            assert (len(calls) > n) == (impl == 'auto'), f'{name}: impl={impl} kernel calls {len(calls) - n}'
            outs[impl] = [img.detach()] + [p.grad.clone() for p in G.parameters() if p.grad is not None]
        assert len(outs['ref']) == len(outs['auto']) > 10
        for i, (r, c) in enumerate(zip(outs['ref'], outs['auto'])):
            assert rel_err(r, c) < 1e-4, f'{name}: output {i} differs by {rel_err(r, c):.1e}'


def test_bfloat16_on_the_fast_path():
    "bfloat16 runs (in float32 inside) and returns bfloat16 within bfloat16 rounding of the float32 result."
    fu, fd = ops_reference.setup_filter(torch.hann_window(14)[1:-1]), ops_reference.setup_filter(torch.hann_window(10)[1:-1])
    x = torch.randn(2, 9, 20, 20, generator=torch.Generator().manual_seed(4)).bfloat16().requires_grad_()
    b = torch.randn(9).bfloat16().requires_grad_()
    y = ops.filtered_lrelu(x, fu, fd, b, up=2, down=2, padding=8, clamp=3.0, impl='cpu')
    want = ops.filtered_lrelu(x.float(), fu, fd, b.float(), up=2, down=2, padding=8, clamp=3.0, impl='ref')
    assert y.dtype == torch.bfloat16 and y.shape == want.shape
    assert rel_err(want, y) < 1e-2
    (gx,) = torch.autograd.grad(y.float().square().sum(), [x])
    (gx_want,) = torch.autograd.grad(want.square().sum(), [x])
    assert gx.dtype == torch.bfloat16 and rel_err(gx_want, gx) < 3e-2


def _train(impl: str, monkeypatch, steps: int = 2):
    "Losses of `steps` tiny rung-A training steps (G, D and R1 every step) with the ops on `impl`."
    calls = count_kernel_calls(monkeypatch)
    cfg = make_config('A', 'tiny', batch=4, r1_interval=1, ops_impl=impl)
    g = torch.Generator().manual_seed(1)
    reals = torch.randint(0, 256, (4, 3, cfg.resolution, cfg.resolution), generator=g, dtype=torch.uint8)
    seed_everything(0)
    rung = RungA(cfg, 'cpu')
    stats = [rung.step(reals, None, i) for i in range(steps)]
    monkeypatch.undo()
    return stats, len(calls), rung


def test_tiny_training_step_gives_the_same_losses(monkeypatch):
    ref, n_ref, _ = _train('ref', monkeypatch)
    fast, n_fast, _ = _train('cpu', monkeypatch)
    assert n_ref == 0 and n_fast > 0
    assert [sorted(s) for s in ref] == [sorted(s) for s in fast] and 'reg/r1' in ref[0] and 'loss/G' in ref[0]
    for i, (a, b) in enumerate(zip(ref, fast)):
        for k in a:
            assert math.isfinite(a[k]) and a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), f'step {i} {k}: {a[k]} vs {b[k]}'
