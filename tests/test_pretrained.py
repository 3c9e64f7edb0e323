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


# --- the loader against the original code's outputs --------------------------------------------------------------

from sgxl.pretrained import (generator_from_release, load_pickle, release_parameter_count, release_schedule,
                             synthesis_layers)
from sgxl.stylegan3 import count_parameters

OUTPUTS = {**np.load(FIX / 'sg3t-outputs.npz'), **{f'xl_{k}': v for k, v in np.load(FIX / 'xl-outputs.npz').items()}}
CASES = [('sg3t-32.pkl', 'sg3t', ''), ('xl-stem16-c10.pkl', 'stem', 'xl_'), ('xl-superres32-c10.pkl', 'superres', 'xl_')]


@pytest.mark.parametrize('file,key,pre', CASES, ids=[c[1] for c in CASES])
def test_fixture_outputs_are_reproduced(file, key, pre):
    G = load_pickle(FIX / file, impl='ref')                     # the reference ops: the kernels' oracle
    assert not G.training and not any(p.requires_grad for p in G.parameters())
    z, c = torch.from_numpy(OUTPUTS[pre + 'z']), torch.from_numpy(OUTPUTS[pre + 'c'])
    for psi in (1.0, 0.6):
        ref = torch.from_numpy(OUTPUTS[f'{pre}{key}_psi{psi}'])
        with torch.no_grad():
            img = G(z, c if G.c_dim else None, truncation_psi=psi)
        assert img.shape == ref.shape
        assert float((img - ref).abs().max()) <= 1e-4 * float(ref.abs().max())
    if G.c_dim:                                                  # class indices mean the same as one-hot rows
        with torch.no_grad():
            assert torch.allclose(G(z, c.argmax(1), truncation_psi=0.6), G(z, c, truncation_psi=0.6))


@pytest.mark.parametrize('file', PICKLES)
def test_parameter_counts_equal_the_files(file):
    g = read_release(FIX / file)['G_ema']
    G, spec = generator_from_release(g)
    assert count_parameters(G) == release_parameter_count(g) > 0
    if G.c_dim:                                                  # the release's whole 1000x320 table is kept
        assert tuple(G.mapping.embed.table.shape) == (1000, 320) and spec['embed_activation'] == 'lrelu'


def test_grown_release_network_has_sgxls_head_schedule():
    # the superres fixture: stem 16x16 with 6 layers (2 critical), one head of 3 layers to 32x32
    from sgxl.core import make_config
    from sgxl.growing import stage_schedule
    cfg = make_config('D', 'tiny', resolution=32, stem_layers=6, head_layers=3, channel_base=2048, channel_max=64)
    fields = lambda s: [(p.index, p.name, p.size, p.channels, p.sampling_rate, p.critical,
                         round(p.cutoff, 9), round(p.half_width, 9)) for p in s]
    for file, stage in (('xl-stem16-c10.pkl', 0), ('xl-superres32-c10.pkl', 1)):
        assert fields(release_schedule(read_release(FIX / file)['G_ema'])) == fields(stage_schedule(cfg, stage))


def test_stylegan3_r_and_other_networks_are_clear_errors():
    g = read_release(FIX / 'sg3t-32.pkl')['G_ema']
    synthesis_layers(g)[1][1].state['use_radial_filters'] = True
    with pytest.raises(PickleFormatError, match='StyleGAN3-R'):
        generator_from_release(g)
    d = read_release(FIX / 'sg3t-32.pkl')
    with pytest.raises(PickleFormatError, match='sgxl reads StyleGAN3'):
        generator_from_release(d['D'])


# --- sgxl convert and --network ---------------------------------------------------------------------------------

import json
import re
import subprocess
import sys

from sgxl.cli import main as sgxl_main
from sgxl.pretrained import load_network_file
from sgxl.explore import load_network

ROOT = Path(__file__).resolve().parents[1]


