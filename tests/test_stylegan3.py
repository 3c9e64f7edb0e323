"""The StyleGAN3-T generator: paper parameter counts, the schedule, sizes on the meta device, bad input.

The notebook nbs/02_stylegan3.ipynb checks the ideas (alignment, equivariance, truncation); these tests pin
the numbers other parts of the project rely on and the errors a user sees.
"""
import math

import pytest
import torch

from sgxl.core import make_config
from sgxl.filters import filter_schedule, layer_io, schedule_from_config
from sgxl.stylegan3 import ClassEmbedding, FourierInput, Generator, count_parameters, translation_matrix


@pytest.mark.parametrize('res, base, expected', [(256, 16384, 23_320_443), (256, 32768, 28_472_133),
                                                 (1024, 32768, 22_313_167)])
def test_paper_parameter_counts(res, base, expected):
    with torch.device('meta'):
        G = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=res, channel_base=base, channel_max=512,
                      mapping_layers=2)
    assert count_parameters(G) == expected
    assert G.num_ws == 16 and G.z_dim == 512 and G.w_dim == 512 and G.img_resolution == res


def test_schedule_1024_matches_paper_figure():
    sch = filter_schedule(1024)
    assert [p.size for p in sch] == [36, 36, 52, 52, 84, 148, 148, 276, 276, 532, 1044, 1044, 1044, 1024, 1024]
    assert [p.channels for p in sch] == [512] * 7 + [323, 203, 128, 81, 51, 32, 32, 3]
    assert [p.sampling_rate for p in sch] == [16, 16, 32, 32, 64, 128, 128, 256, 256, 512] + [1024] * 5
    assert [p.name for p in sch][-1] == 'ToRGB' and [p.critical for p in sch] == [False] * 12 + [True] * 3
    assert sch[0].cutoff == 2 and math.isclose(sch[0].stopband, 2 ** 2.1) and sch[-1].cutoff == 512
    assert math.isclose(sch[-1].stopband, 512 * 2 ** 0.3)


@pytest.mark.parametrize('res', [16, 32, 64, 128, 256, 512, 1024])
@pytest.mark.parametrize('num_layers, num_critical', [(14, 2), (6, 2), (10, 2), (4, 1)])
def test_output_sizes_meta(res, num_layers, num_critical):
    with torch.device('meta'):
        G = Generator(64, 3, 64, res, num_layers=num_layers, num_critical=num_critical, channel_max=64)
        img = G(torch.randn(2, 64), torch.tensor([0, 2]))
    assert img.shape == (2, 3, res, res) and G.num_ws == num_layers + 2


def test_schedule_is_explicit_and_extendable():
    "A synthesis network can be built from any schedule, e.g. a 16x16 stem of 10 layers (config D's start)."
    stem = filter_schedule(16, num_layers=10)
    with torch.device('meta'):
        G = Generator(32, 0, 32, 16, schedule=stem, channel_max=32)
        assert G(torch.randn(1, 32)).shape == (1, 3, 16, 16)
    assert G.synthesis.schedule == stem and len(G.synthesis.layers) == 11
    ios = layer_io(stem)
    assert ios[0] == (stem[0], stem[0]) and all(a.index == b.index - 1 for a, b in ios[1:])
    cfg = make_config('A', 'tiny')
    assert schedule_from_config(cfg) == filter_schedule(32, 6, 2, 10, 2048, 32)


def test_lowpass_toggle_keeps_weights_loadable():
    torch.manual_seed(0)
    cfg = make_config('A', 'tiny')
    G = Generator.from_config(cfg)
    G_box = Generator.from_config(cfg)
    G_box.synthesis.set_lowpass(False)
    G_box.load_state_dict(G.state_dict())                     # filters are not part of the state
    z = torch.randn(2, G.z_dim)
    with torch.no_grad():
        a, b = G(z), G_box(z)
    assert a.shape == b.shape and not torch.allclose(a, b)
    G_box.synthesis.set_lowpass(True)
    with torch.no_grad():
        assert torch.allclose(G_box(z), a)


