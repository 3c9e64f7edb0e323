"""sgxl.editing and `sgxl edit`: StyleMC text directions with CLIP (random weights, asked for by name, on the smallest
open_clip architecture), the style-space hooks, strength 0, the identity term, direction files, the offline error
for missing CLIP weights, and the command end to end on a run, on an inversion folder and as the README writes it."""
import json
import shlex
import time

import numpy as np
import pytest
import torch
from PIL import Image

import sgxl.checkpoint
from sgxl import editing as ed
from sgxl import explore as ex
from sgxl.core import make_config
from sgxl.features import MissingWeightsError
from sgxl.stylegan3 import Generator

PROMPT = 'a red stripe'


@pytest.fixture(scope='module')
def G():
    torch.manual_seed(0)
    return Generator.from_config(make_config('C', 'tiny', c_dim=10)).eval().requires_grad_(False)


@pytest.fixture(scope='module')
def clip():
    return ed.load_clip(ed.CLIP_SMALLEST, 'random', image_size=64)


@pytest.fixture(scope='module')
def direction(G, clip):
    return ed.find_direction(G, clip, PROMPT, classes=3, num_samples=12, batch=4, steps=8, seed=0)


def held_out(G, n=4, seed=123):
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    return G.mapping(z, torch.full((n,), 3))


def test_direction_raises_clip_similarity_on_new_samples(G, clip, direction):
    m = direction.meta
    assert m['similarity_after'] > m['similarity_before']                     # on the samples searched
    ws = held_out(G)
    with torch.no_grad():
        before = clip.similarity(G.synthesis(ws), PROMPT).mean()
        after = clip.similarity(ed.render(G, ws, direction), PROMPT).mean()
    assert after > before                                                     # and on seeds it never saw
    assert m['clip']['random'] and m['clip']['model'] == ed.CLIP_SMALLEST     # random weights are on the record
    assert direction.layers == list(ed.style_channels(G)) and m['space'] == 'style'


def test_random_clip_is_asked_for_by_name_and_reproducible(clip):
    again = ed.load_clip(ed.CLIP_SMALLEST, 'random', image_size=64)
    assert torch.equal(again.encode_texts([PROMPT]), clip.encode_texts([PROMPT]))   # seeded: the same every time
    assert clip.info['random'] and clip.info['source'] == 'random (seed 0)' and clip.info['image_size'] == 64


def test_strength_zero_returns_the_input_exactly(G, direction):
    ws = held_out(G, 3)
    sweep = ed.edit_images(G, ws, direction, [0.0, 1.0])                      # (3 * 2, C, H, W), row-major per latent
    assert torch.equal(sweep[0::2], ex.synthesize(G, ws))
    assert not torch.allclose(sweep[1::2], sweep[0::2])                       # strength 1 does edit
    wdir = ed.TextDirection('w', {'w': torch.randn(G.w_dim)})
    assert torch.equal(ed.edit_images(G, ws, wdir, [0.0]), ex.synthesize(G, ws))


def test_style_offsets_hook_is_removed_and_checks_layers(G):
    ws = held_out(G, 1)
    ch = G.synthesis.layers[0].in_spec.channels                               # every tiny layer has this width
    with torch.no_grad():
        base = G.synthesis(ws)
        with ed.style_offsets(G, {'L1': torch.ones(ch)}): moved = G.synthesis(ws)
        assert torch.equal(G.synthesis(ws), base) and not torch.allclose(moved, base)
    with pytest.raises(ValueError, match=r"no style layer\(s\) \['L99'\]"):
        with ed.style_offsets(G, {'L99': torch.ones(ch)}): pass
    bad = ed.TextDirection('style', {'L0': torch.zeros(5)})
    with pytest.raises(ValueError, match=f'L0 \\(5 channels\\), the network has {ch} channels'):
        bad.check_fits(G)


