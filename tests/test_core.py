"""Plain tests of sgxl.core that need files: PNG grids on disk, config JSON, field documentation."""
import inspect
from dataclasses import fields

import numpy as np
import pytest
import torch
from PIL import Image

from sgxl.core import Config, make_config, save_image_grid, RUNGS, PRESETS


def test_save_image_grid_roundtrip(tmp_path):
    imgs = torch.rand(6, 3, 8, 8) * 2 - 1
    path = save_image_grid(imgs, tmp_path / 'grid.png', nrow=3)
    arr = np.asarray(Image.open(path))
    assert arr.shape == (2 * 9 + 1, 3 * 9 + 1, 3)
    # image 4 sits in row 1, column 1, quantised the StyleGAN way
    expect = ((imgs[4] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    assert (arr[10:18, 10:18] == expect).all()
    assert [p.name for p in tmp_path.iterdir()] == ['grid.png']  # no temp file left


def test_every_config_field_is_documented():
    src = inspect.getsource(Config).splitlines()
    for f in fields(Config):
        line = next((l for l in src if l.strip().startswith(f'{f.name}:')), None)
        assert line is not None, f'field {f.name} not found in the source'
        assert '#' in line and len(line.split('#', 1)[1].strip()) > 10, f'field {f.name} has no comment'


@pytest.mark.parametrize('cfg', RUNGS)
@pytest.mark.parametrize('preset', PRESETS)
def test_every_rung_and_preset_roundtrips(cfg, preset, tmp_path):
    c = make_config(cfg, preset)
    c.to_json(tmp_path / 'c.json')
    assert Config.from_json(tmp_path / 'c.json') == c