def test_truncation_unseen_class_falls_back_to_global_mean():
    torch.manual_seed(0)
    G = Generator.from_config(make_config('A', 'tiny'), c_dim=3)
    G.mapping(torch.randn(16, G.z_dim), torch.zeros(16, dtype=torch.long), update_w_avg=True)
    ws = G.mapping(torch.randn(4, G.z_dim), torch.tensor([0, 0, 2, 2]), truncation_psi=0)
    assert torch.allclose(ws[:2], G.mapping.w_avg_class[0].expand(2, G.num_ws, -1))
    assert torch.allclose(ws[2:], G.mapping.w_avg.expand(2, G.num_ws, -1))      # class 2 never seen


def test_label_embedding_is_swappable():
    torch.manual_seed(0)
    G = Generator.from_config(make_config('A', 'tiny', embed_dim=8), c_dim=3)
    table = torch.randn(3, 8)
    G.mapping.set_embedding(ClassEmbedding.from_table(table, trainable=False))
    assert torch.equal(G.mapping.embed(torch.tensor([2, 0])), table[[2, 0]])
    assert not G.mapping.embed.table.requires_grad
    with pytest.raises(ValueError, match='embed_dim'):
        G.mapping.set_embedding(ClassEmbedding(3, 5))


def test_user_transform_per_sample():
    torch.manual_seed(0)
    fi = FourierInput(w_dim=8, channels=4, size=20, sampling_rate=16, bandwidth=2)
    w = torch.randn(2, 8)
    x0 = fi(w)
    fi.transform = torch.stack([torch.eye(3, dtype=torch.float64), translation_matrix(1 / 16, 0)]).float()
    x1 = fi(w)
    assert torch.allclose(x1[0], x0[0], atol=1e-6) and torch.allclose(x1[1, ..., 1:], x0[1, ..., :-1], atol=1e-5)


def test_bad_input_errors_name_the_fix():
    cfg = make_config('A', 'tiny')
    G = Generator.from_config(cfg, c_dim=4)
    with pytest.raises(ValueError, match=r'want \(N, 512\)'):
        G(torch.randn(2, 7), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match='needs labels'):
        G(torch.randn(2, 512))
    with pytest.raises(ValueError, match='0..3'):
        G(torch.randn(2, 512), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match='c=None'):
        Generator.from_config(cfg)(torch.randn(2, 512), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r'ws of shape'):
        G.synthesis(torch.randn(2, 3, cfg.w_dim))
    with pytest.raises(ValueError, match='power of two'):
        filter_schedule(100)
    with pytest.raises(ValueError, match='num_layers > num_critical'):
        filter_schedule(64, num_layers=2, num_critical=2)


def test_warp_images_exact_cases():
    from sgxl.equivariance import warp_images
    from sgxl.stylegan3 import rotation_matrix
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    y, valid = warp_images(x, translation_matrix(3 / 32, -2 / 32), radius=1)     # content moves right 3, up 2
    assert torch.equal(y[..., :-2, 3:], x[..., 2:, :-3]) and valid[0, 0].sum() == 30 * 29
    assert valid[:, :, :-2, 3:].all() and not valid[:, :, -2:, :].any() and not valid[:, :, :, :3].any()
    y, valid = warp_images(x, rotation_matrix(math.pi / 2), radius=4)
    assert torch.allclose(y[..., 4:-4, 4:-4], torch.rot90(x, -1, dims=(2, 3))[..., 4:-4, 4:-4])
    # a fractional shift of a smooth, band-limited image is accurate away from the border
    g = (torch.arange(64, dtype=torch.float64) + 0.5) / 64 - 0.5
    wave = lambda dx: torch.sin(2 * math.pi * (3 * (g[None, :] - dx) + 2 * g[:, None]))[None, None]
    y, valid = warp_images(wave(0.0), translation_matrix(0.37 / 64, 0), radius=8)
    assert (y - wave(0.37 / 64))[valid].abs().max() < 1e-4


