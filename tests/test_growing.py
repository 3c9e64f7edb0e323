"""sgxl.growing: rung D's progressive growing -- the schedule continuation, grow() and freezing, building stage k
from a config, D restarts, the stage policy and a tiny rung-D training step on CPU."""
import copy
import math

import numpy as np
import pytest
import torch

from sgxl.core import LITE0, make_config
from sgxl.growing import (ProgressiveGenerator, StagePolicy, continue_schedule, cut_critical, fid_stalled, grow,
                          growth_table, head_layers_at, next_stage, progressive_generator, restart_discriminator,
                          stage_resolutions, stage_schedule)
from sgxl.projected import hinge_d_loss, hinge_g_loss
from sgxl.filters import filter_schedule
from sgxl.stylegan3 import Generator, count_parameters

TINY = make_config('D', 'tiny')                                       # stem 16 (4 layers), one stage to 32 (2 layers)
TINY3 = make_config('D', 'tiny', resolution=64, head_layers=3)        # three stages, heads with a ramp layer
PAPER = make_config('D', 'paper', resolution=1024, c_dim=1000, embed_dim=320, embed_proj_dim=64)


def shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def stem_keys(G):
    "state_dict keys of the frozen part: the mapping network's weights, the layers before the head (as released)."
    return {'mapping.' + n for n, _ in G.mapping.named_parameters()} | {
        k for k in G.state_dict() if k.startswith('synthesis.layers.') and int(k.split('.')[2]) < G.head_start}


def features(G, ws):
    with torch.no_grad():
        return G.synthesis(ws, return_features=True)


# --- the schedule ----------------------------------------------------------------------------------------

def test_head_starts_from_the_last_kept_layer():
    # StyleGAN-XL's release: the first head layer keeps the last kept cutoff and its stopband f_c + f_h, and
    # the head reaches the new Nyquist frequency after its head_layers - num_critical non-critical layers
    stem = filter_schedule(16, 10, channel_base=65536, channel_max=1024)
    kept = cut_critical(stem)
    head = continue_schedule(kept, 32, 7, 2, channel_base=65536, channel_max=1024)
    assert [q.name for q in head] == [f'L{i}' for i in range(8, 15)] + ['ToRGB']
    assert head[0].cutoff == kept[-1].cutoff == pytest.approx(2 * 4 ** (7 / 8))
    assert head[0].stopband == pytest.approx(kept[-1].cutoff + kept[-1].half_width)
    assert [q.critical for q in head] == [False] * 5 + [True] * 3
    ratios = [b.cutoff / a.cutoff for a, b in zip(head[:5], head[1:6])]
    assert ratios == pytest.approx([(16 / head[0].cutoff) ** 0.2] * 5)
    assert [q.size for q in head] == [52] * 6 + [32, 32]
    # a head of critical layers only (the tiny preset) jumps straight to the new Nyquist frequency
    assert all(q.critical and q.cutoff == 16 for q in continue_schedule(kept, 32, 2, 2))


def check_stage(prev, sched, res, heads, cfg):
    "The paper's definitions, applied to the head a stage adds."
    kept = cut_critical(prev)
    p, head = len(kept) - 1, sched[len(kept):]
    assert sched[:len(kept)] == kept and len(head) == heads + 1
    assert [q.index for q in sched] == list(range(len(sched)))
    assert [q.name for q in sched] == [f'L{i}' for i in range(len(sched) - 1)] + ['ToRGB']
    first_crit = len(kept) + heads - cfg.num_critical                          # index of the first critical layer
    if heads > cfg.num_critical:                                               # the first head layer keeps p's band
        assert head[0].cutoff == kept[-1].cutoff
        assert math.isclose(head[0].stopband, kept[-1].cutoff + kept[-1].half_width)
    fc = np.log2([q.cutoff for q in sched[len(kept):first_crit + 1]])
    ft = np.log2([q.stopband for q in sched[len(kept):first_crit + 1]])
    assert np.allclose(np.diff(fc), np.diff(fc)[:1]) and np.allclose(np.diff(ft), np.diff(ft)[:1])
    assert np.all(np.diff(fc) > 0)
    for q in sched[first_crit:]:                                               # 2 layers + ToRGB at the new Nyquist
        assert q.critical and q.cutoff == res / 2 and q.sampling_rate == res
        assert math.isclose(q.stopband, res / 2 * cfg.last_stopband_rel)
    assert not any(q.critical for q in sched[:first_crit])
    for q in head:
        s = 2 ** math.ceil(math.log2(min(2 * q.stopband, res)) - 1e-9)
        assert q.sampling_rate == s
        assert math.isclose(q.half_width, max(q.stopband, s / 2) - q.cutoff)
        assert q.size == (res if q.index >= len(sched) - 2 else s + 2 * cfg.margin_size)
        assert q.channels == (3 if q.name == 'ToRGB' else min(round(cfg.channel_base / (2 * q.cutoff)), cfg.channel_max))


