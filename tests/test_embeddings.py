"""sgxl.embeddings: the pretrained class embeddings of rung C -- the per-class means, their cache, the G and D
wiring, a tiny rung-C step, bad input and the CLI."""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import sgxl.embeddings as emb
from sgxl.core import LITE0, make_config
from sgxl.data import FileDataset, ShapesDataset
from sgxl.embeddings import (apply_class_embeddings, class_embeddings, load_class_embeddings, rung_c_models,
                             table_filename)
from sgxl.features import FeatureNetwork
from sgxl.projected import ProjectedDiscriminator, hinge_d_loss, hinge_g_loss
from sgxl.stylegan3 import Generator


# ----------------------------------------------------------------------------------------------- helpers
class StubNet(nn.Module):
    """Features we can compute by hand. The last map (N, 5, 3, 4) holds, per 2x2 pixel block of a 6x8 image,
    [r, g, b, r*g, b^2] times `scale`: nonlinear, with unequal channel/height/width sizes, so averaging over the
    wrong axes changes the numbers or the shape."""
    def __init__(self, scale=1.0, name='stub'):
        super().__init__()
        self.register_buffer('scale', torch.tensor(float(scale)))
        self.name, self.resolution, self.weights_source, self.calls = name, 8, 'stub', 0

    def forward(self, x):                                   # (N, 3, 6, 8) in [-1, 1]
        self.calls += 1
        b = F.avg_pool2d(x, 2)                              # (N, 3, 3, 4)
        f = torch.cat([b, b[:, :1] * b[:, 1:2], b[:, 2:] ** 2], 1) * self.scale   # (N, 5, 3, 4)
        return [x, x, x, f]


def stub_pooled(images: np.ndarray, scale=1.0) -> np.ndarray:
    "The stub's pooled features computed independently, in numpy, image by image: (N, 5)."
    out = []
    for img in images:
        x = img.astype(np.float64) / 127.5 - 1                      # (3, 6, 8)
        b = x.reshape(3, 3, 2, 4, 2).mean(axis=(2, 4))               # (3, 3, 4): 2x2 block means
        f = np.concatenate([b, b[:1] * b[1:2], b[2:] ** 2]) * scale  # (5, 3, 4)
        out.append(f.mean(axis=(1, 2)))                              # pooled over space: (5,)
    return np.array(out)


def stub_expected(images: np.ndarray, labels: np.ndarray, num_classes: int, scale=1.0) -> np.ndarray:
    "The per-class means, class by class: (num_classes, 5)."
    pooled = stub_pooled(images, scale)
    return np.stack([pooled[labels == k].mean(axis=0) for k in range(num_classes)])


class ArrayDataset(torch.utils.data.Dataset):
    "Images (N, 3, 6, 8) uint8 with labels; `with_labels=False` hides .labels (a generic dataset)."
    def __init__(self, images, labels, num_classes, name='arrays', with_labels=True):
        self.images, self._labels, self.num_classes, self.name = torch.as_tensor(images), np.asarray(labels), num_classes, name
        if with_labels: self.labels = self._labels

    def __len__(self): return len(self.images)
    def __getitem__(self, i): return self.images[i], torch.tensor(int(self._labels[i]))


def arrays(n=11, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, 6, 8), dtype=np.uint8)
    labels = np.array([0, 2, 2, 1, 0, 2, 2, 2, 1, 0, 2][:n])      # unbalanced and interleaved: 3, 2, 6 images
    return images, labels


@pytest.fixture(scope='module')
def lite0_64():
    return FeatureNetwork(LITE0, 'pretrained', 64)


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    "Every test gets its own user cache folder (nothing is written to ~/.cache)."
    monkeypatch.setenv('SGXL_CACHE_DIR', str(tmp_path / 'user-cache'))
    return tmp_path / 'user-cache'


def labelled_folder(root: Path, n=6, classes=2, size=16) -> Path:
    root.mkdir(parents=True)
    labels = []
    for i in range(n):
        Image.new('RGB', (size, size), (40 * (i % classes), 10 * i, 200)).save(root / f'img{i}.png')
        labels.append([f'img{i}.png', i % classes])
    (root / 'dataset.json').write_text(json.dumps({'labels': labels}))
    return root


