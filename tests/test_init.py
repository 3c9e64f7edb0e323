"""`sgxl train --init SOURCE`: a new run from another network's weights. Into new data with another class count
(class tables fresh, the rest copied, D taken when it fits), from an exported folder (D fresh), and StyleGAN-XL's
stage-wise recipe: the next stage (--up 2, --up 4) grown from a saved lower-resolution progressive network."""
import json

import pytest
import torch
from PIL import Image

from sgxl import networks as nw
from sgxl.core import make_config
from sgxl.data import load
from sgxl.checkpoint import latest_checkpoint, load_checkpoint
from sgxl.training import Trainer, train_main

TINY = ['--preset', 'tiny', '--batch', '4', '--quiet', '--kimg', '0.008', '--snap', '0.008']


def write_labelled(folder, n=12, classes=3):
    "A folder dataset of shapes images whose labels are the shape class modulo `classes`."
    shapes = load('shapes', resolution=32, num_images=n, seed=7)
    folder.mkdir(parents=True)
    for i in range(n): Image.fromarray(shapes[i][0].permute(1, 2, 0).numpy()).save(folder / f'img{i:03d}.png')
    (folder / 'dataset.json').write_text(json.dumps({'labels': [[f'img{i:03d}.png', i % classes] for i in range(n)]}))
    return folder


@pytest.fixture(scope='module')
def source_a(tmp_path_factory):
    "A real rung-A run on shapes (10 classes)."
    out = tmp_path_factory.mktemp('src')
    assert train_main(['--cfg', 'A', '--data', 'shapes:num_images=40', *TINY, '--outdir', str(out)]) == 0
    return next(out.iterdir())


def test_init_into_new_data_with_another_class_count(source_a, tmp_path, capsys):
    data = write_labelled(tmp_path / 'three')
    capsys.readouterr()
    assert train_main(['--cfg', 'A', '--data', str(data), *TINY, '--init', str(source_a),
                       '--outdir', str(tmp_path / 'runs')]) == 0
    out = capsys.readouterr().out
    assert '10 -> 3 classes: re-initialised the class tables' in out and 'G and G_ema from' in out
    run = next((tmp_path / 'runs').iterdir())
    meta = load_checkpoint(latest_checkpoint(run))[1]
    assert meta['init']['classes'] == [10, 3] and meta['config']['c_dim'] == 3

    # What the new run starts from, before any step: the source's tensors, class tables aside.
    cfg = make_config('A', 'tiny', data=str(data), batch=4)
    tr = Trainer(cfg, outdir=tmp_path / 'runs2', progress=False, init=str(source_a))
    src = load_checkpoint(latest_checkpoint(source_a))[0]['rung']
    fresh = set(nw.class_table_keys(tr.rung.G.state_dict(), src['G'], 3, 10))
    assert fresh and all(k.startswith('mapping.') for k in fresh)
    for k, v in tr.rung.G_ema.state_dict().items():
        if k not in fresh: assert torch.equal(v, src['G_ema'][k]), k
    d_fresh = set(nw.class_table_keys(tr.rung.D.state_dict(), src['D'], 3, 10))
    assert all(torch.equal(v, src['D'][k]) for k, v in tr.rung.D.state_dict().items() if k not in d_fresh)
    assert any('D from' in line for line in tr.init_info['report'])


def test_init_from_an_export_and_bad_sources(source_a, tmp_path, capsys):
    exported = nw.export_network(source_a, tmp_path / 'exp')
    cfg = make_config('A', 'tiny', data='shapes:num_images=40', batch=4)
    tr = Trainer(cfg, outdir=tmp_path / 'r', progress=False, init=str(exported))
    assert 'D: fresh (the source holds no discriminator)' in tr.init_info['report']
    G_ema = nw.load_network(exported)
    assert all(torch.equal(a, b) for a, b in zip(tr.rung.G.state_dict().values(), G_ema.state_dict().values()))
    # Another architecture, another rung family, unlabelled data, and --init with --resume: clear errors.
    assert train_main(['--cfg', 'A', '--data', 'shapes:num_images=40', *TINY, '--set', 'channel_max=16',
                       '--init', str(source_a), '--outdir', str(tmp_path / 'x')]) == 1
    assert "architecture differs from this run's" in capsys.readouterr().err
    assert train_main(['--cfg', 'D', '--data', 'shapes:num_images=40', *TINY, '--init', str(source_a),
                       '--outdir', str(tmp_path / 'x')]) == 1
    assert 'a progressive rung (D..F) starts from a progressive network' in capsys.readouterr().err
    assert train_main(['--resume', str(source_a), '--init', str(source_a)]) == 1
    assert '--init' in capsys.readouterr().err
    assert not (tmp_path / 'x').exists() or not any((tmp_path / 'x').iterdir())