def test_identity_term_bounds_the_pixel_change(G, clip):
    kw = dict(classes=3, num_samples=8, batch=4, steps=5, seed=0)
    free = ed.find_direction(G, clip, PROMPT, identity_weight=0.0, **kw)
    tight = ed.find_direction(G, clip, PROMPT, identity_weight=20.0, **kw)
    capped = ed.find_direction(G, clip, PROMPT, identity_weight=0.0, max_change=0.03, **kw)
    # the identity term holds the change down; max_change caps it where asked (measured on the samples)
    assert tight.meta['rms_change_found'] < 0.5 * free.meta['rms_change_found']
    assert capped.meta['rms_change_found'] == pytest.approx(free.meta['rms_change_found'])
    assert capped.meta['rms_change'] <= 0.03 < free.meta['rms_change'] and capped.meta['scale_applied'] < 1
    # the same cap holds on the images the direction edits: RMS change at strength 1 of the searched samples
    ws = ed.sample_latents(G, 8, 3, seed=0)
    x0, x1 = ed.edit_images(G, ws, ed.TextDirection('style', capped.tensors), [0.0, 1.0]).view(8, 2, 3, 32, 32).unbind(1)
    assert (x1 - x0).square().mean().sqrt().item() <= 0.03 + 1e-4


def test_w_space_and_neutral_prompt(G, clip):
    d = ed.find_direction(G, clip, PROMPT, 'a square', classes=3, space='w', num_samples=8, batch=4, steps=6)
    assert set(d.tensors) == {'w'} and d.tensors['w'].shape == (G.w_dim,) and d.meta['neutral'] == 'a square'
    assert d.tensors['w'].abs().sum() > 0
    with pytest.raises(ValueError, match='layers apply to the style space only'):
        ed.find_direction(G, clip, PROMPT, space='w', layers=['L0'], num_samples=2, steps=1)
    with pytest.raises(ValueError, match=r"unknown style layer\(s\) \['L42'\]"):
        ed.find_direction(G, clip, PROMPT, layers=['L42'], num_samples=2, steps=1)


def test_direction_file_round_trip(direction, tmp_path):
    path = ed.save_direction(direction, tmp_path / 'd')
    assert path.name == 'd.json' and (tmp_path / 'd.safetensors').is_file()
    back = ed.load_direction(tmp_path / 'd.safetensors')
    assert back.space == 'style' and back.layers == direction.layers
    assert all(torch.equal(back.tensors[k], direction.tensors[k]) for k in direction.tensors)
    meta = json.loads(path.read_text())['meta']
    assert meta['prompt'] == PROMPT and meta['clip']['weights'] == 'random' and meta['layers'] == direction.layers
    with pytest.raises(FileNotFoundError, match='no direction at'):
        ed.load_direction(tmp_path / 'missing.json')
    (tmp_path / 'junk.json').write_text('{"format": "other"}')
    with pytest.raises(ValueError, match='not an sgxl text direction'):
        ed.load_direction(tmp_path / 'junk.json')


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    "No CLIP weights anywhere: an empty Hugging Face cache and HF_HUB_OFFLINE set."
    import huggingface_hub.constants as hf
    cache = tmp_path / 'hf-cache'
    cache.mkdir()
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(hf, 'HF_HUB_CACHE', str(cache))
    return cache


def test_missing_clip_weights_offline_is_one_clear_error(offline_empty_cache, monkeypatch, sleeps):
    import huggingface_hub.constants as hf
    t0 = time.time()
    with pytest.raises(MissingWeightsError) as e:
        ed.load_clip()
    msg = str(e.value)
    assert sleeps == [] and time.time() - t0 < 30         # no back-off; measured 0.5..1.6 s at a load of 10 on 2 cores
    assert 'timm/vit_base_patch32_clip_224.openai' in msg and 'open_clip_model.safetensors' in msg
    assert '--clip-weights /path/to/open_clip_model.safetensors' in msg and '--clip-weights random' in msg
    monkeypatch.delenv('HF_HUB_OFFLINE')
    monkeypatch.setattr(hf, 'HF_HUB_OFFLINE', False)
    monkeypatch.setenv('SGXL_OFFLINE', '1')                                   # sgxl's own switch stops it too
    with pytest.raises(MissingWeightsError, match='HF_HUB_OFFLINE / SGXL_OFFLINE is set'):
        ed.load_clip()
    with pytest.raises(FileNotFoundError, match="no CLIP weight file at '/nowhere/w.safetensors'"):
        ed.load_clip(weights='/nowhere/w.safetensors')
    with pytest.raises(ValueError, match="neither a file nor a pretrained tag"):
        ed.load_clip(weights='not-a-tag')
    with pytest.raises(ValueError, match='goes with random weights|only goes with random'):
        ed.load_clip(image_size=64)