# ----------------------------------------------------------------------------------------------- the means
def test_table_is_the_per_class_mean_of_known_features():
    images, labels = arrays()
    ds = ArrayDataset(images, labels, 3)
    table = class_embeddings(ds, StubNet(), batch=4, progress=False, cache=False)   # batches split classes: 4+4+3
    expected = stub_expected(images, labels, 3)
    assert table.shape == (3, 5) and table.dtype == torch.float32
    np.testing.assert_allclose(table.numpy(), expected, rtol=1e-5, atol=1e-6)
    # the data tells the wrong answers apart: a mean of per-batch class means, or one mean for all classes
    pooled = stub_pooled(images)
    batch_means = [pooled[s:s + 4][labels[s:s + 4] == 2].mean(axis=0) for s in (0, 4, 8)]   # class 2 is in each
    assert not np.allclose(expected[2], np.mean(batch_means, axis=0), atol=1e-3)
    assert not np.allclose(expected, pooled.mean(axis=0, keepdims=True), atol=1e-3)


def test_table_does_not_depend_on_batch_size():
    images, labels = arrays()
    ds = ArrayDataset(images, labels, 3)
    tables = [class_embeddings(ds, StubNet(), batch=b, progress=False, cache=False) for b in (1, 3, 11, 64)]
    assert all(torch.allclose(t, tables[0], atol=1e-6) for t in tables)


def test_table_matches_lite0_one_image_at_a_time(lite0_64):
    ds = ShapesDataset(32, num_images=23)                              # classes of 3 and 2 images
    table = class_embeddings(ds, lite0_64, batch=7, progress=False, cache=False)
    x = torch.stack([ds[i][0] for i in range(len(ds))]).float() / 127.5 - 1
    with torch.no_grad():
        per_image = [lite0_64(x[i:i + 1])[3][0].mean((1, 2)) for i in range(len(ds))]   # (320,) each
    y = ds.labels.tolist()
    expected = torch.stack([torch.stack([v for v, c in zip(per_image, y) if c == k]).mean(0) for k in range(10)])
    assert table.shape == (10, 320)
    # batched and one-at-a-time convolutions round differently (~1e-5 at magnitudes ~3); a wrong mean is off by >0.1
    assert torch.allclose(table, expected, rtol=1e-4, atol=1e-4), (table - expected).abs().max()
    assert lite0_64.channels[3] == 320 and lite0_64.strides[3] == 32      # the lowest-resolution block


# ----------------------------------------------------------------------------------------------- the cache
def test_second_call_loads_from_cache(lite0_64, user_cache):
    ds = ShapesDataset(32, num_images=20)
    calls = []
    hook = lite0_64.register_forward_hook(lambda *_: calls.append(1))
    try:
        first, meta = class_embeddings(ds, lite0_64, batch=10, progress=False, return_meta=True)
        assert len(calls) == 2 and not meta['cached']
        path = Path(meta['path'])
        assert path.parent == user_cache / 'embeddings' and path.is_file()   # a built-in: the user cache
        calls.clear()
        second, meta2 = class_embeddings(ds, lite0_64, progress=False, return_meta=True)
        assert calls == [] and meta2['cached'] and meta2['path'] == str(path) and torch.equal(first, second)
    finally:
        hook.remove()
    # the same weights loaded again (a new object) find the same table; the file holds the table and its key
    fresh = FeatureNetwork(LITE0, 'pretrained', 64)
    third, meta3 = class_embeddings(ShapesDataset(32, num_images=20), fresh, progress=False, return_meta=True)
    assert meta3['cached'] and torch.equal(third, first)
    table, stored = load_class_embeddings(path)
    assert torch.equal(table, first) and stored['key']['dataset'] == ds.name and stored['counts'] == [2] * 10
    assert stored['weights_source'].startswith('package:') and stored['key']['resolution'] == 64