def test_equivariance_metrics_restore_the_transform():
    from sgxl.equivariance import eq_r, eq_t
    torch.manual_seed(0)
    G = Generator.from_config(make_config('A', 'tiny'), c_dim=2).eval()
    G.synthesis.input.transform = translation_matrix(0.1, 0.0).float()
    before = G.synthesis.input.transform.clone()
    assert eq_t(G, 2, batch_size=2) > 60 and eq_r(G, 2, batch_size=2) < 60   # (config T: not rotation-equivariant)
    assert torch.equal(G.synthesis.input.transform, before)


def test_ops_impl_reaches_every_layer():
    from sgxl.baseline import ResNetDiscriminator
    cfg = make_config('A', 'tiny', ops_impl='ref')
    G, D = Generator.from_config(cfg), ResNetDiscriminator.from_config(cfg)
    impls = {m.impl for net in (G, D) for m in net.modules() if hasattr(m, 'impl')}
    assert impls == {'ref'} and len([m for m in G.modules() if hasattr(m, 'impl')]) > 2 * cfg.num_layers
    G.set_ops_impl('cuda')                                    # asks for kernels on a device x is not on
    with pytest.raises((ValueError, RuntimeError), match='cuda'):
        G(torch.randn(1, G.z_dim))
    with pytest.raises(ValueError, match='choose'):
        G.set_ops_impl('fast')


def test_torgb_divides_by_its_tracked_magnitude():
    # StyleGAN3 (and the release fixtures of test_pretrained) scale ToRGB's input by 1/sqrt(magnitude EMA) too
    torch.manual_seed(0)
    G = Generator(z_dim=8, w_dim=16, img_resolution=16, num_layers=4, channel_base=256, channel_max=16)
    rgb = G.synthesis.layers[-1]
    z = torch.randn(3, 8)
    with torch.no_grad():
        base = G(z)
        G(z, update_emas=True)
    assert rgb.magnitude_ema.item() != 1.0                       # tracked while training
    with torch.no_grad():
        rgb.magnitude_ema.fill_(4.0)
        for layer in G.synthesis.layers[:-1]: layer.magnitude_ema.fill_(1.0)
        scaled = G(z)                                            # ToRGB's input divided by 2: output (minus bias) halves
    b = rgb.bias.view(1, -1, 1, 1) * G.synthesis.output_scale
    assert torch.allclose(scaled - b, (base - b) / 2, atol=1e-6)
    G.synthesis.layers[-1].freeze_magnitude_ema = True
    with torch.no_grad(): G(z, update_emas=True)
    assert rgb.magnitude_ema.item() == 4.0


def test_class_embedding_projection_is_fc_plus_leaky_relu():
    m = Generator(z_dim=8, c_dim=3, w_dim=16, img_resolution=16, num_layers=4, channel_base=256, channel_max=16,
                  embed_dim=5, embed_proj_dim=8).mapping
    assert m.embed_proj.activation == 'lrelu' and m.fcs[0].in_features == 8 + 8
    e = m.embed(torch.tensor([0, 1, 2]))
    proj = e @ (m.embed_proj.weight * m.embed_proj.weight_gain).t() + m.embed_proj.bias
    assert torch.allclose(m.embed_proj(e), torch.nn.functional.leaky_relu(proj, 0.2) * math.sqrt(2), atol=1e-6)
    # a table may hold more rows than classes (the release keeps 1000): class i reads row i
    emb = ClassEmbedding(3, 5, torch.randn(10, 5))
    assert torch.equal(emb(torch.tensor([2])), emb.table[2:3])


def test_rung_a_trains_without_style_mixing():
    from sgxl.core import rung_diff
    assert make_config('A').style_mixing == 0.0 and 'style_mixing' not in rung_diff('B')
