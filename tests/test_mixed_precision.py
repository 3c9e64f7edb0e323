"""Mixed precision: what autocast hands the ops, and a training step of each kind of rung under autocast.

On a GPU the rungs run their forward passes under torch.autocast (bf16, or fp16 with a gradient scaler), so a
layer's matmul/conv output x is bf16 while its bias parameter stays float32. CPU autocast produces the same
dtypes, so these tests run on any machine; on a GPU benchmarks/gpu_check.sh times the real thing.
"""
import contextlib

import pytest
import torch

from sgxl import ops, ops_reference
from sgxl.core import make_config, seed_everything
from sgxl.data import load
from sgxl.training import rung_class


def bf16_autocast():
    return torch.autocast('cpu', dtype=torch.bfloat16)


@pytest.mark.parametrize('impl', ['ref', 'auto'])
def test_bias_act_takes_a_float32_bias_under_autocast(impl):
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(4, 16, generator=g), torch.randn(8, 16, generator=g), torch.randn(8, generator=g)
    with bf16_autocast():
        h = x.matmul(w.t())                                    # bf16 under autocast, as in a fully connected layer
        assert h.dtype == torch.bfloat16
        y = ops.bias_act(h, b, act='lrelu', impl=impl)
    assert y.dtype == torch.bfloat16
    want = ops.bias_act(h.float(), b.to(torch.bfloat16).float(), act='lrelu', impl='ref')
    torch.testing.assert_close(y.float(), want, rtol=2e-2, atol=2e-2)


def test_filtered_lrelu_takes_a_float32_bias_under_autocast():
    g = torch.Generator().manual_seed(1)
    x, b = torch.randn(2, 3, 12, 12, generator=g), torch.randn(3, generator=g)
    f = ops_reference.setup_filter([1, 3, 3, 1])
    with bf16_autocast():
        y = ops.filtered_lrelu(x.to(torch.bfloat16), f, f, b, up=2, down=2, padding=3, clamp=4)
    assert y.dtype == torch.bfloat16
    want = ops.filtered_lrelu(x.to(torch.bfloat16).float(), f, f, b.to(torch.bfloat16).float(), up=2, down=2,
                              padding=3, clamp=4, impl='ref')
    torch.testing.assert_close(y.float(), want, rtol=3e-2, atol=3e-2)


def test_a_dtype_mismatch_outside_autocast_is_still_an_error():
    x, b = torch.randn(2, 3, 8, 8, dtype=torch.bfloat16), torch.randn(3)
    with pytest.raises(ValueError, match=r'must match x .*convert it with b.to\(x\)'):
        ops.bias_act(x, b)
    with pytest.raises(ValueError, match=r'must match x .*convert it with b.to\(x\)'):
        ops.filtered_lrelu(x, b=b)


@pytest.mark.parametrize('rung', ['A', 'F'])   # A: StyleGAN3's G and D; F: projected D, ViT features, guidance
def test_a_training_step_under_autocast(rung):
    cfg = make_config(rung, 'tiny', data='shapes:num_images=32')
    cls = rung_class(cfg)
    data = load(cfg.data, resolution=cls.data_resolution(cfg) if getattr(cls, 'progressive', False) else cfg.resolution)
    cfg = cfg.replace(c_dim=data.num_classes)
    seed_everything(0)
    r = cls(cfg, 'cpu', dataset=data)
    # the rung's own rule (autocast except in the regularisers), on CPU instead of CUDA
    r.autocast = lambda phase: contextlib.nullcontext() if phase.endswith('reg') else bf16_autocast()
    real = torch.stack([data[i][0] for i in range(cfg.batch)])
    labels = torch.stack([data[i][1] for i in range(cfg.batch)])
    before = [p.detach().clone() for p in r.G.parameters() if p.requires_grad]
    stats = r.step(real, labels, step_index=0)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in stats.values()), stats
    after = [p for p in r.G.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in after)                  # parameters stay float32
    assert any(not torch.equal(a, b) for a, b in zip(after, before))      # and the step moved them


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_fused_cuda_ops_under_cuda_autocast(dtype):
    g = torch.Generator().manual_seed(2)
    x, w, b = (torch.randn(*s, generator=g).cuda() for s in ((2, 4, 12, 12), (4, 4, 1, 1), (4,)))
    f = ops_reference.setup_filter([1, 3, 3, 1]).cuda()
    with torch.autocast('cuda', dtype=dtype):
        h = torch.nn.functional.conv2d(x, w)                   # dtype under autocast, b stays float32
        y = ops.filtered_lrelu(h, f, f, b, up=2, down=2, padding=3, clamp=4, impl='cuda')
        z = ops.bias_act(h, b, act='lrelu', impl='cuda')
    assert h.dtype == y.dtype == z.dtype == dtype
    hb = h.float()
    want_y = ops.filtered_lrelu(hb, f, f, b.to(dtype).float(), up=2, down=2, padding=3, clamp=4, impl='ref')
    want_z = ops.bias_act(hb, b.to(dtype).float(), act='lrelu', impl='ref')
    torch.testing.assert_close(y.float(), want_y, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(z.float(), want_z, rtol=3e-2, atol=3e-2)
