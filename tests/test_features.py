"""sgxl.features: real weights (package mapping, local file, cache), the offline error, shapes, normalisation."""
import logging
import time

import pytest
import timm
import torch
import torch.nn.functional as F

from sgxl.core import LITE0, DEIT_BASE
from sgxl.features import (DEIT_TINY, FeatureNetwork, MissingWeightsError, create_backbone, lite0_package_file,
                           lukemelas_to_timm, read_state_dict)

IMAGENET_CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def chelsea(size=224):
    "scikit-image's cat photo, centre-cropped and resized, in [-1, 1]: (1, 3, size, size)."
    from skimage import data
    img = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float() / 127.5 - 1
    h, w = img.shape[1:]
    s = min(h, w)
    img = img[:, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return F.interpolate(img[None], size=size, mode='bicubic', antialias=True).clamp(-1, 1)


@pytest.fixture(scope='module')
def lite0_224():
    return FeatureNetwork(LITE0, 'pretrained', 224)


def test_lite0_package_maps_strictly_onto_timm():
    path = lite0_package_file()
    assert path is not None and path.name == 'efficientnet-lite0-57934424.pth'
    state = read_state_dict(path)
    model = timm.create_model(LITE0)
    mapped = lukemelas_to_timm(state, model)
    assert len(state) == len(mapped) == len(model.state_dict()) == 296
    model.load_state_dict(mapped, strict=True)
    for key, value in mapped.items():                       # every tensor landed where it was mapped to
        assert torch.equal(model.state_dict()[key], value), key
    # strictness is real: a file missing one tensor is refused with the file named
    del mapped['blocks.3.1.conv_dw.weight']
    with pytest.raises(RuntimeError):
        timm.create_model(LITE0).load_state_dict(mapped, strict=True)


def test_lite0_missing_tensor_is_refused(tmp_path):
    state = read_state_dict(lite0_package_file())
    del state['_blocks.7._expand_conv.weight']
    torch.save(state, tmp_path / 'lite0.pth')
    with pytest.raises(ValueError, match='does not fit'):
        create_backbone(LITE0, tmp_path / 'lite0.pth')


def test_lite0_pretrained_sees_the_cat(lite0_224):
    assert lite0_224.is_pretrained and lite0_224.weights_source.split(':')[0] in ('package', 'cache')
    with torch.no_grad():
        top2 = lite0_224.classify(chelsea()).topk(2).indices[0].tolist()
    assert set(top2) & IMAGENET_CATS, f'top-2 classes {top2} contain no cat'
    # the same photo through random weights is not a cat with any confidence: the weights matter
    with torch.no_grad():
        p_random = FeatureNetwork(LITE0, 'random', 224).classify(chelsea()).softmax(-1)[0]
        p_real = lite0_224.classify(chelsea()).softmax(-1)[0]
    assert p_real[list(IMAGENET_CATS)].sum() > 0.5 > p_random[list(IMAGENET_CATS)].sum()


@pytest.mark.parametrize('name,weights,res,channels,sizes', [
    (LITE0, 'pretrained', 224, (24, 40, 112, 320), (56, 28, 14, 7)),
    (LITE0, 'pretrained', 64, (24, 40, 112, 320), (16, 8, 4, 2)),
    (LITE0, 'pretrained', 112, (24, 40, 112, 320), (28, 14, 7, 4)),
    (DEIT_BASE, 'random', 224, (96, 192, 384, 768), (56, 28, 14, 7)),
    (DEIT_TINY, 'random', 224, (24, 48, 96, 192), (56, 28, 14, 7)),
    (DEIT_TINY, 'random', 64, (24, 48, 96, 192), (16, 8, 4, 2)),
    (DEIT_TINY, 'random', 112, (24, 48, 96, 192), (28, 14, 7, 4)),
])
def test_feature_shapes(name, weights, res, channels, sizes):
    net = FeatureNetwork(name, weights, res)
    assert net.channels == channels and net.sizes == sizes and net.strides == (4, 8, 16, 32)
    with torch.no_grad():
        feats = net(torch.rand(1, 3, 32, 32) * 2 - 1)       # any input size: resized to `res`
    assert [tuple(f.shape) for f in feats] == [(1, c, s, s) for c, s in zip(channels, sizes)]
    assert all(torch.isfinite(f).all() and f.std() > 0 for f in feats)


def test_vit_uses_blocks_2_5_8_11():
    net = FeatureNetwork(DEIT_TINY, 'random', 64).eval()
    assert net.indices == (2, 5, 8, 11)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    # reference: run the blocks by hand and take the patch tokens after blocks 2, 5, 8, 11
    vit = net.backbone
    with torch.no_grad():
        t = vit._pos_embed(vit.patch_embed(net.preprocess(x)))
        t = vit.norm_pre(vit.patch_drop(t))
        taken = []
        for i, block in enumerate(vit.blocks):
            t = block(t)
            if i in (2, 5, 8, 11):
                taken.append(t[:, vit.num_prefix_tokens:].transpose(1, 2).reshape(2, -1, 4, 4))
        expect = net.reassemble(taken)
        got = net(x)
    for e, g in zip(expect, got):
        assert torch.allclose(e, g, atol=1e-5)


def test_normalisation_per_network():
    x = torch.full((1, 3, 64, 64), 0.2)                       # one grey level in [-1, 1]
    lite0, deit = FeatureNetwork(LITE0, 'random', 64), FeatureNetwork(DEIT_TINY, 'random', 64)
    assert torch.allclose(lite0.preprocess(x), x)            # lite0: mean = std = 0.5, so [-1, 1] stays
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(deit.preprocess(x)[0, :, 0, 0], (0.6 - mean) / std)


def test_frozen_but_differentiable():
    net = FeatureNetwork(LITE0, 'random', 64)
    net.train().requires_grad_(True)                          # neither unfreezes it
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    sum(f.mean() for f in net(x)).backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN statistics too


def test_random_weights_are_logged_and_recorded(caplog):
    with caplog.at_level(logging.WARNING, logger='sgxl.features'):
        net = FeatureNetwork(DEIT_TINY, 'random', 64)
    assert net.weights_source == 'random' and not net.is_pretrained
    assert any('RANDOM' in r.getMessage() and DEIT_TINY in r.getMessage() for r in caplog.records)


def test_local_file_with_position_embedding_resampled(tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(1)
    ref = timm.create_model(DEIT_TINY).eval()                 # stands in for a downloaded 224 checkpoint
    path = tmp_path / 'deit_tiny.safetensors'
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    same = FeatureNetwork(DEIT_TINY, path, 224)
    assert same.weights_source == f'file:{path.resolve()}' and same.is_pretrained
    x = torch.rand(1, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(same.classify(x), ref(same.preprocess(x)), atol=1e-5)
    small = FeatureNetwork(DEIT_TINY, path, 64)              # 14x14 position grid -> 4x4
    pos = small.backbone.pos_embed
    assert pos.shape == (1, 2 + 16, 192)
    assert torch.equal(pos[:, :2], ref.pos_embed[:, :2])      # class and distillation tokens kept
    grid = ref.pos_embed[:, 2:].reshape(1, 14, 14, 192).permute(0, 3, 1, 2)
    coarse = F.interpolate(grid, size=4, mode='bicubic', antialias=True, align_corners=False)
    assert torch.allclose(pos[:, 2:], coarse.permute(0, 2, 3, 1).reshape(1, 16, 192), atol=1e-5)
    for k, v in small.backbone.state_dict().items():
        if k != 'pos_embed': assert torch.equal(v, ref.state_dict()[k]), k


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match='unknown timm model'):
        FeatureNetwork('not_a_network', 'random', 64)
    with pytest.raises(ValueError, match='multiple of its patch size'):
        FeatureNetwork(DEIT_TINY, 'random', 72)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        FeatureNetwork(LITE0, tmp_path / 'missing.pth', 64)
    with pytest.raises(ValueError, match='does not fit'):
        FeatureNetwork(DEIT_TINY, lite0_package_file(), 64)   # lite0's weights into a ViT


# --- where pretrained weights come from when no file is named: caches, the hub, the error ----------------

@pytest.fixture
def empty_caches(monkeypatch, tmp_path):
    "Point the Hugging Face and torch.hub caches at empty folders, and fail the test if the hub is called."
    import huggingface_hub
    import huggingface_hub.constants as hf
    monkeypatch.setattr(hf, 'HF_HUB_CACHE', str(tmp_path / 'hf'))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    def hub_called(*a, **k): raise AssertionError('the hub was called')
    monkeypatch.setattr(huggingface_hub, 'hf_hub_download', hub_called)
    return tmp_path / 'hf'


def check_message(msg):
    assert DEIT_TINY in msg and "weights='/path/to/" in msg and 'feature_sources' in msg and 'random' in msg


def test_offline_error_is_immediate(empty_caches, monkeypatch, sleeps):
    import socket
    def no_network(*a, **k): raise AssertionError('the network was touched although HF_HUB_OFFLINE is set')
    monkeypatch.setattr(socket, 'create_connection', no_network)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    t = time.time()
    with pytest.raises(MissingWeightsError) as e:
        FeatureNetwork(DEIT_TINY, 'pretrained', 64)
    assert sleeps == [] and time.time() - t < 30, f'took {time.time() - t:.1f} s, slept {sleeps}: the hub was retried'
    assert 'HF_HUB_OFFLINE' in str(e.value)
    check_message(str(e.value))


def test_unreachable_hub_error_is_immediate(empty_caches, monkeypatch, sleeps):
    # not flagged offline, but the hub does not answer (a closed local port): one probe, then the error
    import huggingface_hub.constants as hf
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    monkeypatch.setattr(hf, 'HF_HUB_OFFLINE', False)
    monkeypatch.setenv('HF_ENDPOINT', 'http://127.0.0.1:9')
    for var in ('http_proxy', 'HTTP_PROXY', 'all_proxy', 'ALL_PROXY'): monkeypatch.delenv(var, raising=False)
    t = time.time()
    with pytest.raises(MissingWeightsError) as e:
        FeatureNetwork(DEIT_TINY, 'pretrained', 64)
    assert sleeps == [] and time.time() - t < 30, f'took {time.time() - t:.1f} s, slept {sleeps}: the hub was retried'
    assert 'no connection to http://127.0.0.1:9' in str(e.value)
    check_message(str(e.value))


def test_weights_in_the_hub_cache_are_used(empty_caches, monkeypatch):
    from safetensors.torch import save_file
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    torch.manual_seed(2)
    ref = timm.create_model(DEIT_TINY)
    repo = empty_caches / 'models--timm--deit_tiny_distilled_patch16_224.fb_in1k'
    (repo / 'snapshots' / 'abc123').mkdir(parents=True)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text('abc123')
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()},
              str(repo / 'snapshots' / 'abc123' / 'model.safetensors'))
    net = FeatureNetwork(DEIT_TINY, 'pretrained', 64)
    assert net.weights_source.startswith('cache:') and net.weights_source.endswith('model.safetensors')
    assert torch.equal(net.backbone.cls_token, ref.cls_token)
    assert torch.equal(net.backbone.blocks[11].mlp.fc2.weight, ref.blocks[11].mlp.fc2.weight)


