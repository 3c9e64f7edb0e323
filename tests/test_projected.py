"""sgxl.projected: the Projected GAN discriminator of rungs B-E, its losses, blur, freezing and spectral norm."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from sgxl.core import DEIT_BASE, make_config, record_value
from sgxl.features import FeatureNetwork
from sgxl.augment import cutout, diff_augment
from sgxl.projected import (FeatureProjector, ProjectedDiscriminator, RungB, blur_sigma_at,
                            gaussian_blur, hinge_d_loss, hinge_g_loss, projected_discriminator, spectral_sigmas)
from sgxl.stylegan3 import ClassEmbedding


def smooth_images(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 4, 4, generator=g) * 2 - 1, size=size, mode='bicubic').clamp(-1, 1)


def noise_images(n, size=32, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope='module')
def lite0_64():
    return FeatureNetwork('tf_efficientnet_lite0', 'pretrained', 64)


def tiny_d(lite0, c_dim=4, diffaug='', seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault('head_channel_max', 64)
    return ProjectedDiscriminator([lite0], c_dim=c_dim, ccm_channels=(16, 32, 48, 64), diffaug=diffaug, **kw)


def frozen_state(D):
    return {f'{i}.{k}': v.clone() for i, m in enumerate(D.frozen_modules()) for k, v in m.state_dict().items()}


# --- hinge loss ------------------------------------------------------------------------------------------

def test_hinge_loss_on_known_logits():
    real = torch.tensor([[2.0, 1.0, 0.5, -1.0]])              # costs 0, 0, 0.5, 2
    fake = torch.tensor([[-3.0, -1.0, 0.0, 2.0]])             # costs 0, 0, 1, 3
    assert hinge_d_loss(real, fake).item() == pytest.approx(2.5 / 4 + 4 / 4)
    assert hinge_g_loss(fake).item() == pytest.approx(-(-3 - 1 + 0 + 2) / 4)
    assert hinge_d_loss(torch.full((2, 3), 1.5), torch.full((2, 3), -1.5)).item() == 0  # beyond the margins
    # gradients: only patches inside the margin push
    r = real.clone().requires_grad_(True)
    hinge_d_loss(r, fake).backward()
    assert r.grad.tolist() == [[0, 0, -0.25, -0.25]]


# --- shapes, for one and two networks ----------------------------------------------------------------------

def test_tiny_rung_b_and_e_shapes():
    D = projected_discriminator(make_config('B', 'tiny', c_dim=3))
    assert D.num_discriminators == 4 and list(D.weights_sources) == ['tf_efficientnet_lite0']
    out = D(smooth_images(2), torch.tensor([0, 2]))
    assert out.shape == (2, 25 + 25 + 25 + 1) and torch.isfinite(out).all()   # CSM maps 32, 16, 8, 4 -> 5x5 .. 1x1
    E = projected_discriminator(make_config('E', 'tiny', c_dim=3))
    assert E.num_discriminators == 8 and E.weights_sources['deit_tiny_distilled_patch16_224'] == 'random'
    assert E(smooth_images(2), torch.tensor([0, 2])).shape == (2, 2 * 76)


def test_paper_size_rungs_b_and_e():
    cfg = make_config('E', c_dim=10, feature_sources=(f'{DEIT_BASE}=random',))   # no DeiT-base weights offline
    D = projected_discriminator(cfg)
    assert D.num_discriminators == 8 and D.weights_sources[DEIT_BASE] == 'random'
    assert D.weights_sources['tf_efficientnet_lite0'] != 'random'
    assert [h.patches for hs in D.heads for h in hs] == [4] * 8             # CSM 112..14 -> 7x7 -> 4x4 logits
    assert [p.out_channels for p in D.projectors] == [(64, 64, 128, 256)] * 2
    with torch.no_grad():
        out = D.eval()(smooth_images(1, size=256), torch.tensor([3]))       # G's 256 output resized to 224
    assert out.shape == (1, 8 * 16) and torch.isfinite(out).all()


# --- training: frozen parts, hinge loss going down, spectral norm --------------------------------------------

def test_d_steps_are_finite_and_lower_the_loss_on_a_fixed_batch(lite0_64):
    D = tiny_d(lite0_64)
    reals, fakes, c = smooth_images(8), noise_images(8), torch.arange(8) % 4
    opt = torch.optim.Adam(D.trainable_parameters(), lr=0.002, betas=(0.0, 0.99))
    losses = []
    for _ in range(10):
        loss = hinge_d_loss(D(reals, c), D(fakes, c))
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(l) for l in losses)
    # measured at 1, 2 and 4 threads alike: first loss 2.128, last three / first 0.0020 (bound 0.6)
    record_value('first_loss', losses[0]); record_value('last3_over_first', sum(losses[-3:]) / 3 / losses[0])
    assert losses[0] > 1.0 and sum(losses[-3:]) / 3 < 0.6 * losses[0], losses


def test_frozen_parts_get_no_gradient_and_do_not_change():
    D = projected_discriminator(make_config('E', 'tiny', c_dim=4))      # lite0 + DeiT-tiny: both frozen
    before = frozen_state(D)
    heads_before = [p.clone() for p in D.trainable_parameters()]
    opt = torch.optim.Adam(D.parameters(), lr=0.01, betas=(0.0, 0.99))  # handed everything on purpose
    c = torch.arange(4)
    for _ in range(2):
        loss = hinge_d_loss(D(smooth_images(4), c), D(noise_images(4), c))
        opt.zero_grad(set_to_none=True); loss.backward()
        assert all(p.grad is None for m in D.frozen_modules() for p in m.parameters())
        assert all(p.grad is not None for p in D.trainable_parameters())
        opt.step()
    after = frozen_state(D)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(not torch.equal(a, b) for a, b in zip(heads_before, D.trainable_parameters()))
    assert all(not m.training for net in D.feature_nets for m in net.modules())


def test_requires_grad_toggle_leaves_frozen_parts_frozen(lite0_64):
    D = tiny_d(lite0_64)
    D.requires_grad_(False)
    assert not any(p.requires_grad for p in D.parameters())
    D.requires_grad_(True)
    assert all(p.requires_grad for p in D.trainable_parameters())
    assert not any(p.requires_grad for m in D.frozen_modules() for p in m.parameters())
    n_frozen = sum(p.numel() for m in D.frozen_modules() for p in m.parameters())
    assert n_frozen + sum(p.numel() for p in D.trainable_parameters()) == sum(p.numel() for p in D.parameters())


def test_generator_gradient_flows_through_frozen_features(lite0_64):
    D = tiny_d(lite0_64).requires_grad_(False)
    fakes = noise_images(4).requires_grad_(True)
    hinge_g_loss(D(fakes, torch.arange(4))).backward()
    assert fakes.grad is not None and fakes.grad.abs().sum() > 0
    assert all(p.grad is None for p in D.parameters())


def test_spectral_norm_keeps_largest_singular_value_near_one(lite0_64):
    D = tiny_d(lite0_64)
    at_start = spectral_sigmas(D)
    assert len(at_start) == 3 + 4 + 4 and all(abs(s - 1) < 0.05 for s in at_start.values()), at_start
    opt = torch.optim.Adam(D.trainable_parameters(), lr=0.002, betas=(0.0, 0.99))
    reals, fakes, c = smooth_images(8), noise_images(8), torch.arange(8) % 4
    for _ in range(5):
        loss = hinge_d_loss(D(reals, c), D(fakes, c))
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    settled = spectral_sigmas(D, power_iterations=40)
    assert all(abs(s - 1) < 0.01 for s in settled.values()), settled
    # a raw weight scaled 100x: the normalised weight is still at 1
    layer = D.heads[0][1].body[0][0]                            # the down-block's conv
    with torch.no_grad(): layer.parametrizations.weight.original.mul_(100)
    assert abs(spectral_sigmas(layer, power_iterations=40)[''] - 1) < 0.01


# --- conditioning, augmentation, blur ----------------------------------------------------------------------

def test_projection_conditioning_uses_the_injected_embedding(lite0_64):
    table = torch.randn(5, 320)
    table[4] = table[1]
    emb = ClassEmbedding(5, 320, table)                          # rung C's shape: 320-d pretrained vectors
    D = tiny_d(lite0_64, c_dim=5, class_embedding=emb).eval()
    assert D.class_embedding is emb and D.heads[0][0].embed_proj.in_features == 320
    x = smooth_images(2)
    with torch.no_grad():
        out = [D(x, torch.full((2,), k)) for k in range(5)]
        onehot = D(x, F.one_hot(torch.tensor([3, 3]), 5).float())
    assert torch.equal(out[1], out[4]) and not torch.allclose(out[0], out[1])
    assert torch.allclose(onehot, out[3], atol=1e-6)
    assert emb.table.requires_grad and any(p is emb.table for p in D.trainable_parameters())


def test_one_class_embedding_for_g_and_d_and_old_d_checkpoints_load(lite0_64):
    "G and D share `stylegan3.ClassEmbedding`; a D written when D's table was `projected.ClassEmbedding.weight` loads."
    import sgxl.projected
    from pathlib import Path
    from sgxl.stylegan3 import MappingNetwork
    from sgxl.training import load_checkpoint
    assert not hasattr(sgxl.projected, 'ClassEmbedding') or sgxl.projected.ClassEmbedding is ClassEmbedding
    assert type(MappingNetwork(4, 3, 8, 2).embed) is ClassEmbedding is type(tiny_d(lite0_64, c_dim=3).class_embedding)
    # written by main at 28b6223: the D of a rung-C-like model without its (pretrained, fixed) feature network
    state, meta = load_checkpoint(Path(__file__).parent / 'fixtures' / 'legacy' / 'projected-d-rung-c.json')
    assert 'class_embedding.weight' in state['D'] and 'class_embedding.table' not in state['D']
    D = tiny_d(lite0_64, c_dim=3, head_channel_max=16, class_embedding=ClassEmbedding(3, 8), seed=1).eval()
    old = {**{k: v for k, v in D.state_dict().items() if k.startswith('feature_nets.')}, **state['D']}
    D.load_state_dict(old, strict=True)
    assert torch.equal(D.class_embedding.table, state['D']['class_embedding.weight'])
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad(): logits = D(x, torch.tensor([0, 2]))
    assert torch.allclose(logits, torch.tensor(meta['logits']), atol=1e-5)   # the old D's logits, from the new code


def test_unconditional_and_label_errors(lite0_64):
    D = tiny_d(lite0_64, c_dim=0)
    assert D.class_embedding is None and D(smooth_images(2)).shape == (2, 76)
    with pytest.raises(ValueError, match='c=None'):
        D(smooth_images(2), torch.tensor([0, 1]))
    Dc = tiny_d(lite0_64, c_dim=3)
    with pytest.raises(ValueError, match='pass the labels'):
        Dc(smooth_images(2))
    with pytest.raises(ValueError, match=r'indices in \[0, 3\)'):
        Dc(smooth_images(2), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match='d_arch'):
        projected_discriminator(make_config('A', 'tiny'))
    with pytest.raises(ValueError, match='feature_sources'):
        make_config('B', 'tiny', feature_sources=('deit_tiny_distilled_patch16_224=random',))


def test_diffaug_only_in_training_mode_and_seeded(lite0_64):
    D = tiny_d(lite0_64, diffaug='color,translation,cutout')
    x, c = smooth_images(4), torch.arange(4)
    g = lambda s: torch.Generator().manual_seed(s)
    a, b, other = (copy.deepcopy(D)(x, c, generator=g(s)) for s in (0, 0, 1))
    plain = copy.deepcopy(D)
    plain.diffaug = ''
    assert torch.equal(a, b) and not torch.allclose(a, other) and not torch.allclose(a, plain(x, c))
    D.eval()
    assert torch.equal(D(x, c, generator=g(0)), D(x, c, generator=g(1)))   # eval: no augmentation


def test_blur_schedule_and_kernel(lite0_64):
    assert blur_sigma_at(0, 2.0, 200) == 2.0 and blur_sigma_at(50, 2.0, 200) == 1.5
    assert blur_sigma_at(200, 2.0, 200) == 0.0 and blur_sigma_at(1000, 2.0, 200) == 0.0
    assert blur_sigma_at(10, 0.0, 200) == 0.0 and blur_sigma_at(10, 2.0, 0) == 0.0
    x = smooth_images(2)
    assert gaussian_blur(x, 0.0) is x
    const = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(gaussian_blur(const, 2.0), const)     # weights sum to 1
    delta = torch.zeros(1, 1, 33, 33, dtype=torch.float64)
    delta[..., 16, 16] = 1
    psf = gaussian_blur(delta, 1.5)[0, 0]                       # the point-spread function is the Gaussian
    t = torch.arange(33, dtype=torch.float64) - 16
    std_x = (psf.sum(0) * t ** 2).sum().sqrt()
    assert psf.sum().item() == pytest.approx(1.0) and std_x.item() == pytest.approx(1.5, rel=0.02)
    # D applies it: blurred inputs change D's output, sigma 0 does not
    D = tiny_d(lite0_64).eval()
    c = torch.arange(2)
    with torch.no_grad():
        assert torch.equal(D(x, c, blur_sigma=0.0), D(x, c)) and not torch.allclose(D(x, c, blur_sigma=2.0), D(x, c))


def test_csm_mixes_coarse_scales_into_fine_ones():
    torch.manual_seed(0)
    proj = FeatureProjector((24, 40, 112, 320), (16, 32, 48, 64))
    feats = [torch.randn(2, c, s, s) for c, s in zip((24, 40, 112, 320), (16, 8, 4, 2))]
    out = proj(feats)
    # each scale leaves at twice its size with the next finer scale's width (the finest keeps its own)
    assert [tuple(o.shape) for o in out] == [(2, k, 2 * s, 2 * s) for k, s in zip((16, 16, 32, 48), (16, 8, 4, 2))]
    changed = [f.clone() for f in feats]
    changed[3] += 1.0                                           # touch only the coarsest map
    out2 = proj(changed)
    assert all(not torch.allclose(a, b) for a, b in zip(out, out2))   # every scale sees it (top-down)
    changed = [f.clone() for f in feats]
    changed[0] += 1.0                                           # touch only the finest map
    out3 = proj(changed)
    assert not torch.allclose(out[0], out3[0]) and all(torch.equal(a, b) for a, b in zip(out[1:], out3[1:]))
    # variance stays in range (1/fan_in weights; each scale adds one map)
    assert all(0.3 < o.var().item() < 8 for o in out)
    assert all(not p.requires_grad for p in proj.parameters()) and all(m.bias is not None for m in proj.csm)


def test_csm_sizes_and_channels_per_scale():
    "Paper size (lite0 at 224): CSM leaves scale l at twice its size; heads of 4..1 down-blocks, 16 logits each."
    D = projected_discriminator(make_config('B', c_dim=0, feature_weights='random')).eval()
    with torch.no_grad():
        feats = D.feature_nets[0](torch.zeros(1, 3, 224, 224))
        mixed = D.projectors[0](feats)
    assert [tuple(f.shape[1:]) for f in feats] == [(24, 56, 56), (40, 28, 28), (112, 14, 14), (320, 7, 7)]
    assert [tuple(m.shape[1:]) for m in mixed] == [(64, 112, 112), (64, 56, 56), (128, 28, 28), (256, 14, 14)]
    assert [[b[0].out_channels for b in h.body] for h in D.heads[0]] == [
        [64, 128, 256, 512], [128, 256, 512], [256, 512], [512]]
    assert all(h.out.kernel_size == (4, 4) and h.out.padding == (0, 0) for h in D.heads[0])
    with torch.no_grad():
        assert [tuple(h(m).shape) for h, m in zip(D.heads[0], mixed)] == [(1, 16)] * 4


def test_cutout_ratio_and_augmentation_per_feature_network(lite0_64):
    ones = torch.ones(64, 3, 40, 40)
    g = torch.Generator().manual_seed(0)
    zeros = (cutout(ones, 0.2, generator=g) == 0).all(1).sum((1, 2))          # (64,) cut pixels per image
    assert zeros.max() == 8 * 8 and (zeros == 64).float().mean() > 0.5         # side 0.2 * 40 = 8 (edge: less)
    assert make_config('B').cutout_ratio == 0.2 and projected_discriminator(make_config('B', 'tiny')).cutout_ratio == 0.2
    cut = (diff_augment(ones, 'cutout', torch.Generator().manual_seed(0), cutout_ratio=0.2) == 0).all(1).sum((1, 2))
    assert torch.equal(cut, zeros)
    # two feature networks: each sees its own augmentation of the same images
    D = ProjectedDiscriminator([lite0_64, copy.deepcopy(lite0_64)], ccm_channels=(16, 32, 48, 64),
                               diffaug='translation,cutout', head_channel_max=64)
    seen = []
    for net in D.feature_nets: net.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    D(smooth_images(4), generator=torch.Generator().manual_seed(0))
    assert len(seen) == 2 and not torch.equal(seen[0], seen[1])
    seen.clear(); D.eval()(smooth_images(4))
    assert torch.equal(seen[0], seen[1])                                        # eval: no augmentation


def test_hinge_loss_scale_sums_over_images_and_networks():
    lg, lr = torch.randn(8, 2 * 76), torch.randn(8, 2 * 76)
    per_net = lambda t: t.view(8, 2, 76).mean(2)                                # patch mean per image and network
    assert torch.allclose(hinge_g_loss(lg, nets=2, summed=True), -per_net(lg).sum())
    assert torch.allclose(hinge_g_loss(lg, nets=2, summed=True), 16 * hinge_g_loss(lg))   # N K x the mean
    assert torch.allclose(hinge_d_loss(lr, lg, nets=2, summed=True), 16 * hinge_d_loss(lr, lg))
    cfg = make_config('B', 'tiny', c_dim=4)
    assert cfg.adv_loss_sum and cfg.pl_weight == 2.0 and make_config('F').cls_weight == 8.0
    rung = RungB(cfg, 'cpu')
    assert rung.adv_reduce() == {'nets': 1, 'summed': True}
    # the effective ratio of path length to the adversarial loss is pl_weight : batch_gpu * K (release), 2 : 8 here
    mean_rung = RungB(cfg.replace(adv_loss_sum=False), 'cpu')
    assert mean_rung.adv_reduce() == {'nets': 1, 'summed': False}


def test_state_dict_round_trip_rebuilds_the_same_discriminator(lite0_64):
    D = tiny_d(lite0_64, seed=0).eval()
    D2 = tiny_d(lite0_64, seed=1).eval()                        # other random CCM/CSM and heads
    x, c = smooth_images(2), torch.arange(2)
    with torch.no_grad():
        assert not torch.allclose(D(x, c), D2(x, c))
        D2.load_state_dict(D.state_dict())
        assert torch.equal(D(x, c), D2(x, c))