@pytest.mark.parametrize('cfg,up', [(PAPER, 2), (PAPER, 4), (TINY, 2), (TINY3, 2),
                                    (make_config('D', 'tiny', resolution=64, head_layers=4), 4)])
def test_combined_schedule_follows_the_paper(cfg, up):
    resolutions = stage_resolutions(cfg, up)
    scheds = [stage_schedule(cfg, k, up) for k in range(len(resolutions))]
    stem = filter_schedule(cfg.stem_resolution, cfg.stem_layers, cfg.num_critical, cfg.margin_size,
                           cfg.channel_base, cfg.channel_max)
    assert scheds[0] == stem
    for k in range(1, len(scheds)):
        check_stage(scheds[k - 1], scheds[k], resolutions[k], head_layers_at(cfg, resolutions[k]), cfg)


def test_paper_stage_sizes():
    assert stage_resolutions(PAPER) == [16, 32, 64, 128, 256, 512, 1024]
    assert stage_resolutions(PAPER, up=4) == [16, 64, 256, 1024]
    assert [head_layers_at(PAPER, r) for r in (32, 512, 1024)] == [7, 7, 5]
    # 11 layers at 16 (10 + ToRGB), +5 per stage (7 new, 2 cut), 39 at 1024 (5 new)
    assert [len(stage_schedule(PAPER, k)) for k in range(7)] == [11, 16, 21, 26, 31, 36, 39]
    # each head's first layer repeats the kept cutoff; the 4 layers after it climb one octave: 2^(1/4) a layer
    s = stage_schedule(PAPER, 5)
    k = len(cut_critical(stage_schedule(PAPER, 4)))
    assert s[k].cutoff == s[k - 1].cutoff
    assert s[k + 1].cutoff / s[k].cutoff == pytest.approx(2 ** 0.25, rel=1e-6)


def test_paper_xl_generator_has_the_released_parameter_counts():
    # StyleGAN-XL's released G (z 64, w 512, 1000 classes, 320-d embeddings projected to 64, stem 16x16 of 10
    # layers, heads of 7, channel_base 65536 / channel_max 1024): shapes only, on the meta device
    cfg = make_config('D', 'paper', resolution=128)
    assert (cfg.channel_base, cfg.channel_max) == (65536, 1024) and make_config('C').channel_base == 32768
    with torch.device('meta'):
        gens = [progressive_generator(cfg, 1000, k) for k in range(4)]
    assert [G.img_resolution for G in gens] == [16, 32, 64, 128]
    assert [count_parameters(G) for G in gens] == [101_883_463, 151_701_063, 201_518_663, 225_850_243]
    assert count_parameters(gens[0].mapping) == 669_248


def test_growth_table_marks_what_changed():
    t = growth_table(stage_schedule(PAPER, 0), stage_schedule(PAPER, 1)).splitlines()
    status = {line.split()[0]: line.split()[-1] for line in t[2:]}
    assert [status[f'L{i}'] for i in range(8)] == ['frozen'] * 8
    assert status['L8'] == status['L9'] == status['ToRGB'] == 'replaced'
    assert [status[f'L{i}'] for i in range(10, 15)] == ['new'] * 5


# --- grow(): the stem is kept bit for bit, the head reaches the new resolution -----------------------------------