def test_torch_hub_checkpoint_is_used(empty_caches, monkeypatch, tmp_path):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    ckpt = tmp_path / 'torch' / 'hub' / 'checkpoints'
    ckpt.mkdir(parents=True)
    torch.manual_seed(3)
    ref = timm.create_model(DEIT_TINY)
    torch.save({'model': ref.state_dict()}, ckpt / 'deit_tiny_distilled_patch16_224-b40b3cf7.pth')  # fb's layout
    net = FeatureNetwork(DEIT_TINY, 'pretrained', 224)
    assert net.weights_source.startswith('cache:') and 'checkpoints' in net.weights_source
    assert torch.equal(net.backbone.pos_embed, ref.pos_embed)


def test_hub_probe_goes_through_the_proxy(monkeypatch):
    import socket
    from sgxl.features import hub_address, hub_reachable
    monkeypatch.setenv('HF_ENDPOINT', 'https://huggingface.co')
    for var in ('NO_PROXY', 'no_proxy', 'HTTPS_PROXY'): monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv('https_proxy', 'http://proxy.example:3128')
    assert hub_address() == ('proxy.example', 3128)
    seen = []
    def fake_connect(address, timeout=None):
        seen.append(address)
        raise OSError('refused')
    monkeypatch.setattr(socket, 'create_connection', fake_connect)
    assert hub_reachable() is False and seen == [('proxy.example', 3128)]
    monkeypatch.setenv('no_proxy', 'huggingface.co')
    assert hub_address() == ('huggingface.co', 443)