def test_clip_weights_from_the_hub_cache(offline_empty_cache):
    "A file in the Hugging Face cache is found offline and loaded from there (this one is not CLIP: the error names it)."
    snap = offline_empty_cache / 'models--timm--vit_base_patch32_clip_224.openai' / 'snapshots' / 'abc123'
    snap.mkdir(parents=True)
    (snap / 'open_clip_model.safetensors').write_bytes(b'not weights')
    refs = offline_empty_cache / 'models--timm--vit_base_patch32_clip_224.openai' / 'refs'
    refs.mkdir()
    (refs / 'main').write_text('abc123')
    assert ed.cached_clip_weights(ed.CLIP_MODEL, ed.CLIP_WEIGHTS) == snap / 'open_clip_model.safetensors'
    with pytest.raises(ValueError, match=r'cannot load .*open_clip_model.safetensors as the weights of CLIP ViT-B-32-quickgelu'):
        ed.load_clip()
    with pytest.raises(ValueError, match='use --clip-model ViT-B-32-quickgelu'):
        ed.load_clip('ViT-B-32', 'openai')                                    # OpenAI trained with QuickGELU


def test_clip_weights_from_a_named_file(tmp_path):
    "A weight file the user names is loaded (here one written from a random ViT-S-32-alt): same embeddings."
    import open_clip
    from safetensors.torch import save_file
    torch.manual_seed(1)
    net = open_clip.create_model(ed.CLIP_SMALLEST)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / 'w.safetensors'))
    clip = ed.load_clip(ed.CLIP_SMALLEST, str(tmp_path / 'w.safetensors'))
    assert clip.info['source'].startswith('file:') and not clip.info['random']
    x = torch.rand(1, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        want = torch.nn.functional.normalize(net.eval().encode_image((((x + 1) / 2) - clip.mean) / clip.std), dim=-1)
    assert torch.allclose(clip.encode_images(x), want, atol=1e-5)


# --- the command -------------------------------------------------------------------------------------------------

def write_checkpoint(folder, cfg, seed=0):
    "A checkpoint as the training loop writes it (the rung's G and G_ema, the config in the metadata)."
    torch.manual_seed(seed)
    G = sgxl.checkpoint.build_generator(cfg, cfg.c_dim).eval().requires_grad_(False)
    sd = G.state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    path = sgxl.checkpoint.save_checkpoint(folder / 'ckpt-000000001', {'rung': {'G': sd, 'G_ema': sd}},
                                         {'config': cfg.to_dict(), 'step': 1, 'kimg': 0.008, 'dataset': cfg.data})
    return path, G


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp('run'), make_config('C', 'tiny', c_dim=10, data='shapes:num_images=300'))


FAST = ['--samples', '8', '--batch', '4', '--steps', '4', '--clip-model', ed.CLIP_SMALLEST, '--clip-weights', 'random',
        '--clip-size', '64']


def sgxl_cli(capsys, *args):
    from sgxl.cli import main
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_edit_cli_end_to_end_and_reuse(run, tmp_path, capsys):
    path, G = run
    out = tmp_path / 'out'
    rc, stdout, err = sgxl_cli(capsys, 'edit', '--network', path.parent, '--prompt', PROMPT, '--class', '3',
                               '--seeds', '0-2', '--strengths', '-2,-1,0,1,2', '--scale', '2', '--outdir', out, *FAST)
    assert rc == 0, err
    report = json.loads((out / 'edit.json').read_text())
    assert sorted(report['files']) == ['direction.json', 'direction.safetensors', 'edit.json', 'edit.png']
    assert report['strengths'] == [-2, -1, 0, 1, 2] and report['clip']['random']
    assert report['similarity']['1'] > report['similarity']['0']              # the edit moves toward the prompt
    assert Image.open(out / 'edit.png').size == (5 * 64 + 6, 3 * 64 + 4)     # a row per seed, a column per strength
    assert 'CLIP similarity by strength' in stdout
    d = ed.load_direction(out / 'direction.json')
    assert d.meta['prompt'] == PROMPT and d.meta['classes'] == [3] and d.meta['network'] == str(path.parent)
    # --direction reuses it: no CLIP needed, the same sweep
    again = tmp_path / 'again'
    rc, _, err = sgxl_cli(capsys, 'edit', '--network', path, '--direction', out / 'direction.json', '--class', '3',
                          '--seeds', '0-2', '--strengths', '-2,-1,0,1,2', '--scale', '2', '--outdir', again)
    assert rc == 0, err
    assert (Image.open(out / 'edit.png').tobytes() == Image.open(again / 'edit.png').tobytes())
    assert json.loads((again / 'edit.json').read_text())['files'] == ['edit.png', 'edit.json']
    # an exported network (`sgxl export`) edits the same
    from sgxl.networks import export_network
    exported = export_network(path.parent, tmp_path / 'exported')
    rc, _, err = sgxl_cli(capsys, 'edit', '--network', exported, '--direction', out / 'direction.json', '--class', '3',
                          '--seeds', '0-2', '--strengths', '-2,-1,0,1,2', '--scale', '2', '--outdir', tmp_path / 'exp')
    assert rc == 0, err
    assert Image.open(out / 'edit.png').tobytes() == Image.open(tmp_path / 'exp' / 'edit.png').tobytes()