def test_convert_then_generate_end_to_end(tmp_path, capsys):
    assert sgxl_main(['convert', str(FIX / 'xl-stem16-c10.pkl'), str(tmp_path / 'net')]) == 0
    assert 'Generator 16x16, 10 classes' in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / 'net').iterdir()) == ['network.json', 'network.safetensors']
    meta = json.loads((tmp_path / 'net' / 'network.json').read_text())['meta']
    assert meta['kind'] == 'sgxl-network' and meta['source']['file'] == 'xl-stem16-c10.pkl'
    # the converted network is the pickle's network, bit for bit
    G1, G2 = load_pickle(FIX / 'xl-stem16-c10.pkl', impl='ref'), load_network_file(tmp_path / 'net')[0].set_ops_impl('ref')
    z = torch.from_numpy(OUTPUTS['xl_z'])
    with torch.no_grad():
        assert torch.equal(G1(z, torch.arange(4), truncation_psi=0.6), G2(z, torch.arange(4), truncation_psi=0.6))
    # refuses to overwrite without --force
    assert sgxl_main(['convert', str(FIX / 'xl-stem16-c10.pkl'), str(tmp_path / 'net')]) == 1
    assert '--force' in capsys.readouterr().err
    # every --network user: a converted folder, its network.json, a .pkl directly (cached)
    assert sgxl_main(['generate', '--network', str(tmp_path / 'net'), '--seeds', '0-1', '--class', '7',
                      '--outdir', str(tmp_path / 'out')]) == 0
    written = sorted(p.name for p in (tmp_path / 'out').iterdir())
    assert 'generate.json' in written and sum(n.endswith('.png') for n in written) >= 2
    for network in (tmp_path / 'net' / 'network.json', FIX / 'sg3t-32.pkl'):
        G, _ = load_network(network)
        assert G.img_resolution in (16, 32) and not G.training


def test_pkl_network_is_converted_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('SGXL_CACHE_DIR', str(tmp_path / 'cache'))
    G, meta = load_network_file(FIX / 'sg3t-32.pkl')
    cached = list((tmp_path / 'cache' / 'networks').glob('*/network.json'))
    assert len(cached) == 1 and meta['source']['sha256'].startswith(cached[0].parent.name)
    stamp = cached[0].stat().st_mtime_ns
    load_network_file(FIX / 'sg3t-32.pkl')
    assert cached[0].stat().st_mtime_ns == stamp                 # read, not converted again


def test_bad_network_paths_are_clear_errors(tmp_path, capsys):
    assert sgxl_main(['convert', str(tmp_path / 'missing.pkl'), str(tmp_path / 'o')]) == 1
    assert 'no file' in capsys.readouterr().err
    (tmp_path / 'cut.pkl').write_bytes((FIX / 'sg3t-32.pkl').read_bytes()[:5000])
    assert sgxl_main(['generate', '--network', str(tmp_path / 'cut.pkl'), '--seeds', '0', '--outdir',
                      str(tmp_path / 'o')]) == 1
    assert 'truncated' in capsys.readouterr().err


def test_readme_pretrained_commands_run_as_written(tmp_path):
    text = (ROOT / 'README.md').read_text()
    block = re.search(r'## Pretrained networks\n.*?```sh\n(.*?)```', text, re.S)
    assert block, 'README.md lost its "Pretrained networks" commands'
    (tmp_path / 'tests').symlink_to(ROOT / 'tests')               # the commands name the fixtures from the repo root
    env = {**__import__('os').environ, 'PATH': f'{Path(sys.executable).parent}:' + __import__('os').environ['PATH']}
    for line in block.group(1).strip().splitlines():
        cmd = line.split('  #')[0].strip()
        proc = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f'{cmd}\n{proc.stderr[-2000:]}'
    assert (tmp_path / 'nets' / 'xl32' / 'network.json').exists() and list((tmp_path / 'out').rglob('*.png'))