@pytest.mark.parametrize('new_res,heads', [(32, None), (32, 5), (64, 3)])
def test_grow_keeps_the_stem_bit_for_bit(new_res, heads):
    torch.manual_seed(0)
    G = progressive_generator(TINY, c_dim=3, stage=0)
    z, c = torch.randn(5, G.z_dim), torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        G(z, c, update_emas=True)                                             # non-trivial w_avg / EMAs
        ws = G.mapping(z, c)
    img, feats = features(G, ws)
    grow(G, new_res, num_new_layers=heads)
    n = G.head_start
    assert n == 2 and G.stage == 1 and G.resolutions == [16, new_res] and G.img_resolution == new_res
    assert len(G.synthesis.layers) == n + (heads or TINY.head_layers) + 1
    assert G.num_ws == G.mapping.num_ws == len(G.synthesis.layers) + 1
    with torch.no_grad():
        ws2 = G.mapping(z, c)
        out = G(z, c)
    img2, feats2 = features(G, ws2)
    assert ws2.shape == (5, G.num_ws, G.w_dim) and torch.equal(ws2[:, :n + 1], ws[:, :n + 1])
    for a, b in zip(feats[:n + 1], feats2[:n + 1]):                          # Fourier input + kept layers
        assert torch.equal(a, b)
    assert img2.shape == out.shape == (5, 3, new_res, new_res) and torch.isfinite(img2).all()
    assert torch.equal(out, img2)
    assert feats2[-2].shape[-1] == new_res                                   # the last layer is at the new size


def test_growing_twice_keeps_every_earlier_layer():
    torch.manual_seed(0)
    G = progressive_generator(TINY3, c_dim=0, stage=0)
    z = torch.randn(3, G.z_dim)
    history = []
    for res in (32, 64):
        ws = G.mapping(z).detach()
        history.append((features(G, ws)[1], len(cut_critical(G.synthesis.schedule))))
        grow(G, res)
    ws = G.mapping(z).detach()
    img, feats = features(G, ws)
    assert img.shape == (3, 3, 64, 64) and G.resolutions == [16, 32, 64]
    for old_feats, kept in history:
        assert all(torch.equal(a, b) for a, b in zip(old_feats[:kept + 1], feats[:kept + 1]))
    # stage 2 freezes everything stage 1 kept: the stem and stage 1's ramp layer
    assert G.head_start == history[1][1] == 3 and G.num_frozen_layers == 3


# --- freezing ----------------------------------------------------------------------------------------------

def test_frozen_parts_get_no_gradient_and_do_not_change():
    torch.manual_seed(0)
    cfg = TINY3.replace(freeze_magnitude_ema=False)                         # EMAs live: freezing must stop them
    G = progressive_generator(cfg, c_dim=3, stage=0)
    z, c = torch.randn(6, G.z_dim), torch.arange(6) % 3
    with torch.no_grad(): G(z, c, update_emas=True)
    grow(G, 32)
    frozen = stem_keys(G)
    assert {'mapping.embed.table', 'synthesis.layers.0.magnitude_ema', 'synthesis.layers.0.weight'} <= frozen
    assert not {'mapping.w_avg', 'mapping.w_avg_class', 'synthesis.input.weight'} & frozen   # these keep training
    snap = {k: v.clone() for k, v in G.state_dict().items()}
    G.requires_grad_(False); G.requires_grad_(True)                          # a phase-toggling loop
    opt = torch.optim.Adam(G.parameters(), lr=1e-2, betas=(0.0, 0.99))      # even with every parameter
    for _ in range(2):
        loss = G(torch.randn(6, G.z_dim), c, update_emas=True).square().mean()
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        for m in G.frozen_modules():
            assert all(p.grad is None and not p.requires_grad for p in m.parameters())
    state = G.state_dict()
    assert all(torch.equal(state[k], snap[k]) for k in frozen)
    changed = {k for k in state if not torch.equal(state[k], snap[k])}
    head = G.head_start
    assert {f'synthesis.layers.{head}.weight', f'synthesis.layers.{head}.affine.weight',
            f'synthesis.layers.{head}.magnitude_ema', f'synthesis.layers.{len(G.synthesis.layers) - 1}.weight'} <= changed
    ids = {id(p) for p in G.trainable_parameters()}
    assert ids == {id(p) for m in (G.synthesis.input, *G.synthesis.layers[head:]) for p in m.parameters()}
    assert {'synthesis.input.weight', 'mapping.w_avg'} <= changed              # the input and w_avg train on
    assert count_parameters(G) > sum(p.numel() for p in G.trainable_parameters()) > 0