def test_cache_invalidated_when_dataset_or_network_changes(tmp_path):
    images, labels = arrays()
    net = StubNet()
    base = class_embeddings(ArrayDataset(images, labels, 3), net, progress=False, cache=tmp_path)
    assert net.calls == 1
    class_embeddings(ArrayDataset(images, labels, 3), net, progress=False, cache=tmp_path)
    assert net.calls == 1                                                   # same data, same net: cached
    # another dataset (another name)
    other = class_embeddings(ArrayDataset(images[::-1].copy(), labels, 3, name='arrays-2'), net, progress=False,
                             cache=tmp_path)
    assert net.calls == 2 and not torch.allclose(other, base)
    # the same name with x-flips or another length is another dataset too
    ds = ArrayDataset(images, labels, 3); ds.xflip = True
    class_embeddings(ds, net, progress=False, cache=tmp_path)
    assert net.calls == 3
    # other weights (same network name): recomputed, and the table follows the weights
    net2 = StubNet(scale=2.0)
    scaled = class_embeddings(ArrayDataset(images, labels, 3), net2, progress=False, cache=tmp_path)
    assert net2.calls == 1 and torch.allclose(scaled, 2 * base)
    # another input size
    net3 = StubNet(); net3.resolution = 16
    class_embeddings(ArrayDataset(images, labels, 3), net3, progress=False, cache=tmp_path)
    assert net3.calls == 1
    assert len(list(tmp_path.glob('class_embeddings-*.safetensors'))) == 5


def test_file_dataset_cache_lives_beside_it_and_follows_its_files(tmp_path, monkeypatch, caplog):
    folder = labelled_folder(tmp_path / 'mydata')
    ds = FileDataset(folder, resolution=8)
    net = StubNet()
    net.forward = lambda x, _f=net.forward: _f(F.interpolate(x, size=(6, 8)))   # the stub wants 6x8
    _, meta = class_embeddings(ds, net, progress=False, return_meta=True)
    assert Path(meta['path']).parent == tmp_path / 'mydata.sgxl-cache' and net.calls == 1
    assert FileDataset(folder, resolution=8).name == ds.name                # the cache is not inside the dataset
    class_embeddings(FileDataset(folder, resolution=8), net, progress=False)
    assert net.calls == 1
    # change the data: one more image -> a new name -> recomputed
    Image.new('RGB', (16, 16), (1, 2, 3)).save(folder / 'img6.png')
    labels = json.loads((folder / 'dataset.json').read_text())['labels'] + [['img6.png', 1]]
    (folder / 'dataset.json').write_text(json.dumps({'labels': labels}))
    changed = FileDataset(folder, resolution=8)
    _, meta2 = class_embeddings(changed, net, progress=False, return_meta=True)
    assert changed.name != ds.name and net.calls == 2 and meta2['counts'] == [3, 4]
    # a read-only place beside the data: the table goes to the user cache, with a warning
    real_write = emb.atomic_write
    def refuse_beside(path, data):
        if 'mydata.sgxl-cache' in str(path): raise PermissionError(13, 'Permission denied', str(path))
        return real_write(path, data)
    monkeypatch.setattr(emb, 'atomic_write', refuse_beside)
    net_b = StubNet(scale=3.0)
    net_b.forward = lambda x, _f=net_b.forward: _f(F.interpolate(x, size=(6, 8)))
    with caplog.at_level(logging.WARNING, logger='sgxl.embeddings'):
        _, meta3 = class_embeddings(changed, net_b, progress=False, return_meta=True)
    assert Path(meta3['path']).parent == Path(os.environ['SGXL_CACHE_DIR']) / 'embeddings'
    assert 'cannot write the class-embedding cache' in caplog.text
    class_embeddings(changed, net_b, progress=False)                        # found in the fallback folder
    assert net_b.calls == 1


def test_damaged_cache_file_is_recomputed(tmp_path, caplog):
    images, labels = arrays()
    ds, net = ArrayDataset(images, labels, 3), StubNet()
    good, meta = class_embeddings(ds, net, progress=False, cache=tmp_path, return_meta=True)
    Path(meta['path']).write_bytes(b'not a safetensors file')
    with caplog.at_level(logging.WARNING, logger='sgxl.embeddings'):
        again = class_embeddings(ds, net, progress=False, cache=tmp_path)
    assert net.calls == 2 and torch.equal(again, good) and 'unreadable class-embedding cache' in caplog.text
    assert torch.equal(load_class_embeddings(meta['path'])[0], good)      # rewritten


