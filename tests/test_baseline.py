"""Rung A's trainer: checkpoints through a file resume bit for bit, uint8 / unconditional batches, bad input.

nbs/04_config_a.ipynb checks that a few steps lower D's loss and that R1's double backward matches finite
differences; these tests cover what needs files and the errors a user sees.
"""
import copy

import pytest
import torch

from sgxl.baseline import ResNetDiscriminator, RungA, ema_beta
from sgxl.core import make_config, seed_everything


def _batch(n=4, res=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, res, res), generator=g, dtype=torch.uint8), torch.arange(n) % 2


def test_resume_from_file_is_bit_exact(tmp_path):
    cfg = make_config('A', 'tiny', c_dim=2, batch=4, r1_interval=2)
    reals, labels = _batch()
    seed_everything(0)
    rung = RungA(cfg, 'cpu')
    for i in range(2): rung.step(reals, labels, i)
    torch.save({'rung': rung.state_dict(), 'rng': torch.get_rng_state()}, tmp_path / 'ckpt.pt')
    stats_a = [rung.step(reals, labels, i) for i in range(2, 4)]
    seed_everything(123)                                   # a different fresh start, then the checkpoint
    resumed = RungA(cfg, 'cpu')
    ckpt = torch.load(tmp_path / 'ckpt.pt', weights_only=False)
    resumed.load_state_dict(ckpt['rung'])
    torch.set_rng_state(ckpt['rng'])
    stats_b = [resumed.step(reals, labels, i) for i in range(2, 4)]
    assert stats_a == stats_b and 'reg/r1' in stats_a[0]
    for name in ('G', 'G_ema', 'D'):
        sa, sb = getattr(rung, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name


def test_unconditional_uint8_step_and_r1_schedule():
    cfg = make_config('A', 'tiny', batch=2, r1_interval=3)
    seed_everything(0)
    rung = RungA(cfg, 'cpu')
    reals, _ = _batch(2)
    before = copy.deepcopy(rung.D.state_dict())
    stats = [rung.step(reals, None, i) for i in range(4)]
    assert ['reg/r1' in s for s in stats] == [True, False, False, True]
    assert all(isinstance(v, float) and v == v for s in stats for v in s.values())
    assert any(not torch.equal(before[k], v) for k, v in rung.D.state_dict().items())
    assert rung.nimg == 8 and all(isinstance(b, float) for g in rung.opt_D.param_groups for b in g['betas'])
    assert rung.opt_D.param_groups[0]['lr'] == pytest.approx(cfg.d_lr * 3 / 4)   # lazy R1 correction


def test_ema_beta_half_life():
    assert ema_beta(1000, nimg=1e12, ema_kimg=1.0, ema_rampup=None) == pytest.approx(0.5)
    assert ema_beta(500, nimg=1e12, ema_kimg=1.0, ema_rampup=0.05) == pytest.approx(0.5 ** 0.5)
    assert ema_beta(10, nimg=1000, ema_kimg=1.0, ema_rampup=0.05) == pytest.approx(0.5 ** (10 / 50))


def test_bad_input_errors_name_the_fix():
    cfg = make_config('A', 'tiny', c_dim=2, batch=2)
    rung = RungA(cfg, 'cpu')
    with pytest.raises(ValueError, match='trains at'):
        rung.step(torch.zeros(2, 3, 16, 16), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match='needs labels'):
        rung.step(torch.zeros(2, 3, 32, 32), None)
    with pytest.raises(ValueError, match='lacks'):
        rung.load_state_dict({'G': {}})
    D = ResNetDiscriminator(c_dim=0, img_resolution=32, channel_base=256, channel_max=16)
    with pytest.raises(ValueError, match='want'):
        D(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match='c=None'):
        D(torch.zeros(2, 3, 32, 32), torch.tensor([0, 1]))


def test_d_optimiser_keeps_lazy_scaling_without_r1():
    "D's Adam: lr 0.002 * 16/17, beta2 0.99 ** (16/17) with R1 (rung A) and without it (rung B), as the releases."
    from sgxl.projected import RungB
    for rung in (RungA(make_config('A', 'tiny'), 'cpu'), RungB(make_config('B', 'tiny'), 'cpu')):
        group = rung.opt_D.param_groups[0]
        assert group['lr'] == pytest.approx(0.002 * 16 / 17) and group['betas'][1] == pytest.approx(0.99 ** (16 / 17))
    plain = RungB(make_config('B', 'tiny', d_lazy_scaling=False), 'cpu').opt_D.param_groups[0]
    assert plain['lr'] == pytest.approx(0.002) and plain['betas'] == (0.0, 0.99)


def test_fake_labels_follow_the_dataset_not_the_real_batch():
    "The fakes' labels are drawn from the dataset's class frequencies, anew for G and D, whatever the reals are."
    class Counts:                                                    # a dataset where class 2 is 3x as common
        def class_counts(self): return torch.tensor([1, 1, 3, 0]).numpy()
    seed_everything(0)
    rung = RungA(make_config('A', 'tiny', c_dim=4, batch=4), 'cpu', dataset=Counts())
    assert torch.allclose(rung.label_probs, torch.tensor([0.2, 0.2, 0.6, 0.0], dtype=torch.float64))
    seen = []
    forward = rung.G.forward
    rung.G.forward = lambda z, c, **kw: (seen.append(c.clone()), forward(z, c, **kw))[1]
    real_labels = torch.zeros(4, dtype=torch.long)                      # the reals: all class 0
    for i in range(20): rung.step(_batch(4)[0], real_labels, step_index=i)
    fake = torch.cat(seen)
    counts = torch.bincount(fake, minlength=4).float() / len(fake)
    assert counts[3] == 0 and abs(counts[2] - 0.6) < 0.15 and counts[0] < 0.4   # not the reals' class 0
    assert RungA(make_config('A', 'tiny', c_dim=4), 'cpu').label_probs.tolist() == [0.25] * 4   # no dataset: uniform