def test_grow_without_freezing_trains_everything():
    torch.manual_seed(0)
    G = progressive_generator(TINY, c_dim=0, stage=0)
    grow(G, 32, freeze=False)
    assert G.frozen_modules() == [] and G.num_frozen_layers == 0
    assert len(G.trainable_parameters()) == len(list(G.parameters()))
    before = G.synthesis.layers[0].weight.clone()
    opt = torch.optim.Adam(G.trainable_parameters(), lr=1e-2)
    G(torch.randn(2, G.z_dim)).square().mean().backward(); opt.step()
    assert not torch.equal(G.synthesis.layers[0].weight, before)
    G.freeze_stem(True)                                                       # and freezing can come later
    assert not G.synthesis.layers[0].weight.requires_grad and G.synthesis.input.weight.requires_grad


# --- stage k from a config ----------------------------------------------------------------------------------

def test_stage_k_directly_equals_growing_k_times_tiny():
    torch.manual_seed(0)
    grown = progressive_generator(TINY3, c_dim=4, stage=0)
    for k, res in enumerate(stage_resolutions(TINY3)):
        if k: grow(grown, res)
        direct = progressive_generator(TINY3, c_dim=4, stage=k)
        assert shapes(direct) == shapes(grown) and direct.synthesis.schedule == grown.synthesis.schedule
        assert shapes(ProgressiveGenerator.from_config(TINY3, 4, stage=k)) == shapes(grown)
        assert [n for n, _ in direct.named_parameters()] == [n for n, _ in grown.named_parameters()]
        assert ({n for n, p in direct.named_parameters() if p.requires_grad}
                == {n for n, p in grown.named_parameters() if p.requires_grad})
        assert direct.stage == grown.stage == k and direct.num_frozen_layers == grown.num_frozen_layers
        assert ([l.freeze_magnitude_ema for l in direct.synthesis.layers[:-1]]
                == [l.freeze_magnitude_ema for l in grown.synthesis.layers[:-1]])
        assert not direct.mapping.freeze_w_avg and not grown.mapping.freeze_w_avg      # w_avg keeps updating
        # a checkpoint of the grown G loads strictly into the rebuilt one and gives the same images
        direct.load_state_dict(grown.state_dict(), strict=True)
        z, c = torch.randn(2, direct.z_dim), torch.tensor([1, 3])
        with torch.no_grad():
            assert torch.equal(direct(z, c), grown(z, c))


def test_stage_k_directly_equals_growing_k_times_paper_on_meta():
    with torch.device('meta'):
        grown = progressive_generator(PAPER, stage=0)
        for k, res in enumerate(stage_resolutions(PAPER)):
            if k: grow(grown, res)
            direct = progressive_generator(PAPER, stage=k)
            assert shapes(direct) == shapes(grown) and direct.synthesis.schedule == grown.synthesis.schedule
            assert direct.num_frozen_layers == grown.num_frozen_layers
            assert len(direct.synthesis.layers) == [11, 16, 21, 26, 31, 36, 39][k]
            out = direct(torch.randn(2, PAPER.z_dim), torch.tensor([0, 999]))
            assert out.shape == (2, 3, res, res)


def test_next_stage_grows_the_ema_generator():
    torch.manual_seed(0)
    G = progressive_generator(TINY, c_dim=2, stage=0)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    with torch.no_grad():
        for p in G_ema.parameters(): p.add_(0.01)                            # an EMA that differs from G
    ws = G_ema.mapping(torch.randn(2, G.z_dim), torch.tensor([0, 1]))
    old = features(G_ema, ws)[1]
    G2, G2_ema = next_stage(G_ema)
    assert G2.img_resolution == G2_ema.img_resolution == 32 and G2.training and not G2_ema.training
    assert all(torch.equal(a, b) for a, b in zip(old[:3], features(G2, ws.detach()[:, :1].expand(-1, G2.num_ws, -1))[1][:3]))
    assert all(p.requires_grad for p in G2.trainable_parameters()) and not any(p.requires_grad for p in G2_ema.parameters())
    assert all(torch.equal(a, b) for a, b in zip(G2.state_dict().values(), G2_ema.state_dict().values()))
    assert G_ema.img_resolution == 16                                       # the finished stage's G_ema is untouched