@pytest.fixture(scope='module')
def stem16(tmp_path_factory):
    "A real rung-D run that has only its 16x16 stem (resolution 16)."
    out = tmp_path_factory.mktemp('stem')
    assert train_main(['--cfg', 'D', '--data', 'shapes:num_images=40', '--resolution', '16', *TINY,
                       '--outdir', str(out)]) == 0
    return next(out.iterdir())


@pytest.mark.parametrize('up,resolution', [(2, 32), (4, 64)])
def test_next_stage_from_a_lower_resolution_network(stem16, tmp_path, up, resolution, capsys):
    "StyleGAN-XL's stage-wise recipe: the run starts at stage 1, grown from the stem, the stem frozen."
    args = ['--cfg', 'D', '--data', 'shapes:num_images=40', '--resolution', str(resolution), '--up', str(up), *TINY,
            '--init', str(stem16), '--outdir', str(tmp_path)]
    if up == 4:                                                        # 64px on CPU: build the run, do not train it
        from sgxl.training import config_from_args, train_parser
        tr = Trainer(config_from_args(train_parser().parse_args(args)), outdir=tmp_path, progress=False,
                     init=str(stem16))
        G, report = tr.rung.G, tr.init_info['report']
    else:
        assert train_main(args) == 0
        run = next(tmp_path.iterdir())
        state, meta = load_checkpoint(latest_checkpoint(run))
        assert meta['stage'] == 1 and meta['resolution'] == 32 and meta['config']['grow_up'] == 2
        report = meta['init']['report']
        G = nw.load_network(run)
    assert G.stage == 1 and G.img_resolution == resolution and G.num_frozen_layers > 0
    assert any(f'grown to stage 1 ({resolution}px)' in line for line in report)
    src = nw.load_network(stem16)
    # the frozen mapping weights stay the source's (the Fourier input and w_avg train on, as released)
    kept = {k: v for k, v in src.state_dict().items() if k.startswith('mapping.') and 'w_avg' not in k}
    mine = G.state_dict()
    assert kept and all(torch.equal(mine[k], v) for k, v in kept.items())             # the frozen stem: the source's


def test_init_from_the_hub_cache(source_a, tmp_path, monkeypatch):
    "--init hf://USER/REPO reads the same resolver as --network: an export in a (test-made) hub cache, offline."
    exported = nw.export_network(source_a, tmp_path / 'exp')
    commit = 'fedcba9876543210fedcba9876543210fedcba98'
    root = tmp_path / 'hub' / 'models--someone--sgxl-a'
    (root / 'refs').mkdir(parents=True)
    (root / 'refs' / 'main').write_text(commit)
    import shutil
    shutil.copytree(exported, root / 'snapshots' / commit)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'hub'))
    cfg = make_config('A', 'tiny', data='shapes:num_images=40', batch=4)
    tr = Trainer(cfg, outdir=tmp_path / 'r', progress=False, init='hf://someone/sgxl-a')
    G_ema = nw.load_network(exported)
    assert all(torch.equal(a, b) for a, b in zip(tr.rung.G_ema.state_dict().values(), G_ema.state_dict().values()))
    assert tr.init_info['source'] == 'hf://someone/sgxl-a'


def test_finetune_a_progressive_network_at_its_own_stage_on_new_classes(stem16, tmp_path):
    "Same resolution as the source: no growing; another class count: G's and D's class tables start fresh."
    data = write_labelled(tmp_path / 'three')
    cfg = make_config('D', 'tiny', data=str(data), resolution=16, batch=4)
    tr = Trainer(cfg, outdir=tmp_path / 'r', progress=False, init=str(stem16))
    report = ' | '.join(tr.init_info['report'])
    assert tr.rung.G.stage == 0 and tr.rung.resolution == 16 and 'grown' not in report
    assert '10 -> 3 classes: re-initialised the class tables' in report and 'D from' in report
    src = load_checkpoint(latest_checkpoint(stem16))[0]['rung']
    mine = tr.rung.G_ema.state_dict()
    fresh = set(nw.class_table_keys(mine, src['G_ema'], 3, 10))
    assert 'mapping.embed.table' in fresh
    assert all(torch.equal(v, src['G_ema'][k]) for k, v in mine.items() if k not in fresh)


def test_up_is_for_progressive_rungs(capsys):
    assert train_main(['--cfg', 'B', '--preset', 'tiny', '--up', '4', '--dry-run']) == 1
    assert '--up 4: rung B does not grow' in capsys.readouterr().err
    assert train_main(['--cfg', 'D', '--preset', 'tiny', '--up', '4', '--resolution', '64', '--dry-run']) == 0
    assert '"grow_up": 4' in capsys.readouterr().out
