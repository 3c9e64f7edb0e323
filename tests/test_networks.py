"""Sharing networks: `sgxl export` of a real run, `--network` on the exported folder and on hf://USER/REPO through a
hub cache the test writes (offline), the Python API (the README's example, run as written), bad input."""
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import sgxl
from sgxl import explore as ex
from sgxl import networks as nw
from sgxl.core import make_config
from sgxl.checkpoint import build_generator, load_generator, save_checkpoint
from sgxl.training import train_main

from conftest import ROOT

TINY = ['--preset', 'tiny', '--data', 'shapes:num_images=40', '--batch', '4', '--quiet']


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A real rung-A run (one step), with a metric measured at its snapshot."
    out = tmp_path_factory.mktemp('runs')
    assert train_main(['--cfg', 'A', *TINY, '--kimg', '0.004', '--snap', '0.004', '--metrics', 'eqt4_int',
                       '--outdir', str(out)]) == 0
    return next(out.iterdir())


@pytest.fixture(scope='module')
def exported(run, tmp_path_factory):
    out = tmp_path_factory.mktemp('export') / 'net'
    assert nw.export_main([str(run), str(out), '--repo', 'someone/sgxl-shapes']) == 0
    return out


def hub_cache(tmp_path, exported, repo='someone/sgxl-shapes', commit='0123456789abcdef0123456789abcdef01234567'):
    "The layout huggingface_hub keeps for a downloaded repo: models--USER--REPO/{refs/main, snapshots/COMMIT/...}."
    root = tmp_path / 'hub' / f"models--{repo.replace('/', '--')}"
    (root / 'refs').mkdir(parents=True)
    (root / 'refs' / 'main').write_text(commit)
    shutil.copytree(exported, root / 'snapshots' / commit)
    return tmp_path / 'hub'


def test_export_writes_g_ema_config_and_card(run, exported):
    assert sorted(p.name for p in exported.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    info = json.loads((exported / 'config.json').read_text())
    G_ema, meta = load_generator(run)
    assert info['format'] == nw.NETWORK_FORMAT and info['c_dim'] == 10 and info['resolution'] == 32
    assert info['metrics'] == meta['metrics'] and 'eqt4_int' in info['metrics'] and info['kimg'] == meta['kimg']
    G = sgxl.load_network(exported)
    assert all(torch.equal(a, b) for a, b in zip(G_ema.state_dict().values(), G.state_dict().values()))
    card = (exported / 'README.md').read_text()
    assert card.startswith('---\nlibrary_name: sgxl\nlicense: apache-2.0')
    assert re.search(r'\| eqt4_int \| [-\d.e+]+ \| 4 \|', card), card                    # value and its image count
    assert 'shapes-32-seed0-n40' in card and '10 classes' in card and "load_network('hf://someone/sgxl-shapes')" in card


def test_generate_network_on_the_export_and_on_the_hub(run, exported, tmp_path, monkeypatch, capsys):
    "sgxl generate --network: the run, its export and hf://USER/REPO (offline, from a cache) give the same pixels."
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_CACHE', str(hub_cache(tmp_path, exported)))
    grids = {}
    for name, network in [('run', run), ('export', exported), ('hub', 'hf://someone/sgxl-shapes')]:
        out = tmp_path / name
        assert ex.generate_main(['--network', str(network), '--seeds', '0-3', '--class', '2', '--outdir', str(out)]) == 0
        grids[name] = np.asarray(Image.open(out / 'grid.png'))
    assert np.array_equal(grids['run'], grids['export']) and np.array_equal(grids['run'], grids['hub'])
    assert json.loads((tmp_path / 'hub' / 'generate.json').read_text())['network']['path'] == 'hf://someone/sgxl-shapes'


def test_hub_network_missing_from_the_cache_is_a_clear_error_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'empty'))
    with pytest.raises(FileNotFoundError, match=r'not in the Hugging Face cache .*HF_HUB_OFFLINE.*hf download someone/x'):
        nw.read_network('hf://someone/x')
    with pytest.raises(ValueError, match='write hf://USER/REPO'):
        nw.read_network('hf://no-repo-name')
    assert ex.generate_main(['--network', 'hf://someone/x', '--outdir', str(tmp_path / 'o')]) == 1
    assert 'not in the Hugging Face cache' in capsys.readouterr().err