def test_edit_cli_on_an_inversion_folder(run, tmp_path, capsys):
    from sgxl.data import load
    from sgxl.inversion import invert_main
    path, G = run
    img, label = load('shapes', resolution=32, num_images=20)[4]
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp_path / 'target.png')
    inv_dir = tmp_path / 'inv'
    capsys.readouterr()
    assert invert_main([str(a) for a in ('--network', path, '--target', tmp_path / 'target.png', '--class', int(label),
                                         '--steps', '3', '--pti-steps', '3', '--scale', '1', '--outdir', inv_dir)]) == 0
    assert (inv_dir / 'pti-generator.json').is_file() and (inv_dir / 'pti-generator.safetensors').is_file()
    tuned, ws, c = ed.load_inversion(inv_dir)
    assert c == int(label) and ws.shape == (1, G.num_ws, G.w_dim)
    pti = torch.from_numpy(np.array(Image.open(inv_dir / 'pti.png'))).permute(2, 0, 1)
    from sgxl.core import to_uint8
    assert torch.equal(to_uint8(ex.synthesize(tuned, ws))[0], pti)            # the tuned generator, as PTI left it
    assert not torch.equal(tuned.synthesis.layers[0].weight, G.synthesis.layers[0].weight)
    out = tmp_path / 'edit'
    rc, stdout, err = sgxl_cli(capsys, 'edit', '--network', path, '--prompt', PROMPT, '--inversion', inv_dir,
                               '--strengths', '-1,0,1', '--scale', '1', '--outdir', out, *FAST)
    assert rc == 0, err
    report = json.loads((out / 'edit.json').read_text())
    assert report['rows'] == 'inversion' and Image.open(out / 'edit.png').size == (3 * 32 + 4, 32 + 2)
    assert ed.load_direction(out / 'direction.json').meta['classes'] == [int(label)]   # searched on the pivot's class
    grid = torch.from_numpy(np.array(Image.open(out / 'edit.png'))).permute(2, 0, 1)
    assert torch.equal(grid[:, 1:33, 34:66], pti)                             # strength 0 is the PTI reconstruction


@pytest.mark.parametrize('args, message', [
    (['--prompt', ''], 'give --prompt'),
    (['--prompt', 'x', '--strengths', 'a,b'], '--strengths'),
    (['--prompt', 'x', '--steps', '0'], '--steps 0'),
    (['--prompt', 'x', '--seeds', '0-1', '--inversion', '.'], 'either seeds or an inversion'),
    (['--prompt', 'x', '--clip-size', '64'], '--clip-size goes with --clip-weights random'),
    (['--prompt', 'x', '--space', 'w', '--layers', 'L0'], '--layers applies to --space style'),
    (['--prompt', 'x', '--inversion', '/no/such/dir'], 'no such folder'),
    (['--direction', '/no/such.json'], 'no direction at'),
])
def test_edit_cli_bad_options_fail_before_loading(args, message, tmp_path, capsys):
    rc, _, err = sgxl_cli(capsys, 'edit', '--network', tmp_path / 'not-a-run', '--outdir', tmp_path / 'o', *args)
    assert rc == 1 and message in err, err
    assert not (tmp_path / 'o').exists()


