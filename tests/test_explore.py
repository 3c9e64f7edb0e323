"""sgxl.explore and `sgxl generate`: seeds, class-mean truncation, class sheets, interpolation, GIFs, the moved
Fourier input, the figure functions and the widget, bad input, and the command end to end from a checkpoint."""
import json
import os
import subprocess
import sys

import imageio.v3 as iio
import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

import sgxl.checkpoint
from sgxl import explore as ex
from sgxl.core import make_config, to_uint8
from sgxl.stylegan3 import Generator


@pytest.fixture(scope='module')
def G():
    "An untrained tiny rung-C generator (10 classes) with sampled class means of w."
    torch.manual_seed(0)
    g = Generator.from_config(make_config('C', 'tiny', c_dim=10)).eval().requires_grad_(False)
    return ex.sample_w_means(g, num=300)


@pytest.fixture(scope='module')
def G_uncond():
    torch.manual_seed(1)
    g = Generator.from_config(make_config('B', 'tiny')).eval().requires_grad_(False)
    return ex.sample_w_means(g, num=300)


def test_parse_range():
    assert ex.parse_range('0-3,7,10-11') == [0, 1, 2, 3, 7, 10, 11]
    assert ex.parse_range(5) == [5] and ex.parse_range([1, '3-4']) == [1, 3, 4]
    for bad in ('5-2', 'a', '-1', '1,,2', ''):
        with pytest.raises(ValueError, match='seeds'):
            ex.parse_range(bad)


def test_generation_is_deterministic_per_seed(G):
    a, ca = ex.generate(G, [0, 1, 2, 3], classes=3)
    b, cb = ex.generate(G, [0, 1, 2, 3], classes=3)
    alone, _ = ex.generate(G, [2], classes=3)
    assert torch.equal(a, b) and torch.equal(ca, cb)
    assert torch.allclose(alone[0], a[2], atol=1e-5)                        # independent of the batch
    assert (a[0] - a[1]).abs().mean() > 1e-3                                 # different seeds, different images
    drawn, c1 = ex.generate(G, [4, 5, 6])                                    # classes drawn from the seeds
    again, c2 = ex.generate(G, [6, 5, 4])
    assert torch.equal(c1, c2.flip(0)) and torch.allclose(drawn, again.flip(0), atol=1e-5)


def test_psi_zero_gives_the_class_mean(G):
    imgs, _ = ex.generate(G, range(4), classes=7, psi=0.0)
    mean_ws = ex.class_mean_w(G, [7])[:, None].repeat(1, G.num_ws, 1)
    mean_img = ex.synthesize(G, mean_ws)
    assert all(torch.allclose(img, mean_img[0], atol=1e-5) for img in imgs)
    assert torch.allclose(ex.class_mean_w(G, [7])[0], ex.sample_w(G, 7, num=300).mean(0), atol=1e-5)
    other, _ = ex.generate(G, [0], classes=2, psi=0.0)
    assert (other[0] - mean_img[0]).abs().mean() > 1e-3                      # each class has its own centre
    z, _ = ex.z_from_seeds(G, [9])
    w1, w_half = ex.map_z(G, z, torch.tensor([7]), 1.0), ex.map_z(G, z, torch.tensor([7]), 0.5)
    assert torch.allclose(w_half, (w1 + ex.class_mean_w(G, [7])[:, None]) / 2, atol=1e-5)


def test_psi_zero_unconditional_gives_the_global_mean(G_uncond):
    imgs, c = ex.generate(G_uncond, [0, 1], psi=0.0)
    assert c is None and torch.allclose(imgs[0], imgs[1], atol=1e-5)
    assert torch.allclose(G_uncond.mapping.w_avg, ex.sample_w(G_uncond, None, num=300).mean(0), atol=1e-5)


def test_class_sheet_rows_are_classes(G):
    sheet = ex.class_sheet(G, [1, 8], per_class=3, psi=0.7)
    row, _ = ex.generate(G, range(3), classes=8, psi=0.7)
    assert sheet.shape == (6, 3, 32, 32) and torch.allclose(sheet[3:], row, atol=1e-5)