def test_random_weights_only_by_name_and_recorded(caplog, tmp_path, lite0_64):
    ds = ShapesDataset(32, num_images=10)
    rnd = FeatureNetwork(LITE0, 'random', 64)
    with caplog.at_level(logging.WARNING, logger='sgxl.embeddings'):
        t_rnd, m_rnd = class_embeddings(ds, rnd, progress=False, cache=tmp_path, return_meta=True)
    assert m_rnd['weights_source'] == 'random' and 'RANDOM' in caplog.text
    assert load_class_embeddings(m_rnd['path'])[1]['weights_source'] == 'random'
    t_pre, m_pre = class_embeddings(ds, lite0_64, progress=False, cache=tmp_path, return_meta=True)
    assert m_pre['weights_source'] != 'random' and m_pre['path'] != m_rnd['path'] and not torch.allclose(t_pre, t_rnd)


# ----------------------------------------------------------------------------------------------- bad input
def test_unconditional_dataset_is_a_clear_error(tmp_path):
    folder = tmp_path / 'u'; folder.mkdir()
    for i in range(2): Image.new('RGB', (8, 8), (i, 0, 0)).save(folder / f'{i}.png')
    with pytest.raises(ValueError, match='unconditional.*need a labelled dataset'):
        class_embeddings(FileDataset(folder), StubNet(), progress=False, cache=False)
    with pytest.raises(ValueError, match='unconditional'):
        class_embeddings(ArrayDataset(*arrays(), num_classes=0), StubNet(), progress=False, cache=False)


def test_empty_class_is_named_before_any_image_is_read():
    net = StubNet()
    with pytest.raises(ValueError, match=r"classes 5 \('plus'\), 6 \('flower'\).* have no images \(5 of 10"):
        class_embeddings(ShapesDataset(32, num_images=5), net, progress=False, cache=False)
    assert net.calls == 0
    # a dataset without .labels: found after the pass, still named
    images, labels = arrays()
    with pytest.raises(ValueError, match=r'class 3 has no images'):
        class_embeddings(ArrayDataset(images, labels, 4, with_labels=False), StubNet(), progress=False, cache=False)


def test_other_bad_inputs():
    images, labels = arrays()
    bad = labels.copy(); bad[3] = 7
    with pytest.raises(ValueError, match=r'labels must lie in \[0, 3\)'):
        class_embeddings(ArrayDataset(images, bad, 3, with_labels=False), StubNet(), progress=False, cache=False)
    nameless = ArrayDataset(images, labels, 3); del nameless.name
    with pytest.raises(ValueError, match='no .name.*cache=False'):
        class_embeddings(nameless, StubNet(), progress=False)
    assert class_embeddings(nameless, StubNet(), progress=False, cache=False).shape == (3, 5)
    with pytest.raises(ValueError, match='batch=0'):
        class_embeddings(ArrayDataset(images, labels, 3), StubNet(), batch=0, progress=False, cache=False)
    with pytest.raises(ValueError, match='give resolution='):
        class_embeddings('shapes', StubNet(), progress=False)


