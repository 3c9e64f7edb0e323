"""Unlabelled datasets through the ladder: A, B, D and E train on a folder of images without labels (D and E grow
16 -> 32 with no class embeddings); C (whose one addition is the class table) and F (classifier guidance) stop at
once with an error that names what needs labels and which rung to train instead. The labelled side of every rung
is tests/test_training.py::test_every_rung_trains_through_sgxl_train."""
import pytest
import torch
from PIL import Image

from sgxl.core import RUNGS
from sgxl.data import load
from sgxl.checkpoint import latest_checkpoint, load_checkpoint, load_generator
from sgxl.training import Trainer, train_main

TINY = ['--preset', 'tiny', '--batch', '4', '--quiet', '--kimg', '0.008', '--snap', '0.008']


@pytest.fixture(scope='module')
def unlabelled(tmp_path_factory):
    "A flat folder of 16 PNGs (32x32), no dataset.json: an unconditional dataset."
    folder = tmp_path_factory.mktemp('flat') / 'pokemon-like'
    folder.mkdir()
    shapes = load('shapes', resolution=32, num_images=16, seed=4)
    for i in range(16):
        Image.fromarray(shapes[i][0].permute(1, 2, 0).numpy()).save(folder / f'img{i:03d}.png')
    data = load(str(folder))
    assert data.num_classes == 0 and data.labels is None
    return folder


@pytest.mark.parametrize('cfg', RUNGS)
def test_every_rung_on_unlabelled_data(cfg, unlabelled, tmp_path, capsys):
    extra = ['--set', 'stage_kimg=0.004'] if cfg in 'DEF' else []                # D, E grow 16 -> 32 mid-run
    code = train_main(['--cfg', cfg, '--data', str(unlabelled), *TINY, '--outdir', str(tmp_path), *extra])
    err = capsys.readouterr().err
    if cfg == 'C':
        assert code == 1 and 'unconditional (no class labels)' in err and 'D and E, which grow on unlabelled' in err
    elif cfg == 'F':
        assert code == 1 and 'needs class labels' in err and 'train --cfg E' in err and 'pokemon-like' in err
    else:
        assert code == 0, err
        run = next(tmp_path.iterdir())
        G, meta = load_generator(run)
        assert G.c_dim == 0 and meta['config']['c_dim'] == 0 and G.img_resolution == 32
        imgs = G(torch.randn(2, G.z_dim), None)
        assert imgs.shape == (2, 3, 32, 32) and torch.isfinite(imgs).all()
        if cfg in 'DE':
            state, meta = load_checkpoint(latest_checkpoint(run))
            extra = state['rung']['extra']
            assert meta['stage'] == 1 and 'class_table' in extra and extra['class_table'] is None   # grown, no table
            assert not any('class_embedding' in k for k in state['rung']['D'])                            # D: no projection
    if cfg in 'CF': assert not any(tmp_path.iterdir())                                  # stopped before a run folder


def test_unlabelled_rung_d_resumes(unlabelled, tmp_path, capsys):
    "A checkpoint without a class table resumes (the table is None, not a tensor)."
    assert train_main(['--cfg', 'D', '--data', str(unlabelled), *TINY, '--outdir', str(tmp_path),
                       '--set', 'stage_kimg=0.004']) == 0
    run = next(tmp_path.iterdir())
    assert train_main(['--resume', str(run), '--kimg', '0.012', '--quiet']) == 0, capsys.readouterr().err
    assert load_checkpoint(latest_checkpoint(run))[1]['kimg'] >= 0.012
