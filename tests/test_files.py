"""One home for the files sgxl keeps: the cache folder (`core.cache_home`) and safetensors + JSON pairs
(`core.save_tensors` / `core.load_tensors`), including files written before they had one home."""
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import sgxl
from sgxl import domain, embeddings, guidance, metrics, ops_build, pretrained
from sgxl.core import TensorFileError, cache_home, file_hash, load_tensors, save_tensors
from sgxl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

LEGACY = Path(__file__).parent / 'fixtures' / 'legacy'   # written by the code of main at 28b6223 (before issue 19)

# Every user of sgxl's cache folder, as (sub-folder, function returning where it caches).
_DS = SimpleNamespace(name='shapes-16', root=None, num_classes=3, resolution=16)  # a built-in: no folder of its own
CACHE_USERS = {
    'embeddings': lambda: embeddings.cache_folders(_DS)[-1],
    'domain': lambda: domain.domain_cache_folders(_DS)[-1],
    'guidance': lambda: guidance.probe_cache_dir(_DS),
    'metrics': lambda: metrics.cache_folder(),
    'weights': lambda: metrics.weights_dirs()[-1],
    'ops': lambda: ops_build.cache_dir(),
    'networks': lambda: pretrained.cache_dir(),
}


@pytest.fixture
def no_cache_env(monkeypatch, tmp_path):
    for var in ('SGXL_CACHE_DIR', 'XDG_CACHE_HOME', 'SGXL_OPS_CACHE'): monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    return monkeypatch


def test_cache_home_order_of_precedence(no_cache_env, tmp_path):
    assert cache_home() == tmp_path / 'home' / '.cache' / 'sgxl'
    no_cache_env.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert cache_home('a', 'b') == tmp_path / 'xdg' / 'sgxl' / 'a' / 'b'
    no_cache_env.setenv('SGXL_CACHE_DIR', str(tmp_path / 'mine'))
    assert cache_home('a') == tmp_path / 'mine' / 'a'                      # sgxl's own override wins


@pytest.mark.parametrize('sub', sorted(CACHE_USERS))
def test_every_cache_user_honours_xdg_and_the_sgxl_override(no_cache_env, tmp_path, sub):
    where = CACHE_USERS[sub]
    assert where() == tmp_path / 'home' / '.cache' / 'sgxl' / sub
    no_cache_env.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert where() == tmp_path / 'xdg' / 'sgxl' / sub
    no_cache_env.setenv('SGXL_CACHE_DIR', str(tmp_path / 'mine'))
    assert where() == tmp_path / 'mine' / sub


def test_narrower_overrides_still_win(no_cache_env, tmp_path):
    no_cache_env.setenv('SGXL_CACHE_DIR', str(tmp_path / 'mine'))
    no_cache_env.setenv('SGXL_OPS_CACHE', str(tmp_path / 'ops'))
    no_cache_env.setenv('SGXL_WEIGHTS_DIR', str(tmp_path / 'w'))
    assert ops_build.cache_dir() == tmp_path / 'ops'
    assert tmp_path / 'w' in metrics.weights_dirs() and metrics.cache_folder(tmp_path / 'arg') == tmp_path / 'arg' / 'metrics'


def test_only_core_reads_the_cache_variables():
    "One home: no other module looks up $SGXL_CACHE_DIR or $XDG_CACHE_HOME, or builds a ~/.cache path, itself."
    pattern = re.compile(r"""environ[^\n]{0,8}['"](SGXL_CACHE_DIR|XDG_CACHE_HOME)['"]|Path\(['"]~/\.cache|home\(\)\s*/\s*['"]\.cache""")
    offenders = [f'{p.name}:{i}' for p in sorted(Path(sgxl.__file__).parent.glob('*.py')) if p.name != 'core.py'
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
    assert pattern.search(Path(sgxl.core.__file__).read_text())            # the pattern does find the one home


# --- safetensors + JSON sidecar + hash ------------------------------------------------------------------------

def test_save_and_load_tensors_round_trip_and_detect_corruption(tmp_path):
    t = {'a': torch.randn(3, 4), 'i': torch.arange(5)}
    j = save_tensors(tmp_path / 'x', t, {'kind': 'demo'})
    back, rec = load_tensors(tmp_path / 'x.json')
    assert all(torch.equal(back[k], t[k]) for k in t) and rec['kind'] == 'demo'
    assert rec['sha256'] == file_hash(tmp_path / 'x.safetensors') and rec['tensors'] == 'x.safetensors'
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith('.tmp')]
    raw = bytearray((tmp_path / 'x.safetensors').read_bytes()); raw[-1] ^= 1
    (tmp_path / 'x.safetensors').write_bytes(bytes(raw))
    with pytest.raises(TensorFileError, match=r'corrupted \(its SHA256 does not match x\.json\)'): load_tensors(j)
    with pytest.raises(TensorFileError, match='no tensor file at'): load_tensors(tmp_path / 'missing')
    with pytest.raises(TensorFileError, match=r'is not a thing \(format None'):
        load_tensors(j, what='thing', expect={'format': 'f1'})


