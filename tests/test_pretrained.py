"""Official StyleGAN3 / StyleGAN-XL release pickles: the restricted reader, the loader against the original
code's outputs (tests/fixtures/official-pickles), `sgxl convert` and `--network` end to end."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from sgxl.pretrained import Opaque, PersistentRecord, PickleFormatError, UnsafePickleError, read_release

FIX = Path(__file__).parent / 'fixtures' / 'official-pickles'
PICKLES = ['sg3t-32.pkl', 'xl-stem16-c10.pkl', 'xl-superres32-c10.pkl']


class _System:
    "Unpickling this calls os.system(cmd) with the stock pickle module."
    def __init__(self, cmd): self.cmd = cmd
    def __reduce__(self): return (os.system, (self.cmd,))


class _Eval:
    def __init__(self, src): self.src = src
    def __reduce__(self): return (eval, (self.src,))


@pytest.mark.parametrize('name', PICKLES)
def test_read_release_records(name):
    data = read_release(FIX / name)
    assert set(data) == {'G', 'D', 'G_ema', 'training_set_kwargs'}
    g = data['G_ema']
    assert isinstance(g, PersistentRecord) and g.class_name in ('Generator', 'SuperresGenerator')
    assert isinstance(data['D'], Opaque) and type(data['training_set_kwargs']) is dict
    w = g.modules['mapping'].modules['fc0'].parameters['weight']
    assert isinstance(w, torch.Tensor) and w.dtype == torch.float32 and w.abs().sum() > 0


@pytest.mark.parametrize('payload', [lambda t: _System(f'touch {t}'), lambda t: _Eval(f"open({str(t)!r}, 'w')")],
                         ids=['os.system', 'eval'])
def test_code_running_payload_is_refused(tmp_path, payload):
    target = tmp_path / 'pwned'
    for wrap in (lambda p: p, lambda p: {'G_ema': p}, lambda p: {'G_ema': {'nested': [p]}}):
        evil = tmp_path / 'evil.pkl'
        evil.write_bytes(pickle.dumps(wrap(payload(target))))
        with pytest.raises(UnsafePickleError, match='refused'):
            read_release(evil)
        assert not target.exists()
    # the stock unpickler would have run it: the payload is real
    pickle.loads(pickle.dumps(_System(f'touch {target}')))
    assert target.exists()


def test_unknown_classes_become_inert_placeholders(tmp_path):
    # a pickle naming a class of a package sgxl does not have (as a real D needs timm's): read, not imported
    data = b"(dp0\nVG_ema\np1\nctimm.nope.mod\nBlock\np2\n(I3\ntp3\nRp4\ns."     # protocol 0, by hand
    (tmp_path / 'x.pkl').write_bytes(data)
    g = read_release(tmp_path / 'x.pkl')['G_ema']
    assert isinstance(g, Opaque) and g.qualname == 'timm.nope.mod.Block' and g.args == (3,)
    assert 'timm.nope' not in __import__('sys').modules


def test_truncated_and_foreign_files_are_clear_errors(tmp_path):
    data = (FIX / 'xl-stem16-c10.pkl').read_bytes()
    (tmp_path / 'cut.pkl').write_bytes(data[:len(data) // 2])
    with pytest.raises(PickleFormatError, match='truncated'):
        read_release(tmp_path / 'cut.pkl')
    (tmp_path / 'img.pkl').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\x00' * 100)
    (tmp_path / 'junk.pkl').write_bytes(b'\xff' * 100)
    for bad in ('img.pkl', 'junk.pkl'):
        with pytest.raises(PickleFormatError, match='not a (readable network|release) pickle'):
            read_release(tmp_path / bad)
    (tmp_path / 'list.pkl').write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(PickleFormatError, match='not a release pickle'):
        read_release(tmp_path / 'list.pkl')
    with pytest.raises(FileNotFoundError, match='no file'):
        read_release(tmp_path / 'missing.pkl')