@pytest.mark.parametrize('kind', ['z', 'w', 'class'])
def test_interpolation_endpoints_equal_the_endpoint_images(G, kind):
    steps = 3
    if kind == 'class':
        frames = ex.interpolate(G, 'class', [5], classes=[0, 4, 9], steps=steps, psi=0.8)
        keys, _ = ex.generate(G, [5, 5, 5], classes=[0, 4, 9], psi=0.8)
    else:
        frames = ex.interpolate(G, kind, [0, 1, 2], classes=6, steps=steps, psi=0.8)
        keys, _ = ex.generate(G, [0, 1, 2], classes=6, psi=0.8)
    assert frames.shape[0] == 2 * steps + 1
    for k in range(3):
        assert torch.allclose(frames[k * steps], keys[k], atol=1e-5), (kind, k)
    assert (frames[1] - frames[0]).abs().mean() > 0                        # it moves in between


def test_slerp():
    a, b = torch.randn(3, 16), torch.randn(3, 16)
    assert torch.equal(ex.slerp(a, b, 0.0), a) and torch.equal(ex.slerp(a, b, 1.0), b)
    u, v = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    mid = ex.slerp(u, v, 0.3)
    assert torch.allclose(mid.norm(dim=1), torch.ones(3), atol=1e-5)        # stays on the sphere


def test_write_animation_roundtrip(G, tmp_path):
    frames = ex.interpolate(G, 'w', [0, 1], classes=2, steps=4)
    path = ex.write_animation(frames, tmp_path / 'a.gif', fps=10, scale=2)
    back = iio.imread(path)
    assert back.shape == (5, 64, 64, 3)
    first = to_uint8(ex.upscale(frames[:1], 2))[0].permute(1, 2, 0).numpy().astype(int)
    assert np.abs(back[0].astype(int) - first).mean() < 4                  # GIF palette: close, not exact
    with pytest.raises(ValueError, match='.gif'):
        ex.write_animation(frames, tmp_path / 'a.mp4')


def test_moved_input(G):
    z, _ = ex.z_from_seeds(G, [3])
    ws = ex.map_z(G, z, torch.tensor([5]))
    base = ex.synthesize(G, ws)
    moved = ex.synthesize(G, ws, translate=(4 / 32, 0.0))
    assert torch.equal(G.synthesis.input.transform, torch.eye(3))          # restored afterwards
    shifted = (moved[..., 8:-8, 12:-4] - base[..., 8:-8, 8:-8]).abs().mean()
    unshifted = (moved[..., 8:-8, 8:-8] - base[..., 8:-8, 8:-8]).abs().mean()
    assert shifted < 0.5 * unshifted                                        # the content moved right by 4 px
    assert not torch.allclose(ex.synthesize(G, ws, angle=45), base, atol=1e-3)


def test_figures_and_widget(G):
    fig = ex.explore_figure(G, seed=0, c=1, psi=0.7, seed2=1, c2=3, t=0.25, space='class', tx=0.1, angle=10)
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 3
    view = ex.explore_view(G, seed=2, c=1, seed2=4, t=1.0, space='w')
    b, _ = ex.generate(G, [4], classes=1)
    assert torch.allclose(view[1], b[0], atol=1e-5) and torch.allclose(view[2], b[0], atol=1e-5)
    import ipywidgets
    ui = ex.explorer(G)
    assert isinstance(ui, ipywidgets.VBox)
    with pytest.raises(ValueError, match='t=1.5'):
        ex.explore_view(G, t=1.5)


def test_bad_classes_are_clear_errors(G, G_uncond):
    with pytest.raises(ValueError, match=r'class 10 is out of range: this network has 10 classes, 0\.\.9'):
        ex.generate(G, [0], classes=10)
    with pytest.raises(ValueError, match='unconditional'):
        ex.generate(G_uncond, [0], classes=1)
    with pytest.raises(ValueError, match='two or more classes'):
        ex.interpolate(G, 'class', [0], classes=[3])
    with pytest.raises(ValueError, match="interpolate in 'z', 'w' or 'class'"):
        ex.interpolate(G, 'x', [0, 1])


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match='no network at'):
        ex.load_network(tmp_path / 'nothing-here')
    assert ex.generate_main(['--network', str(tmp_path / 'nothing'), '--outdir', str(tmp_path / 'out')]) == 1
    assert 'no network at' in capsys.readouterr().err


# --- the command, end to end, from a checkpoint in the training loop's format -----------------------------

def write_checkpoint(folder, cfg, seed=0):
    "A checkpoint as the training loop writes it: the rung's state (G and G_ema) and the config in the metadata."
    torch.manual_seed(seed)
    G = Generator.from_config(cfg).eval().requires_grad_(False)
    sd = G.state_dict()
    path = sgxl.checkpoint.save_checkpoint(folder / 'ckpt-000000001', {'rung': {'G': sd, 'G_ema': sd}},
                                         {'config': cfg.to_dict(), 'step': 1, 'kimg': 0.008, 'dataset': cfg.data})
    return path, G


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp('run'), make_config('C', 'tiny', c_dim=10))