def test_metrics_and_invert_take_converted_networks(tmp_path, capsys):
    assert sgxl_main(['convert', str(FIX / 'xl-stem16-c10.pkl'), str(tmp_path / 'net')]) == 0
    assert sgxl_main(['metrics', '--network', str(tmp_path / 'net'), '--metrics', 'eqt50k_int', '--num', '8',
                      '--batch', '4', '--device', 'cpu']) == 0
    assert 'eqt' in capsys.readouterr().out.lower()
    G = load_pickle(FIX / 'xl-stem16-c10.pkl', impl='ref')
    with torch.no_grad():
        target = G(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(1)), torch.tensor([2]))
    from sgxl.explore import save_image
    save_image(target[0], tmp_path / 'target.png')
    assert sgxl_main(['invert', '--network', str(tmp_path / 'net'), '--target', str(tmp_path / 'target.png'),
                      '--class', '2', '--steps', '3', '--pti-steps', '2', '--scale', '1', '--device', 'cpu',
                      '--outdir', str(tmp_path / 'inv')]) == 0
    assert (tmp_path / 'inv' / 'compare.png').exists()


# --- conditional StyleGAN3-T -------------------------------------------------------------------------------------
# No conditional StyleGAN3 file made by the original code is among the fixtures. These tests build one in the
# release format from the unconditional fixture (a label layer added as the StyleGAN3 release lays it out) and check
# the loaded generator (1) against StyleGAN3's mapping formula written out below in plain torch from the raw
# tensors, (2) with zero label columns, against the original code's stored outputs of the unconditional fixture.

import copy
import math
import types
from collections import OrderedDict
from unittest import mock

import torch.nn.functional as F

from sgxl.core import to_uint8
from sgxl.explore import z_from_seeds


def _persistent_obj(meta):
    raise AssertionError('only named in the pickles written here, never called')


_persistent_obj.__module__, _persistent_obj.__name__ = 'torch_utils.persistence', '_reconstruct_persistent_obj'
_persistent_obj.__qualname__ = '_reconstruct_persistent_obj'


class _ReleaseWriter(pickle.Pickler):
    "Pickles each PersistentRecord as the release files do: a call of _reconstruct_persistent_obj(meta)."
    def reducer_override(self, obj):
        if not isinstance(obj, PersistentRecord): return NotImplemented
        meta = dict(type='class', version=obj.version, module_src='# source code removed', class_name=obj.class_name,
                    state=obj.state)
        return _persistent_obj, (meta,)


def write_release(data: dict, path: Path) -> Path:
    "`data` (records, tensors, a torch.nn D) as a release pickle; torch_utils exists only while writing."
    mod, pkg = types.ModuleType('torch_utils.persistence'), types.ModuleType('torch_utils')
    mod._reconstruct_persistent_obj, pkg.persistence = _persistent_obj, mod
    with mock.patch.dict(sys.modules, {'torch_utils': pkg, 'torch_utils.persistence': mod}), open(path, 'wb') as f:
        _ReleaseWriter(f, protocol=4).dump(data)
    return path