def _copy_legacy(tmp_path, stem):
    for ext in ('.json', '.safetensors'): shutil.copy(LEGACY / f'{stem}{ext}', tmp_path / f'{stem}{ext}')
    return tmp_path


def _flip_last_byte(path):
    raw = bytearray(path.read_bytes()); raw[-1] ^= 1; path.write_bytes(bytes(raw))


def test_domain_classifier_written_with_sha1_still_loads_and_is_checked(tmp_path):
    assert 'sha1' in json.loads((LEGACY / 'domain-legacy.json').read_text())          # the old sidecar
    expected = json.loads((LEGACY / 'expected.json').read_text())
    key = {'dataset': 'legacy', 'items': 6, 'num_classes': 3, 'width': 2}
    net, meta = domain.load_domain_net(LEGACY, 'domain-legacy', key)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(): assert torch.allclose(net(x)[1], torch.tensor(expected['domain_logits']), atol=1e-6)
    assert meta['accuracy'] == 0.5
    _flip_last_byte(_copy_legacy(tmp_path, 'domain-legacy') / 'domain-legacy.safetensors')
    assert domain.load_domain_net(tmp_path, 'domain-legacy', key) is None            # a bad cache is retrained
    # and a new one is written with sha256
    j = domain.save_domain_net(tmp_path, 'domain-new', net, {'key': key})
    assert 'sha256' in json.loads(j.read_text()) and domain.load_domain_net(tmp_path, 'domain-new', key) is not None


def test_guidance_probe_written_with_sha1_still_loads_and_is_checked(tmp_path):
    assert 'tensors_sha1' in json.loads((LEGACY / 'probe-legacy.json').read_text())
    expected = json.loads((LEGACY / 'expected.json').read_text())
    settings = {'net': 'legacy', 'seed': 0}
    head, confusion, meta = guidance.load_probe(LEGACY, 'probe-legacy', settings)
    f = torch.randn(2, 5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(): assert torch.allclose(head(f), torch.tensor(expected['probe_logits']), atol=1e-6)
    assert torch.equal(confusion, torch.eye(3, dtype=torch.int64) * 2)
    assert guidance.load_probe(LEGACY, 'probe-legacy', {**settings, 'seed': 1}) is None   # other settings
    _flip_last_byte(_copy_legacy(tmp_path, 'probe-legacy') / 'probe-legacy.safetensors')
    assert guidance.load_probe(tmp_path, 'probe-legacy', settings) is None


def test_checkpoint_written_before_the_helper_still_loads(tmp_path):
    state, meta = load_checkpoint(LEGACY / 'ckpt-000000003.json')
    assert meta == {'kimg': 0.5} and state['step'] == 3
    assert torch.equal(state['w'], torch.arange(6.).reshape(2, 3)) and state['nested']['t'][1] == 'a'
    j = save_checkpoint(tmp_path / 'ckpt-000000003', state, meta)              # today's files: the same record
    old, new = (json.loads(p.read_text()) for p in (LEGACY / 'ckpt-000000003.json', j))
    assert sorted(old) == sorted(new) and old['sha256'] == new['sha256']        # byte-identical tensor file
    _flip_last_byte(_copy_legacy(tmp_path, 'ckpt-000000003') / 'ckpt-000000003.safetensors')
    with pytest.raises(CheckpointError, match='corrupted.*earlier checkpoint'): load_checkpoint(tmp_path / 'ckpt-000000003')
    (tmp_path / 'x.json').write_text('{"format": "other"}')
    with pytest.raises(CheckpointError, match='not a checkpoint'): load_checkpoint(tmp_path / 'x.json')