# --- bad input ---------------------------------------------------------------------------------------------

def test_bad_input_is_named():
    G = progressive_generator(TINY, stage=0)
    with pytest.raises(ValueError, match='ProgressiveGenerator'):
        grow(Generator.from_config(TINY), 32)
    with pytest.raises(ValueError, match='power of two above the current 16'):
        grow(G, 24)
    with pytest.raises(ValueError, match='power of two above the current 16'):
        grow(G, 16)
    with pytest.raises(ValueError, match='num_layers >= num_critical'):
        grow(G, 32, num_new_layers=1)
    grow(G, 32)                                                              # tiny: the head is all critical ...
    with pytest.raises(ValueError, match='num_new_layers > num_critical'):
        grow(G, 64)                                                          # ... so growing again would cut it all
    with pytest.raises(ValueError, match='progressive=True'):
        progressive_generator(make_config('C', 'tiny'))
    with pytest.raises(ValueError, match=r'stages 0\.\.1'):
        progressive_generator(TINY, stage=2)
    with pytest.raises(ValueError, match='times a power of up=4'):
        stage_resolutions(TINY, up=4)
    with pytest.raises(ValueError, match='head_layers > num_critical'):
        stage_schedule(make_config('D', 'tiny', resolution=64), 2)
    with pytest.raises(ValueError, match='cut_critical'):
        continue_schedule(filter_schedule(16, 4), 32, 3)
    with pytest.raises(ValueError, match='stem_layers=2'):
        stage_schedule(TINY.replace(stem_layers=2), 0)


# --- the discriminator restarts --------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def lite0():
    from sgxl.features import FeatureNetwork
    return FeatureNetwork(LITE0, TINY.feature_weights, TINY.feature_resolution)


def test_restart_discriminator(lite0):
    table = torch.randn(3, TINY.embed_dim)
    torch.manual_seed(0)
    D0 = restart_discriminator(TINY, 3, table, [lite0])
    D1 = restart_discriminator(TINY, 3, table, [lite0])
    assert D1.feature_nets[0] is lite0 and D1.weights_sources == {LITE0: lite0.weights_source} != {LITE0: 'random'}
    assert torch.equal(D1.class_embedding.table, table) and D1.class_embedding.table is not table
    assert D1.class_embedding.table.requires_grad
    heads0 = [p for h in D0.heads for m in h for p in m.parameters()]
    heads1 = [p for h in D1.heads for m in h for p in m.parameters()]
    assert len(heads0) == len(heads1) and any(not torch.equal(a, b) for a, b in zip(heads0, heads1))
    # the new heads follow the config, as rung B's do: capped at head_channel_max, cutout of cutout_ratio
    narrow = restart_discriminator(TINY.replace(head_channel_max=16, cutout_ratio=0.3), 3, table, [lite0])
    body = lambda D: max(m.out_channels for hs in D.heads for h in hs for m in h.body.modules() if isinstance(m, torch.nn.Conv2d))
    assert body(narrow) == 16 and body(D1) == TINY.head_channel_max == 64      # (uncapped: 256 at 16 px maps)
    assert narrow.cutout_ratio == 0.3
    # G's output reaches lite0 at feature_resolution whatever the stage
    seen = []
    hook = lite0.backbone.conv_stem.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        for res in (16, 32):
            assert D1(torch.rand(2, 3, res, res) * 2 - 1, torch.tensor([0, 2])).shape == (2, 76)
    hook.remove()
    assert seen == [(2, 3, 64, 64)] * 2
    with pytest.raises(ValueError, match='pass table='):
        restart_discriminator(TINY, 3, None, [lite0])
    with pytest.raises(ValueError, match=r'want \(c_dim=3'):
        restart_discriminator(TINY, 3, torch.randn(4, TINY.embed_dim), [lite0])
    with pytest.raises(ValueError, match='do not match'):
        restart_discriminator(TINY.replace(feature_resolution=96), 3, table, [lite0])
    assert restart_discriminator(TINY, 0, None, [lite0]).class_embedding is None