def conditional_sg3t(path: Path, c_dim: int = 10, seed: int = 0, zero_columns: bool = False,
                     embed_inputs: int | None = None) -> tuple[Path, dict]:
    """sg3t-32.pkl made conditional as StyleGAN3's MappingNetwork is: `mapping.embed`, a FullyConnectedLayer
    (c_dim -> w_dim, linear, lr multiplier 1, gains 1/sqrt(c_dim) and 1), and fc0 reading [norm z, norm embed]
    (z_dim + w_dim inputs). fc0's z columns are rescaled by sqrt((z_dim + w_dim) / z_dim), since its weight gain
    0.01/sqrt(fan-in) falls by as much: with zero label columns fc0 computes what the fixture's fc0 did.
    Returns (the pickle written at `path`, the raw tensors)."""
    data = read_release(FIX / 'sg3t-32.pkl')
    g = data['G_ema']
    m = g.modules['mapping']
    fc0, fc1 = m.modules['fc0'], m.modules['fc1']
    z_dim, w_dim = int(m.state['z_dim']), int(m.state['w_dim'])
    gen = torch.Generator().manual_seed(seed)
    label_cols = torch.zeros(w_dim, w_dim) if zero_columns else torch.randn(w_dim, w_dim, generator=gen) * 100
    w0 = torch.cat([fc0.parameters['weight'].detach() * math.sqrt((z_dim + w_dim) / z_dim), label_cols], 1)
    n_in = c_dim if embed_inputs is None else embed_inputs
    embed_w, embed_b = torch.randn(w_dim, n_in, generator=gen), torch.randn(w_dim, generator=gen) * 0.2
    embed = PersistentRecord('FullyConnectedLayer', fc0.version, copy.deepcopy(fc0.state))
    embed.state['_parameters'] = OrderedDict(weight=torch.nn.Parameter(embed_w), bias=torch.nn.Parameter(embed_b))
    embed.state.update(in_features=n_in, out_features=w_dim, activation='linear', weight_gain=np.float64(1 / math.sqrt(n_in)),
                       bias_gain=1, _init_args=(n_in, w_dim), _init_kwargs={})
    fc0.state['_parameters']['weight'] = torch.nn.Parameter(w0)
    fc0.state.update(in_features=z_dim + w_dim, weight_gain=np.float64(0.01 / math.sqrt(z_dim + w_dim)),
                     _init_args=(z_dim + w_dim, w_dim))
    m.state.pop('embed')                                         # None when unconditional, else a sub-module
    m.state['_modules'] = OrderedDict(embed=embed, **m.state['_modules'])
    for rec in (g, m): rec.state['c_dim'] = rec.state['_init_kwargs']['c_dim'] = c_dim
    data.update(G=g, D=torch.nn.Identity(), training_set_kwargs=dict(data['training_set_kwargs'], use_labels=True))
    raw = dict(embed_w=embed_w, embed_b=embed_b, w_avg=m.buffers['w_avg'].detach(),
               fcs=[(w0, fc0.parameters['bias'].detach()), (fc1.parameters['weight'].detach(), fc1.parameters['bias'].detach())])
    return write_release(data, path), raw


def mapping_formula(raw: dict, z: torch.Tensor, c: torch.Tensor, psi: float) -> torch.Tensor:
    "StyleGAN3's conditional mapping, in float64 from the raw tensors: w' (N, w_dim) = w_avg + psi (w - w_avg)."
    norm = lambda v: v / (v.square().mean(1, keepdim=True) + 1e-8).sqrt()      # 2nd-moment normalisation
    onehot = F.one_hot(c, raw['embed_w'].shape[1]).double()                     # (N, c_dim)
    y = onehot @ (raw['embed_w'].double() / math.sqrt(onehot.shape[1])).T + raw['embed_b'].double()   # (N, w_dim)
    x = torch.cat([norm(z.double()), norm(y)], 1)                               # (N, z_dim + w_dim)
    for weight, bias in raw['fcs']:                                             # lr multiplier 0.01, lrelu gain sqrt 2
        x = F.leaky_relu(x @ (weight.double() * 0.01 / math.sqrt(weight.shape[1])).T + 0.01 * bias.double(), 0.2) * math.sqrt(2)
    w_avg = raw['w_avg'].double()
    return w_avg + psi * (x - w_avg)


def test_conditional_stylegan3_follows_the_mapping_formula(tmp_path):
    pkl, raw = conditional_sg3t(tmp_path / 'cond.pkl')
    g = read_release(pkl)['G_ema']
    G, spec = generator_from_release(g)
    G.set_ops_impl('ref')
    assert spec['c_dim'] == 10 and spec['embed_kind'] == 'onehot' and count_parameters(G) == release_parameter_count(g)
    z = torch.randn(6, 64, generator=torch.Generator().manual_seed(5))
    for classes in ([0, 3, 7, 9, 9, 1], [2, 2, 5, 8, 4, 6]):
        c = torch.tensor(classes)
        for psi in (1.0, 0.6, 0.0):                                  # 0.6, 0: toward the file's one global w_avg
            want = mapping_formula(raw, z, c, psi).float()           # (N, w_dim)
            with torch.no_grad():
                ws = G.mapping(z, c, truncation_psi=psi)             # (N, num_ws, w_dim)
                img = G(z, c, truncation_psi=psi)
                ref = G.synthesis(want[:, None].repeat(1, G.num_ws, 1))
            assert float((ws - want[:, None]).abs().max()) <= 1e-5 * float(want.abs().max())
            assert float((img - ref).abs().max()) <= 1e-4 * float(ref.abs().max())
    with torch.no_grad():                                            # the label matters, and one-hot rows = indices
        assert float((G(z, torch.zeros(6, dtype=torch.long)) - G(z, torch.full((6,), 4))).abs().mean()) > 1e-2
        assert torch.equal(G(z, F.one_hot(c, 10).float()), G(z, c))