def test_edit_cli_bad_class_and_missing_weights(run, tmp_path, capsys, offline_empty_cache, sleeps):
    path, _ = run
    rc, _, err = sgxl_cli(capsys, 'edit', '--network', path, '--prompt', 'x', '--class', '10', '--outdir', tmp_path / 'o')
    assert rc == 1 and 'class 10 is out of range' in err
    t0 = time.time()
    rc, _, err = sgxl_cli(capsys, 'edit', '--network', path, '--prompt', 'x', '--outdir', tmp_path / 'o')
    assert rc == 1 and 'No CLIP weights for ViT-B-32-quickgelu' in err and sleeps == [] and time.time() - t0 < 30
    assert not (tmp_path / 'o').exists()


def test_readme_edit_command(root, tmp_path, monkeypatch, capsys, offline_empty_cache):
    """The README's `sgxl edit` line exactly as written, on a tiny rung-F network with 1000 classes in the run folder
    it names: offline without CLIP weights it stops at once naming the file; with random CLIP weights asked for by
    name (and a short search) the same line runs end to end."""
    lines = [l for l in (root / 'README.md').read_text().splitlines() if l.startswith('sgxl edit ')]
    assert len(lines) == 1, lines
    argv = shlex.split(lines[0], comments=True)
    assert argv[:2] == ['sgxl', 'edit']
    net = argv[argv.index('--network') + 1]
    monkeypatch.chdir(tmp_path)
    write_checkpoint(tmp_path / net, make_config('F', 'tiny', c_dim=1000))
    rc, _, err = sgxl_cli(capsys, *argv[1:])
    assert rc == 1 and 'No CLIP weights for ViT-B-32-quickgelu (openai)' in err and 'open_clip_model.safetensors' in err
    rc, stdout, err = sgxl_cli(capsys, *argv[1:], *FAST, '--steps', '2')
    assert rc == 0, err
    out = tmp_path / argv[argv.index('--outdir') + 1]
    assert (out / 'edit.png').is_file() and (out / 'direction.json').is_file()


def test_edit_a_release_pickle_and_its_inversion(root, tmp_path, capsys):
    "A StyleGAN-XL release file (the 16x16 stem of tests/fixtures, 10 classes) is found, edited and inverted for editing."
    from sgxl.data import load
    from sgxl.inversion import invert_main
    pkl = root / 'tests' / 'fixtures' / 'official-pickles' / 'xl-stem16-c10.pkl'
    G, _ = ex.load_network(pkl)
    out = tmp_path / 'out'
    rc, _, err = sgxl_cli(capsys, 'edit', '--network', pkl, '--prompt', PROMPT, '--class', '3', '--seeds', '0-1',
                          '--strengths', '-1,0,1', '--scale', '1', '--outdir', out, *FAST)
    assert rc == 0, err
    d = ed.load_direction(out / 'direction.json')
    assert d.layers == list(ed.style_channels(G)) and d.meta['similarity_after'] > d.meta['similarity_before']
    ws = ex.map_z(G, ex.z_from_seeds(G, [0, 1])[0], torch.tensor([3, 3]))
    grid = torch.from_numpy(np.array(Image.open(out / 'edit.png'))).permute(2, 0, 1)
    from sgxl.core import to_uint8
    assert torch.equal(grid[:, 1:17, 18:34], to_uint8(ex.synthesize(G, ws[:1]))[0])   # strength 0: the release's image
    img, _ = load('shapes', resolution=16, num_images=10)[0]
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp_path / 'target.png')
    capsys.readouterr()
    assert invert_main([str(a) for a in ('--network', pkl, '--target', tmp_path / 'target.png', '--class', 3, '--steps', 2,
                                         '--pti-steps', 2, '--scale', 1, '--outdir', tmp_path / 'inv')]) == 0
    tuned, ws, c = ed.load_inversion(tmp_path / 'inv')                        # the tuned release network
    pti = torch.from_numpy(np.array(Image.open(tmp_path / 'inv' / 'pti.png'))).permute(2, 0, 1)
    assert c == 3 and torch.equal(to_uint8(ex.synthesize(tuned, ws))[0], pti)
    rc, _, err = sgxl_cli(capsys, 'edit', '--network', pkl, '--inversion', tmp_path / 'inv', '--direction',
                          out / 'direction.json', '--strengths', '-1,0,1', '--scale', '1', '--outdir', tmp_path / 'e')
    assert rc == 0, err
    grid = torch.from_numpy(np.array(Image.open(tmp_path / 'e' / 'edit.png'))).permute(2, 0, 1)
    assert torch.equal(grid[:, 1:17, 18:34], pti)                             # strength 0: the PTI reconstruction