# ----------------------------------------------------------------------------------------------- G and D
def test_rung_c_models_train_both_tables_and_keep_lite0_frozen(tmp_path):
    torch.manual_seed(0)
    ds = ShapesDataset(32, num_images=20)
    cfg = make_config('C', 'tiny')
    G, D, table, meta = rung_c_models(cfg, ds, device='cpu', cache=tmp_path)
    E_G, E_D = G.mapping.embed.table, D.class_embedding.table
    assert table.shape == (10, 320) and G.mapping.c_dim == D.c_dim == 10 and meta['weights_source'] != 'random'
    assert torch.equal(E_G, table) and torch.equal(E_D, table) and E_G is not E_D   # same start, own copies
    assert G.mapping.embed_proj.out_features == cfg.embed_proj_dim
    # G's w follows the table: equal rows, equal w
    z = torch.randn(3, G.z_dim)
    with torch.no_grad():
        E_G[1] = E_G[0]
        assert torch.equal(G.mapping(z, torch.tensor([0, 0, 0])), G.mapping(z, torch.tensor([1, 1, 1])))
        E_G[1] = table[1]
    # one rung-C step: D on reals and fakes, then G through D, hinge losses
    lite0 = D.feature_nets[0]
    before = {k: v.clone() for k, v in lite0.state_dict().items()}
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.g_lr, betas=cfg.betas)
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.d_lr, betas=cfg.betas)   # all of D: frozen parts must hold
    reals = torch.stack([ds[i][0] for i in range(4)]).float() / 127.5 - 1
    c = torch.as_tensor(ds.labels[:4])
    z = torch.randn(4, G.z_dim)
    loss_D = hinge_d_loss(D(reals, c), D(G(z, c).detach(), c))
    opt_D.zero_grad(set_to_none=True); loss_D.backward(); opt_D.step()
    D.requires_grad_(False)
    loss_G = hinge_g_loss(D(G(z, c), c))
    opt_G.zero_grad(set_to_none=True); loss_G.backward(); opt_G.step()
    D.requires_grad_(True)
    assert torch.isfinite(loss_D) and torch.isfinite(loss_G)
    assert E_G.grad is not None and E_G.grad.abs().sum() > 0 and E_D.grad is not None and E_D.grad.abs().sum() > 0
    assert not torch.equal(E_G, table) and not torch.equal(E_D, table)
    assert all(p.grad is None and not p.requires_grad for p in lite0.parameters())
    assert all(torch.equal(v, before[k]) for k, v in lite0.state_dict().items())
    # the table came from D's own lite0 at the config's feature resolution
    assert meta['key']['resolution'] == cfg.feature_resolution == lite0.resolution


def test_apply_class_embeddings_checks_shapes(lite0_64):
    cfg = make_config('C', 'tiny', c_dim=3)
    G = Generator.from_config(cfg)
    table = torch.randn(3, 320)
    D64 = ProjectedDiscriminator([lite0_64], c_dim=3, ccm_channels=cfg.ccm_channels)       # default 64-dim embedding
    with pytest.raises(ValueError, match=r"D's heads project \[64\]-dim.*table's are 320-dim"):
        apply_class_embeddings(G, D64, table)
    with pytest.raises(ValueError, match='G has c_dim=3 but the table has 4 classes'):
        apply_class_embeddings(G, None, torch.randn(4, 320))
    with pytest.raises(ValueError, match='takes 320-dim class embeddings but the table.s are 16-dim.*embed_dim=16'):
        apply_class_embeddings(G, None, torch.randn(3, 16))
    with pytest.raises(ValueError, match='finite'):
        apply_class_embeddings(G, None, torch.full((3, 320), float('nan')))
    D = ProjectedDiscriminator([lite0_64], c_dim=3, ccm_channels=cfg.ccm_channels, embed_dim=320)
    apply_class_embeddings(G, D, table)
    assert torch.equal(D.class_embedding.table, table) and torch.equal(G.mapping.embed.table, table)


def test_rung_c_models_bad_config():
    ds = ShapesDataset(32, num_images=10)
    with pytest.raises(ValueError, match="pretrained_embeddings=False.*make_config\\('C'"):
        rung_c_models(make_config('B', 'tiny'), ds)
    with pytest.raises(ValueError, match='c_dim=5 but dataset .* has 10 classes'):
        rung_c_models(make_config('C', 'tiny', c_dim=5), ds)
    with pytest.raises(ValueError, match='16px but the config.s resolution is 32'):
        rung_c_models(make_config('C', 'tiny'), ShapesDataset(16, num_images=10))


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_computes_then_loads(tmp_path, capsys):
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'PYTHONWARNINGS': 'ignore'}
    args = ['embeddings', 'shapes:num_images=20', '--resolution', '32', '--feature-resolution', '64',
            '--cache-dir', str(tmp_path), '--quiet', '--device', 'cpu']
    first = subprocess.run([sys.executable, '-m', 'sgxl', *args], capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith('computed shapes-32-seed0-n20: (10, 320)')
    path = Path(first.stdout.strip().splitlines()[-1])
    assert path.parent == tmp_path and path.is_file()
    from sgxl.cli import main                                # the same command in-process (saves a start-up)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith('loaded shapes-32-seed0-n20') and out.strip().endswith(str(path))
    assert main(['embeddings', 'shapes']) == 1
    err = capsys.readouterr().err
    assert 'sgxl embeddings: error:' in err and 'give resolution=' in err