def test_bad_exports(run, exported, tmp_path, capsys):
    assert nw.export_main([str(run), str(exported)]) == 1                                # not empty: refused
    assert 'exists and is not empty' in capsys.readouterr().err
    assert nw.export_main([str(run), str(tmp_path / 'x'), '--which', 'best']) == 1      # no FID measured: no best
    assert 'no best checkpoint' in capsys.readouterr().err and not (tmp_path / 'x').exists()
    broken = tmp_path / 'broken'
    shutil.copytree(exported, broken)
    info = json.loads((broken / 'config.json').read_text())
    info['config']['channel_max'] = 16                                                 # weights no longer fit
    (broken / 'config.json').write_text(json.dumps(info))
    with pytest.raises(RuntimeError, match='does not fit the architecture'):
        sgxl.load_network(broken)
    damaged = tmp_path / 'damaged'
    shutil.copytree(exported, damaged)
    weights = damaged / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:1000])                                  # a truncated download
    assert ex.generate_main(['--network', str(damaged), '--outdir', str(tmp_path / 'o')]) == 1
    assert 'the file is damaged; export or download it again' in capsys.readouterr().err
    (tmp_path / 'release.pkl').write_bytes(b'not read')                                 # sgxl.pretrained reads .pkl
    with pytest.raises(ValueError, match='not a (readable network|release) pickle'):
        sgxl.load_network(tmp_path / 'release.pkl')


def readme_api_example() -> str:
    text = (ROOT / 'README.md').read_text()
    section = text.split('## Python API', 1)[1]
    return re.search(r'```python\n(.*?)```', section, re.S).group(1)


def test_readme_python_api_example_runs_as_written(tmp_path, monkeypatch):
    "The README's five lines, exactly, in a folder holding the demo's run folder (an untrained network of the demo)."
    from sgxl.training import config_from_args, train_parser
    code = readme_api_example()
    assert len(code.strip().splitlines()) == 5
    cfg = config_from_args(train_parser().parse_args([])).replace(c_dim=10)            # `sgxl train`'s config
    torch.manual_seed(0)
    G0 = build_generator(cfg, 10)
    run = tmp_path / 'runs' / f'00000-{cfg.cfg}-tiny-shapes-32'                         # the demo's run folder name
    assert f"'runs/{run.name}'" in code
    run.mkdir(parents=True)
    save_checkpoint(run / 'ckpt-000000001', {'rung': {'G': G0.state_dict(), 'G_ema': G0.state_dict()}},
                    {'config': cfg.to_dict(), 'step': 1, 'stage': 0, 'kimg': 0.008, 'dataset': 'shapes'})
    monkeypatch.chdir(tmp_path)
    exec(compile(code, 'README.md', 'exec'), {})
    G, _ = load_generator(run)
    want, _ = ex.generate(G, list(range(8)), classes=3, psi=0.7)
    assert np.array_equal(np.asarray(Image.open(tmp_path / 'grid.png')), sgxl.image_grid(want, nrow=4))


def test_metrics_on_a_hub_network(run, exported, tmp_path, monkeypatch, capsys):
    "sgxl metrics --network hf://USER/REPO: the exported config names the data; results land in USER--REPO.metrics.json."
    from sgxl.evaluate import metrics_main
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_CACHE', str(hub_cache(tmp_path, exported)))
    monkeypatch.chdir(tmp_path)
    assert metrics_main(['--network', 'hf://someone/sgxl-shapes', '--metrics', 'rfid8', '--device', 'cpu']) == 0
    saved = json.loads((tmp_path / 'someone--sgxl-shapes.metrics.json').read_text())
    assert saved['data'] == 'shapes:num_images=40' and np.isfinite(saved['metrics']['rfid8'])


def test_explorer_takes_a_network_name(exported):
    "The widget explorer, like --network, takes an exported folder (or run, checkpoint, hf://) as well as a G."
    import ipywidgets
    assert isinstance(ex.explorer(str(exported)), ipywidgets.VBox)


def test_a_run_that_grew_past_its_best_exports_and_loads_its_latest(tmp_path):
    "A progressive run's best by FID at 16 px is not what `export` (auto) or a run-folder path gives once it is at 32 px."
    import torch
    from sgxl.checkpoint import CheckpointManager, resolve_checkpoint
    cm = CheckpointManager(tmp_path, keep=3)
    cm.save(1, {'w': torch.zeros(2)}, {'fid': 30.0, 'resolution': 16})
    cm.save(2, {'w': torch.ones(2)}, {'resolution': 32})                  # the next stage, no FID measured yet
    assert nw.export_checkpoint(tmp_path).name == resolve_checkpoint(tmp_path).name == 'ckpt-000000002.json'
    assert nw.export_checkpoint(tmp_path, 'best').name == 'best.json'     # asked for by name: still there
    cm.save(3, {'w': torch.ones(2)}, {'fid': 45.0, 'resolution': 32})     # the first FID at 32 px is the best now
    assert nw.export_checkpoint(tmp_path).name == resolve_checkpoint(tmp_path).name == 'best.json'
    assert json.loads((tmp_path / 'best.json').read_text())['meta']['step'] == 3