# --- a tiny rung-D training step ------------------------------------------------------------------------------

def test_tiny_rung_d_step(lite0):
    from sgxl.data import ShapesDataset
    from sgxl.embeddings import apply_class_embeddings, class_embeddings
    cfg = TINY
    data32 = ShapesDataset(32, num_images=40)
    table = class_embeddings(data32, lite0, batch=40, progress=False, cache=False)        # (10, 320)
    torch.manual_seed(0)
    G = progressive_generator(cfg, c_dim=10, stage=0)
    apply_class_embeddings(G, None, table)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    G, G_ema = next_stage(G_ema)                                                          # 32x32
    D = restart_discriminator(cfg, 10, table, [lite0])
    opt_G = torch.optim.Adam(G.trainable_parameters(), lr=cfg.g_lr, betas=cfg.betas)
    opt_D = torch.optim.Adam(D.trainable_parameters(), lr=cfg.d_lr, betas=cfg.betas)
    reals = torch.stack([data32[i][0] for i in range(8)]).float() / 127.5 - 1               # (8, 3, 32, 32)
    labels = torch.as_tensor(data32.labels[:8])
    frozen = {k: v.clone() for k, v in G.state_dict().items() if k in stem_keys(G)}
    head = {k: v.clone() for k, v in G.state_dict().items() if k not in stem_keys(G)}
    lite_state = {k: v.clone() for k, v in lite0.state_dict().items()}
    z = torch.randn(8, G.z_dim)
    fakes = G(z, labels, update_emas=True)                                                 # (8, 3, 32, 32)
    assert fakes.shape == reals.shape
    loss_D = hinge_d_loss(D(reals, labels, 2.0), D(fakes.detach(), labels, 2.0))
    opt_D.zero_grad(set_to_none=True); loss_D.backward(); opt_D.step()
    D.requires_grad_(False)
    loss_G = hinge_g_loss(D(G(z, labels, update_emas=True), labels, 2.0))
    opt_G.zero_grad(set_to_none=True); loss_G.backward(); opt_G.step()
    D.requires_grad_(True)
    assert math.isfinite(loss_D.item()) and math.isfinite(loss_G.item())
    state = G.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())                        # stem + mapping + table
    assert any(not torch.equal(state[k], v) for k, v in head.items())                      # the head trained
    assert all(torch.equal(v, lite_state[k]) for k, v in lite0.state_dict().items())       # lite0 frozen
    assert not torch.equal(D.class_embedding.table, table)                                 # D's table trains


# --- when to grow -------------------------------------------------------------------------------------------------

def test_fid_stalled():
    assert not fid_stalled([], 1)
    assert not fid_stalled([10.0, 9.0, 8.0], 1)
    assert fid_stalled([10.0, 9.0, 9.5], 1)
    assert not fid_stalled([10.0, 9.0, 9.5, 9.2], 3) and fid_stalled([10.0, 9.0, 9.5, 9.2, 9.1], 3)
    assert fid_stalled([10.0, 9.0, 9.5, 9.2, 8.99], 3, min_delta=0.05)       # a tiny gain is not progress
    assert not fid_stalled([10.0, 9.0, 9.5, 9.2, 8.9], 3, min_delta=0.05)
    assert fid_stalled([10.0, float('nan'), float('nan')], 2)                # NaN never improves
    assert fid_stalled([float('nan')] * 2, 2) and not fid_stalled([float('nan'), 5.0], 2)
    with pytest.raises(ValueError, match='patience'):
        fid_stalled([1.0], 0)