def test_conditional_stylegan3_with_zero_label_columns_reproduces_the_original_outputs(tmp_path):
    # fc0 ignores the label: the network is the unconditional fixture, whose outputs the original code computed
    G = load_pickle(conditional_sg3t(tmp_path / 'cond0.pkl', zero_columns=True)[0], impl='ref')
    z = torch.from_numpy(OUTPUTS['z'])
    for psi in (1.0, 0.6):
        ref = torch.from_numpy(OUTPUTS[f'sg3t_psi{psi}'])
        for c in (torch.tensor([0, 1, 2, 3]), torch.tensor([9, 9, 5, 0])):
            with torch.no_grad(): img = G(z, c, truncation_psi=psi)
            assert float((img - ref).abs().max()) <= 1e-4 * float(ref.abs().max())


def test_conditional_stylegan3_wrong_class_counts_are_clear_errors(tmp_path, capsys):
    pkl, _ = conditional_sg3t(tmp_path / 'cond.pkl', c_dim=10)
    G = load_pickle(pkl, impl='ref')
    z = torch.randn(2, 64)
    with pytest.raises(ValueError, match=r'0\.\.9'):
        G(z, torch.tensor([3, 10]))
    with pytest.raises(ValueError, match=r'one-hot rows \(N, 10\)'):
        G(z, torch.zeros(2, 12))
    assert sgxl_main(['generate', '--network', str(pkl), '--seeds', '0', '--class', '10', '--outdir', str(tmp_path / 'o')]) == 1
    assert 'class 10 is out of range: this network has 10 classes' in capsys.readouterr().err
    bad, _ = conditional_sg3t(tmp_path / 'bad.pkl', c_dim=10, embed_inputs=12)  # a label layer for 12 classes
    with pytest.raises(PickleFormatError, match=r'takes 12 classes .* c_dim=10'):
        load_pickle(bad)


def test_conditional_stylegan3_convert_and_generate_end_to_end(tmp_path, capsys):
    pkl, raw = conditional_sg3t(tmp_path / 'cond.pkl', seed=3)
    assert sgxl_main(['convert', str(pkl), str(tmp_path / 'net')]) == 0
    assert 'Generator 32x32, 10 classes' in capsys.readouterr().out
    G1, G2 = load_pickle(pkl, impl='ref'), load_network_file(tmp_path / 'net')[0].set_ops_impl('ref')
    z = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(G1(z, torch.tensor([1, 5, 8]), truncation_psi=0.6), G2(z, torch.tensor([1, 5, 8]), truncation_psi=0.6))
    # --mean-samples 0: truncation toward the file's w_avg, as the original code truncates
    for network in (pkl, tmp_path / 'net'):
        out = tmp_path / f'out-{Path(network).name}'
        assert sgxl_main(['generate', '--network', str(network), '--seeds', '0-1', '--class', '3', '--trunc', '0.6',
                          '--mean-samples', '0', '--outdir', str(out)]) == 0
        zs, _ = z_from_seeds(G1, [0, 1])
        with torch.no_grad():
            want = G1.synthesis(mapping_formula(raw, zs, torch.tensor([3, 3]), 0.6).float()[:, None].repeat(1, G1.num_ws, 1))
        from PIL import Image
        for i, seed in enumerate((0, 1)):
            png = torch.from_numpy(np.asarray(Image.open(out / f'seed{seed:04d}-class03.png'))).permute(2, 0, 1).int()
            assert int((png - to_uint8(want[i]).int()).abs().max()) <= 1     # one level of rounding