def sgxl_cli(capsys, *args) -> tuple[int, str, str]:
    "Run `sgxl ARGS` in this process (the console script's own dispatch): (exit code, stdout, stderr)."
    from sgxl.cli import main
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_generate_cli_end_to_end(checkpoint, tmp_path, capsys):
    path, G = checkpoint
    out = tmp_path / 'out'
    rc, stdout, err = sgxl_cli(capsys, 'generate', '--network', path.parent, '--seeds', '0-3', '--class', '3',
                               '--trunc', '0.7', '--outdir', out, '--mean-samples', '200')
    assert rc == 0, err
    names = [f'seed{s:04d}-class03.png' for s in range(4)]
    assert all((out / n).is_file() for n in names) and (out / 'grid.png').is_file()
    G = ex.sample_w_means(G, [3], num=200)
    expected, _ = ex.generate(G, range(4), classes=3, psi=0.7)
    for n, img in zip(names, expected):                                     # the files are these exact samples
        got = np.asarray(Image.open(out / n)).astype(int)
        assert np.abs(got - to_uint8(img).permute(1, 2, 0).numpy().astype(int)).max() <= 1
    record = json.loads((out / 'generate.json').read_text())
    assert record['settings']['trunc'] == 0.7 and record['network']['kimg'] == 0.008
    rc, _, err = sgxl_cli(capsys, 'generate', '--network', path.parent, '--seeds', '2', '--class', '3', '--rotate', '90',
                          '--trunc', '0.7', '--outdir', tmp_path / 'rot', '--mean-samples', '200')
    assert rc == 0, err
    turned, _ = ex.generate(G, [2], classes=3, psi=0.7, angle=90)
    got = np.asarray(Image.open(tmp_path / 'rot' / 'seed0002-class03.png')).astype(int)
    assert np.abs(got - to_uint8(turned[0]).permute(1, 2, 0).numpy().astype(int)).max() <= 1     # --rotate is applied
    assert np.abs(got - to_uint8(expected[2]).permute(1, 2, 0).numpy().astype(int)).mean() > 2