def test_stage_policy_on_a_fid_sequence():
    policy = StagePolicy.from_config(TINY3.replace(stage_patience=2, stage_kimg=0.0))   # grow on FID, not a budget
    assert policy.num_stages == 3 and policy.stage_kimg == 0 and policy.patience == 2
    fids = [50.0, 40.0, 35.0, 36.0, 35.5,       # stem: best 35 at 30 kimg, stalls at 50
            70.0, 60.0, 61.0, 59.0, 59.5, 60.0,  # stage 1: compared only with itself; 59 at 90, stalls at 110
            80.0, 90.0, 95.0, 99.0]              # stage 2: the last, never grows
    grew = []
    for i, fid in enumerate(fids):
        kimg = 10.0 * (i + 1)
        policy.record_fid(fid)
        if policy.should_grow(kimg):
            grew.append(kimg); policy.advance(kimg)
            assert policy.fids == [] and policy.stage_start_kimg == kimg
    assert grew == [50.0, 110.0] and policy.stage == 2 and policy.last_stage
    with pytest.raises(ValueError, match='last'):
        policy.advance(200.0)
    restored = StagePolicy(num_stages=3)
    restored.load_state_dict(policy.state_dict())
    assert restored == policy


def test_stage_policy_fixed_length():
    policy = StagePolicy.from_config(TINY3.replace(stage_kimg=100.0))
    for fid in (10.0, 20.0, 30.0, 40.0): policy.record_fid(fid)              # FIDs do not matter here
    assert not policy.should_grow(99.9) and policy.should_grow(100.0)
    policy.advance(100.0)
    assert not policy.should_grow(150.0) and policy.should_grow(200.0)
    policy.advance(200.0)
    assert not policy.should_grow(1e9)                                       # last stage
    with pytest.raises(ValueError, match='stage=3'):
        StagePolicy(num_stages=3, stage=3)
    with pytest.raises(ValueError, match='patience'):
        StagePolicy(num_stages=3, patience=0)


# --- stage handover (as the released StyleGAN-XL runs one stage after another) -------------------------------

def test_stage_handover_best_checkpoint_ema_rampup_and_batch():
    "A new stage grows the finished stage's best G_ema, restarts G_ema's ramp-up, and takes its own batch."
    from sgxl.baseline import ema_beta
    from sgxl.data import load
    from sgxl.growing import RungD
    data16, data32 = load('shapes:num_images=40', resolution=16), load('shapes:num_images=40', resolution=32)
    batch = lambda ds, n: (torch.stack([ds[i][0] for i in range(n)]), torch.stack([ds[i][1] for i in range(n)]))
    cfg = make_config('D', 'tiny', batch=4, stage_batch=(8,), pl_weight=0.0)
    torch.manual_seed(0)
    rung = RungD(cfg, 'cpu', c_dim=10, dataset=data16)
    assert rung.cfg.batch == 8 and rung.base_cfg.batch == 4                     # stage 0 trains with batch 8
    rung.step(*batch(data16, 8), step_index=0)
    rung.record_fid(5.0)                                                        # the stage's best so far ...
    best = {k: v.clone() for k, v in rung.G_ema.state_dict().items()}
    rung.step(*batch(data16, 8), step_index=1)
    rung.record_fid(7.0)                                                        # ... and a worse one after it
    assert not torch.equal(rung.G_ema.synthesis.layers[0].weight, best['synthesis.layers.0.weight'])
    assert rung.grow() == 32 and rung.cfg.batch == 4 and rung.ema_nimg() == 0
    assert torch.equal(rung.G.synthesis.layers[0].weight, best['synthesis.layers.0.weight'])   # grown from the best
    stats = rung.step(*batch(data32, 4), step_index=2)
    assert stats['ema_beta'] == ema_beta(4, 4, rung.cfg.ema_half_life_kimg, rung.cfg.ema_rampup)   # ramp-up anew
    assert rung.G.synthesis.input.weight.requires_grad and not rung.G.mapping.freeze_w_avg
    # a checkpoint of the new stage restores its batch; 'last' grows the last G_ema instead of the best
    again = RungD(cfg, 'cpu', c_dim=10, dataset=data16)
    again.load_state_dict(rung.state_dict())
    assert again.stage == 1 and again.cfg.batch == 4 and again.base_cfg.stage_batch == (8,)
    torch.manual_seed(0)
    last = RungD(cfg.replace(stage_start='last'), 'cpu', c_dim=10, dataset=data16)
    last.step(*batch(data16, 8), step_index=0); last.record_fid(5.0)
    last.step(*batch(data16, 8), step_index=1); last.record_fid(7.0)
    w_last = last.G_ema.synthesis.layers[0].weight.clone()
    last.grow()
    assert torch.equal(last.G.synthesis.layers[0].weight, w_last)