def test_generate_cli_sheet_and_gifs(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    rc, _, err = sgxl_cli(capsys, 'generate', '--network', path, '--classes', '0-4', '--per-class', '3',
                          '--outdir', tmp_path / 's', '--mean-samples', '100')
    assert rc == 0, err
    assert Image.open(tmp_path / 's' / 'classes.png').size == (3 * 33 + 1, 5 * 33 + 1)
    rc, _, err = sgxl_cli(capsys, 'generate', '--network', path, '--seeds', '1,2', '--classes', '2,6', '--interp',
                          'z,w,class', '--frames', '3', '--outdir', tmp_path / 'g', '--mean-samples', '100',
                          '--translate', '0.1,0')
    assert rc == 0, err
    for kind in ('z', 'w', 'class'):
        assert iio.imread(tmp_path / 'g' / f'interp-{kind}.gif').shape[0] == 3 + 1


def test_generate_cli_bad_input(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    rc, _, err = sgxl_cli(capsys, 'generate', '--network', path, '--class', '12', '--outdir', tmp_path / 'o')
    assert rc == 1 and 'class 12 is out of range: this network has 10 classes' in err
    rc, _, err = sgxl_cli(capsys, 'generate', '--network', tmp_path / 'missing', '--outdir', tmp_path / 'o')
    assert rc == 1 and 'no network at' in err
    rc, _, err = sgxl_cli(capsys, 'generate', '--network', path, '--seeds', '3-1', '--outdir', tmp_path / 'o')
    assert rc == 1 and 'runs backwards' in err
    rc, _, err = sgxl_cli(capsys, 'generate', '--network', path, '--translate', '0.1', '--outdir', tmp_path / 'o')
    assert rc == 1 and "--translate '0.1'" in err


@pytest.mark.parametrize('args, message', [
    (['--seeds', 'abc'], "--seeds 'abc': write non-negative integers"),
    (['--seeds', '3-1'], 'runs backwards'),
    (['--class', '3', '--classes', '1,2'], 'give --class (one class for every sample) or --classes'),
    (['--classes', '1,2', '--seeds', '0-2'], "--seeds '0-2' gives 3 seed(s) for --per-class 8"),
    (['--interp', 'zz'], "--interp 'zz': write one or more of z, w, class"),
    (['--interp', 'class', '--class', '2'], '--interp class runs through two or more classes'),
    (['--interp', 'w', '--classes', '1,2'], '--classes gives 2 classes for 8 seeds'),
    (['--per-class', '0', '--classes', '1'], '--per-class 0: use 1 or more'),
    (['--fps', '0', '--interp', 'z'], '--fps 0.0: use a positive frame rate'),
    (['--scale', '0'], '--scale 0: enlarge by a whole factor'),
    (['--mean-samples', '-5'], '--mean-samples -5'),
    (['--translate', '0.1'], "--translate '0.1': write two numbers"),
    (['--device', 'gpu'], "--device 'gpu': use 'auto', 'cpu', 'cuda' or 'cuda:N'"),
])
def test_generate_cli_bad_options_fail_before_loading(args, message, tmp_path, capsys):
    "Each bad option is named with its fix, before the (here missing) network is even looked for; nothing is written."
    rc, _, err = sgxl_cli(capsys, 'generate', '--network', tmp_path / 'missing', '--outdir', tmp_path / 'o', *args)
    assert rc == 1 and message in err and 'no network' not in err, err
    assert not (tmp_path / 'o').exists()


def test_generate_cli_bad_classes_write_nothing(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    (tmp_path / 'file').write_text('')
    rc, _, err = sgxl_cli(capsys, 'generate', '--network', path, '--outdir', tmp_path / 'file')
    assert rc == 1 and "is a file: give a folder" in err
    rc, _, err = sgxl_cli(capsys, 'generate', '--network', path, '--classes', '1,20', '--outdir', tmp_path / 'o')
    assert rc == 1 and 'class 20 is out of range: this network has 10 classes, 0..9' in err
    assert not (tmp_path / 'o').exists()


def test_generate_help_explains_the_outputs(capsys):
    with pytest.raises(SystemExit):
        sgxl_cli(capsys, 'generate', '--help')
    text = capsys.readouterr().out
    for expected in ('grid.png', 'classes.png', 'interp-z.gif', 'generate.json', '--trunc PSI', "'0-15'", 'examples:'):
        assert expected in text, expected


def test_generate_console_script(checkpoint, tmp_path):
    "The installed entry point, as a user runs it."
    path, _ = checkpoint
    r = subprocess.run([sys.executable, '-m', 'sgxl', 'generate', '--network', str(path), '--seeds', '0-1',
                        '--outdir', str(tmp_path), '--mean-samples', '50'], capture_output=True, text=True,
                       timeout=300, env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    assert r.returncode == 0, r.stderr
    assert 'wrote 3 file(s)' in r.stdout and len(list(tmp_path.glob('seed000*-class*.png'))) == 2


def test_commands_on_a_real_training_run(tmp_path, capsys):
    "One step of the real training loop (rung C, tiny), then `sgxl generate` and `sgxl invert` on its run folder."
    rc, _, err = sgxl_cli(capsys, 'train', '--cfg', 'C', '--preset', 'tiny', '--kimg', '0.008', '--data',
                          'shapes:num_images=200', '--metrics', 'none', '--outdir', tmp_path / 'runs', '--quiet')
    assert rc == 0, err
    run = next((tmp_path / 'runs').iterdir())
    rc, out, err = sgxl_cli(capsys, 'generate', '--network', run, '--seeds', '0-2', '--class', '4', '--outdir',
                            tmp_path / 'gen', '--mean-samples', '100')
    assert rc == 0 and 'wrote 4 file(s)' in out, err
    G, meta = ex.load_network(run)
    G = ex.sample_w_means(G, [4], num=100)
    expected, _ = ex.generate(G, [1], classes=4)
    got = np.asarray(Image.open(tmp_path / 'gen' / 'seed0001-class04.png')).astype(int)
    assert np.abs(got - to_uint8(expected[0]).permute(1, 2, 0).numpy().astype(int)).max() <= 1
    ex.save_image(expected[0], tmp_path / 'target.png')
    rc, out, err = sgxl_cli(capsys, 'invert', '--network', run, '--target', tmp_path / 'target.png', '--class', '4',
                            '--steps', '10', '--pti-steps', '3', '--outdir', tmp_path / 'inv')
    assert rc == 0 and 'after PTI' in out, err
    report = json.loads((tmp_path / 'inv' / 'inversion.json').read_text())
    assert report['c'] == 4 and not report.get('inferred') and report['psnr_projection'] > report['psnr_start']
