"""sgxl.data with files, processes and the CLI: the reader's errors, the dataset tool, loaders, shapes, DiffAugment.

Every bad-input case of issue 5 has its own test, for the reader (raises, naming the file) and for the tool
(skips and reports, or refuses without leaving output).
"""
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sgxl.augment as augment
import sgxl.data as data
import sgxl.dataset_tool as dataset_tool
from sgxl.augment import brightness, contrast, cutout, diff_augment, saturation, translation
from sgxl.data import FileDataset, InfiniteSampler, ShapesDataset, infinite_loader, load
from sgxl.dataset_tool import ConversionReport, convert_dataset


# ----------------------------------------------------------------------------------------------- helpers
def png(path: Path, size=(8, 8), colour=(10, 20, 30), mode='RGB') -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def png_bytes(size=(8, 8), colour=(10, 20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new('RGB', size, colour).save(buf, format='PNG')
    return buf.getvalue()


def labelled_folder(root: Path, n=6, size=8, classes=3) -> Path:
    "n images; image i has class i % classes and colour (40 * class, i, 0)."
    labels = []
    for i in range(n):
        png(root / f'img{i}.png', (size, size), (40 * (i % classes), i, 0))
        labels.append([f'img{i}.png', i % classes])
    (root / 'dataset.json').write_text(json.dumps({'labels': labels}))
    return root


def zip_folder(folder: Path, dest: Path, prefix='') -> Path:
    with zipfile.ZipFile(dest, 'w') as z:
        for p in sorted(folder.rglob('*')):
            if p.is_file(): z.write(p, prefix + p.relative_to(folder).as_posix())
    return dest


def tree_digest(root: Path) -> str:
    "Hash of every path, size, mode and content under root: changes if anything is modified."
    h = hashlib.sha256()
    for p in sorted(root.rglob('*')):
        h.update(p.relative_to(root).as_posix().encode())
        st = p.stat()
        h.update(f'{st.st_mode}:{st.st_size}:{st.st_mtime_ns}'.encode())
        if p.is_file(): h.update(p.read_bytes())
    return h.hexdigest()


def class_tree(root: Path, classes=('cat', 'dog'), per_class=3, size=(24, 20)) -> Path:
    for c, name in enumerate(classes):
        for j in range(per_class):
            png(root / name / f'{j}.png', size, (100 * c, 10 * j, 50))
    return root


def convert(src, dest, **kw) -> ConversionReport:
    kw.setdefault('resolution', 16)
    return convert_dataset(src, dest, progress=False, log=lambda *a: None, **kw)


def leftovers(folder: Path) -> list[str]:
    "Temporary files or folders the tool may have left in `folder`."
    return [p.name for p in folder.iterdir() if '.tmp' in p.name]


# ---------------------------------------------------------------------------------- reader: the format
def test_reader_folder_and_zip_read_the_same(tmp_path):
    folder = labelled_folder(tmp_path / 'ds', n=6, classes=3)
    zipped = zip_folder(folder, tmp_path / 'ds.zip')
    a, b = load(folder), load(zipped)
    assert len(a) == len(b) == 6 and a.num_classes == b.num_classes == 3
    for i in range(6):
        (xa, ya), (xb, yb) = a[i], b[i]
        assert xa.dtype == torch.uint8 and xa.shape == (3, 8, 8) and ya.dtype == torch.int64
        assert torch.equal(xa, xb) and ya == yb == i % 3
        assert xa[0, 0, 0] == 40 * (i % 3) and xa[1, 0, 0] == i          # the right file for the index
    assert list(a.class_counts()) == [2, 2, 2] and a.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert a.root == folder and b.root == zipped


def test_reader_zip_deflated_and_stored_read_the_same(tmp_path):
    folder = labelled_folder(tmp_path / 'ds', n=4, classes=2)
    stored = zip_folder(folder, tmp_path / 'stored.zip')
    with zipfile.ZipFile(tmp_path / 'deflated.zip', 'w', zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.iterdir()): z.write(f, f.name)
    a, b = load(stored), load(tmp_path / 'deflated.zip')
    assert all(torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1] for i in range(4))
    assert all(a.src.read(n) == (folder / n).read_bytes() for n in a.images)      # the direct (pread) path


def test_reader_unconditional_without_dataset_json(tmp_path):
    for i in range(3): png(tmp_path / 'u' / f'{i}.png')
    ds = load(tmp_path / 'u')
    assert ds.num_classes == 0 and ds.labels is None and ds[1][1] == 0 and list(ds.class_counts()) == [3]
    (tmp_path / 'u' / 'dataset.json').write_text('{"labels": null}')
    assert load(tmp_path / 'u').num_classes == 0


def test_reader_xflip_and_downsampling(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    (tmp_path / 'f').mkdir()
    Image.fromarray(img).save(tmp_path / 'f' / 'a.png')
    ds = load(tmp_path / 'f', xflip=True)
    assert len(ds) == 2 and torch.equal(ds[1][0], ds[0][0].flip(-1))
    small = load(tmp_path / 'f', resolution=4)[0][0]
    expect = img.astype(np.float64).reshape(4, 2, 4, 2, 3).mean((1, 3)).round().astype(np.uint8)
    assert small.shape == (3, 4, 4) and np.array_equal(small.permute(1, 2, 0).numpy(), expect)
    with pytest.raises(ValueError, match='no larger than'):
        load(tmp_path / 'f', resolution=16)


def test_reader_name_is_stable_and_follows_content(tmp_path):
    "The name hashes the file list with sizes and dataset.json: same data, same name; new files, new name."
    folder = labelled_folder(tmp_path / 'ds')
    name0 = load(folder).name
    assert load(folder).name == name0 and name0.startswith('ds-8-') and load(folder, resolution=4).name != name0
    png(folder / 'extra.png')
    labels = json.loads((folder / 'dataset.json').read_text())['labels'] + [['extra.png', 0]]
    (folder / 'dataset.json').write_text(json.dumps({'labels': labels}))
    assert load(folder).name != name0
    relabelled = [[p, (c + 1) % 3] for p, c in labels]
    name1 = load(folder).name
    (folder / 'dataset.json').write_text(json.dumps({'labels': relabelled}))
    assert load(folder).name != name1


def test_reader_classes_json_names_classes(tmp_path):
    folder = labelled_folder(tmp_path / 'ds', n=4, classes=2)
    (folder / 'classes.json').write_text(json.dumps({'dog': 1, 'cat': 0, 'bird': 2}))
    ds = load(folder)
    assert ds.class_names == ['cat', 'dog', 'bird'] and ds.num_classes == 3
    assert list(ds.class_counts()) == [2, 2, 0]


def test_reader_hidden_files_ignored(tmp_path):
    folder = labelled_folder(tmp_path / 'ds', n=2)
    (folder / '.DS_Store').write_bytes(b'\0junk')
    assert len(load(folder)) == 2


def test_reader_pickles_and_reads_in_dataloader_workers(tmp_path):
    folder = labelled_folder(tmp_path / 'ds', n=20, classes=4)
    ds = load(zip_folder(folder, tmp_path / 'ds.zip'))
    ds[0]                                                      # opens the zip in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.src._zip is None                              # the handle does not travel
    dl = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2)
    x = torch.cat([b[0] for b in dl]); y = torch.cat([b[1] for b in dl])
    assert torch.equal(x, torch.stack([ds[i][0] for i in range(20)])) and y.tolist() == ds.labels.tolist()


def test_reader_works_with_distributed_sampler(tmp_path):
    ds = load(labelled_folder(tmp_path / 'ds', n=10, classes=2))
    seen = []
    for rank in range(2):
        s = torch.utils.data.DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=3)
        dl = torch.utils.data.DataLoader(ds, batch_size=5, sampler=s)
        seen += [int(v) for _, y in dl for v in y]
        assert len(list(s)) == 5
    idx = sorted(list(torch.utils.data.DistributedSampler(ds, 2, 0, seed=3)) +
                 list(torch.utils.data.DistributedSampler(ds, 2, 1, seed=3)))
    assert idx == list(range(10)) and sorted(seen) == sorted(ds.labels.tolist())


# ------------------------------------------------------------------ reader: bad input, one test each
def test_reader_corrupt_image_names_the_file(tmp_path):
    labelled_folder(tmp_path / 'ds', n=2)
    (tmp_path / 'ds' / 'img1.png').write_bytes(b'this is not a png at all')
    with pytest.raises(ValueError, match=r'img1\.png.*not a readable image'):
        load(tmp_path / 'ds')


def test_reader_truncated_image_names_the_file_when_read(tmp_path):
    labelled_folder(tmp_path / 'ds', n=2, size=16)
    noisy = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / 'ds' / 'img1.png')
    full = (tmp_path / 'ds' / 'img1.png').read_bytes()
    (tmp_path / 'ds' / 'img1.png').write_bytes(full[:len(full) // 2])     # header intact, pixels cut
    ds = load(tmp_path / 'ds')
    ds[0]
    with pytest.raises(ValueError, match=r'img1\.png: cannot decode image.*corrupt or truncated'):
        ds[1]


def test_reader_non_image_file_names_the_file(tmp_path):
    labelled_folder(tmp_path / 'ds', n=2)
    (tmp_path / 'ds' / 'notes.txt').write_text('hello')
    with pytest.raises(ValueError, match=r'notes\.txt is not an image'):
        load(tmp_path / 'ds')


def test_reader_mixed_sizes_names_the_file(tmp_path):
    png(tmp_path / 'ds' / 'a.png', (8, 8))
    png(tmp_path / 'ds' / 'b.png', (16, 16))
    with pytest.raises(ValueError, match=r'b\.png is 16x16 but the dataset.s images are 8x8: mixed sizes'):
        load(tmp_path / 'ds')
    lazy = FileDataset(tmp_path / 'ds', check_all=False)        # large-dataset mode: caught when read
    with pytest.raises(ValueError, match=r'b\.png is 16x16.*mixed sizes'):
        lazy[1]


def test_reader_non_square_or_non_power_of_two(tmp_path):
    png(tmp_path / 'a' / 'a.png', (8, 16))
    with pytest.raises(ValueError, match=r'a\.png is 8x16: images must be square'):
        load(tmp_path / 'a')
    png(tmp_path / 'b' / 'b.png', (12, 12))
    with pytest.raises(ValueError, match=r'b\.png is 12x12.*power-of-two'):
        load(tmp_path / 'b')


def test_reader_alpha_image_names_the_file(tmp_path):
    png(tmp_path / 'ds' / 'a.png', (8, 8), (1, 2, 3, 4), mode='RGBA')
    with pytest.raises(ValueError, match=r'a\.png has mode RGBA'):
        load(tmp_path / 'ds')


def test_reader_labels_naming_missing_files(tmp_path):
    folder = labelled_folder(tmp_path / 'ds', n=3)
    (folder / 'img2.png').unlink()
    with pytest.raises(ValueError, match=r'names 1 image\(s\) that are not in the dataset.*img2\.png'):
        load(folder)


def test_reader_image_without_label(tmp_path):
    folder = labelled_folder(tmp_path / 'ds', n=3)
    png(folder / 'new.png')
    with pytest.raises(ValueError, match=r'new\.png has no label'):
        load(folder)


@pytest.mark.parametrize('bad', [-1, 3, 1.5, '0', True, None])
def test_reader_class_index_out_of_range(tmp_path, bad):
    folder = labelled_folder(tmp_path / 'ds', n=2)
    (folder / 'classes.json').write_text(json.dumps({'a': 0, 'b': 1, 'c': 2}))
    (folder / 'dataset.json').write_text(json.dumps({'labels': [['img0.png', 0], ['img1.png', bad]]}))
    with pytest.raises(ValueError, match=r"class index .* of 'img1\.png' is out of range.*\[0, 3\)"):
        load(folder)


def test_reader_empty_folder(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='no images in'):
        load(tmp_path / 'empty')
    (tmp_path / 'empty' / 'dataset.json').write_text('{"labels": []}')
    with pytest.raises(ValueError, match='no images in'):
        load(tmp_path / 'empty')


def test_reader_dataset_json_not_json(tmp_path):
    folder = labelled_folder(tmp_path / 'ds', n=2)
    (folder / 'dataset.json').write_text('{"labels": [["img0.png", 0],')
    with pytest.raises(ValueError, match=r'dataset\.json is not valid JSON \(.*line 1'):
        load(folder)
    (folder / 'dataset.json').write_text('[1, 2]')
    with pytest.raises(ValueError, match=r"dataset\.json must be an object with a 'labels' entry"):
        load(folder)


def test_reader_zip_with_nested_folders(tmp_path):
    folder = labelled_folder(tmp_path / 'ds', n=2)
    wrapped = zip_folder(folder, tmp_path / 'wrapped.zip', prefix='ds/')    # what zipping a folder makes
    with pytest.raises(ValueError, match=r"dataset\.json is at 'ds/dataset\.json', not at the root.*extra top folder"):
        load(wrapped)
    # images in sub-folders are fine when dataset.json (at the root) names them by their paths
    nested = tmp_path / 'nested'
    png(nested / 'a' / 'b' / 'x.png'); png(nested / 'c' / 'y.png')
    (nested / 'dataset.json').write_text(json.dumps({'labels': [['a/b/x.png', 1], ['c/y.png', 0]]}))
    ds = load(zip_folder(nested, tmp_path / 'nested.zip'))
    assert ds.labels.tolist() == [1, 0] and len(ds) == 2


def test_reader_missing_path_and_non_zip_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist: give a folder, a .zip, or 'shapes'"):
        load(tmp_path / 'nope')
    (tmp_path / 'f.zip').write_text('not a zip')
    with pytest.raises(ValueError, match='is a file but not a zip'):
        load(tmp_path / 'f.zip')


# ------------------------------------------------------------------------------------------- shapes
def test_shapes_deterministic_prefix_and_seeded():
    a, b = ShapesDataset(16, 1500, seed=0), ShapesDataset(16, 1100, seed=0)
    assert all(torch.equal(a[i][0], b[i][0]) for i in (0, 1, 1023, 1024, 1099))   # across parameter blocks
    c = ShapesDataset(16, 10, seed=1)
    assert sum(torch.equal(c[i][0], a[i][0]) for i in range(10)) == 0
    assert a.name == 'shapes-16-seed0-n1500' and a.root is None


def test_shapes_lazy_rendering_equals_eager(monkeypatch):
    eager = ShapesDataset(32, 300)
    monkeypatch.setattr(data, 'EAGER_BYTES', 0)
    lazy = ShapesDataset(32, 300)
    assert not lazy._cache
    assert all(torch.equal(eager[i][0], lazy[i][0]) for i in range(0, 300, 7))


@pytest.mark.parametrize('res', [4, 8, 16, 64, 128])
def test_shapes_any_power_of_two(res):
    ds = ShapesDataset(res, 20)
    x, y = ds[13]
    assert x.shape == (3, res, res) and x.dtype == torch.uint8 and y == 3 and ds.num_classes == 10
    assert x.float().std() > 0                                   # not blank


def test_shapes_classes_are_balanced_and_named():
    ds = load('shapes', resolution=8, num_images=95)
    assert list(ds.class_counts()) == [10] * 5 + [9] * 5 and len(ds.class_names) == 10


def test_shapes_textures_change_the_interior():
    "Striped and checkered classes have two colours inside the shape; a plain disc one."
    ds = ShapesDataset(64, 10)
    p = {k: v.clone() for k, v in ds.params.items()}
    p['cx'][:], p['cy'][:], p['scale'][:] = 0, 0, 0.6
    imgs = data.render_shapes(p, 64)
    centre = imgs[:, :, 24:40, 24:40].flatten(2)                 # (10, 3, 256) inside every shape
    distinct = [torch.unique(centre[i], dim=1).shape[1] for i in range(10)]       # colours per image
    assert distinct[0] == 1 and distinct[1] == 1 and distinct[8] > 2 and distinct[9] > 2


def test_shapes_bad_arguments():
    with pytest.raises(ValueError, match=r"give resolution="):
        load('shapes')
    with pytest.raises(ValueError, match='power of two'):
        load('shapes', resolution=24)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['colour'\]"):
        load('shapes', resolution=8, colour=1)
    with pytest.raises(ValueError, match='num_images'):
        load('shapes:num_images=0', resolution=8)
    assert len(load('shapes:num_images=30,seed=2', resolution=8)) == 30



def test_shapes_easy_is_the_same_shapes_upright_white_on_black():
    "easy=1: same labels and sizes; no rotation, background black, shape white; the name says it."
    full, easy = ShapesDataset(32, 40), load('shapes:easy=1,num_images=40', resolution=32)
    assert easy.name == 'shapes-easy-32-seed0-n40' and torch.equal(torch.as_tensor(easy.labels), torch.as_tensor(full.labels))
    x = torch.stack([easy[i][0] for i in range(40)]).float()                    # (40, 3, 32, 32)
    assert (x[:, :, 0, :] == 0).all() and (x[:, :, :, 0] == 0).all()            # borders black (centred shapes)
    assert (x.amax((1, 2, 3)) == 255).all()                                     # every shape white somewhere
    assert (x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all()            # grey levels only
    assert not torch.equal(x, torch.stack([full[i][0] for i in range(40)]).float())
    # upright: a square (class 1) fills its bounding box; the rotated squares of the full dataset mostly do not
    fill = lambda img: (img[0] > 127).float().sum() / ((img[0] > 127).any(0).sum() * (img[0] > 127).any(1).sum())
    assert all(fill(x[i]) > 0.9 for i in range(1, 40, 10))
    with pytest.raises(ValueError, match='easy=2'):
        load('shapes:easy=2', resolution=8)

# --------------------------------------------------------------------------------------- the loader
def take(loader, k):
    return [next(loader) for _ in range(k)]


def test_infinite_loader_resumes_bit_for_bit():
    ds = ShapesDataset(8, 37)
    run = infinite_loader(ds, batch=6, seed=5)
    full = take(run, 15)                                          # 90 images: across epoch boundaries
    part = infinite_loader(ds, batch=6, seed=5)
    take(part, 7)
    state = json.loads(json.dumps(part.state_dict()))            # survives a JSON checkpoint
    again = infinite_loader(ds, batch=6, seed=5)
    again.load_state_dict(state)
    for (x0, y0), (x1, y1) in zip(full[7:], take(again, 8)):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    other = take(infinite_loader(ds, batch=6, seed=6), 1)[0][1]
    assert not torch.equal(other, full[0][1]) or not torch.equal(take(infinite_loader(ds, 6, 6), 2)[1][1], full[1][1])


def test_infinite_loader_workers_give_the_same_stream(tmp_path):
    ds = load(zip_folder(labelled_folder(tmp_path / 'ds', n=13, classes=3), tmp_path / 'ds.zip'))
    a = take(infinite_loader(ds, batch=4, seed=1, workers=0), 6)
    b = take(infinite_loader(ds, batch=4, seed=1, workers=2, position=2), 4)
    for (x0, y0), (x1, y1) in zip(a[2:], b):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_infinite_sampler_epochs_are_permutations_and_ranks_partition():
    s = InfiniteSampler(10, batch=3, seed=0)
    it = iter(s)
    stream = [next(it) for _ in range(30)]
    assert all(sorted(stream[e * 10:(e + 1) * 10]) == list(range(10)) for e in range(3))
    assert stream[:10] != stream[10:20]                           # a new order each epoch
    one = iter(InfiniteSampler(10, batch=6, seed=0))
    ranks = [iter(InfiniteSampler(10, batch=3, seed=0, rank=r, world_size=2)) for r in range(2)]
    for _ in range(5):
        assert [next(one) for _ in range(6)] == [next(ranks[0]) for _ in range(3)] + [next(ranks[1]) for _ in range(3)]


def test_infinite_loader_refuses_a_mismatched_state():
    ds = ShapesDataset(8, 20)
    state = infinite_loader(ds, batch=4, seed=0).state_dict()
    with pytest.raises(ValueError, match='loader state has batch=4 but this loader has 8'):
        infinite_loader(ds, batch=8, seed=0).load_state_dict(state)


# ------------------------------------------------------------------------------------- the tool: works
def test_tool_class_tree_writes_format_and_classes_json(tmp_path):
    src = class_tree(tmp_path / 'src', ('zebra', 'ant', 'bee'), per_class=2)
    rep = convert(src, tmp_path / 'out')
    out = tmp_path / 'out'
    assert json.loads((out / 'classes.json').read_text()) == {'ant': 0, 'bee': 1, 'zebra': 2}
    labels = json.loads((out / 'dataset.json').read_text())['labels']
    assert len(labels) == 6 and all((out / p).is_file() for p, _ in labels)
    ds = load(out)
    assert ds.class_names == ['ant', 'bee', 'zebra'] and rep.written == 6 and rep.num_classes == 3
    for i in range(6):                                           # the red channel encodes the class folder
        x, y = ds[i]
        assert {0: 100, 1: 200, 2: 0}[int(y)] == int(x[0, 8, 8])
    assert (x.shape, rep.skipped) == ((3, 16, 16), [])


def test_tool_flat_folder_is_unconditional(tmp_path):
    for i in range(3): png(tmp_path / 'src' / f'{i}.jpg', (20, 40))
    convert(tmp_path / 'src', tmp_path / 'out.zip')
    with zipfile.ZipFile(tmp_path / 'out.zip') as z:
        assert json.loads(z.read('dataset.json')) == {'labels': None} and 'classes.json' not in z.namelist()
    ds = load(tmp_path / 'out.zip')
    assert ds.num_classes == 0 and len(ds) == 3 and ds.resolution == 16


def test_tool_keeps_labels_of_a_dataset_source_and_roundtrips(tmp_path):
    src = labelled_folder(tmp_path / 'ds', n=5, classes=2, size=16)
    (src / 'classes.json').write_text(json.dumps({'x': 0, 'y': 1}))
    convert(src, tmp_path / 'a.zip')
    convert(tmp_path / 'a.zip', tmp_path / 'b')
    a, b, orig = load(tmp_path / 'a.zip'), load(tmp_path / 'b'), load(src)
    assert a.class_names == b.class_names == ['x', 'y']
    pixels = lambda d: sorted((int(d[i][1]), d[i][0].flatten().tolist()) for i in range(len(d)))
    assert pixels(a) == pixels(b) == pixels(orig)                 # lossless at the same resolution


def test_tool_builtin_source_writes_shapes(tmp_path):
    convert('shapes', tmp_path / 's.zip', resolution=16, max_images=25)
    ds, ref = load(tmp_path / 's.zip'), ShapesDataset(16, 25)
    assert ds.class_names == ref.class_names and len(ds) == 25
    made = sorted((int(ds[i][1]), ds[i][0].flatten().tolist()) for i in range(25))
    assert made == sorted((int(ref[i][1]), ref[i][0].flatten().tolist()) for i in range(25))
    with pytest.raises(ValueError, match='give --resolution'):
        convert('shapes', tmp_path / 't.zip', resolution=None)


def test_tool_resolution_from_first_image(tmp_path):
    png(tmp_path / 'src' / 'a.png', (100, 70))
    rep = convert(tmp_path / 'src', tmp_path / 'out', resolution=None)
    assert rep.resolution == 64 and load(tmp_path / 'out').resolution == 64


def test_tool_center_crop_takes_the_middle(tmp_path):
    img = np.zeros((16, 48, 3), np.uint8)
    img[:, :16, 0] = 255; img[:, 16:32, 1] = 255; img[:, 32:, 2] = 255     # red | green | blue
    (tmp_path / 'src').mkdir(); Image.fromarray(img).save(tmp_path / 'src' / 'w.png')
    convert(tmp_path / 'src', tmp_path / 'out', resolution=16, transform='center-crop')
    x = load(tmp_path / 'out')[0][0]
    assert (x[1] == 255).all() and (x[0] == 0).all() and (x[2] == 0).all()


def test_tool_center_crop_wide_letterboxes(tmp_path):
    img = np.full((16, 64, 3), 200, np.uint8)                      # 4:1 -> a centred 2:1 band (32 x 16)
    img[:, :16] = 0; img[:, 48:] = 0                              # dark outer quarters are cut away
    (tmp_path / 'src').mkdir(); Image.fromarray(img).save(tmp_path / 'src' / 'w.png')
    convert(tmp_path / 'src', tmp_path / 'out', resolution=16, transform='center-crop-wide')
    x = load(tmp_path / 'out')[0][0]
    assert (x[:, :4] == 0).all() and (x[:, 12:] == 0).all()       # black bars above and below
    assert (x[:, 4:12] == 200).all()                              # the band, whole width, resized to 16 x 8


def test_tool_converts_modes_to_rgb_and_counts_them(tmp_path):
    src = tmp_path / 'src'
    png(src / 'rgb.png', (16, 16))
    png(src / 'gray.png', (16, 16), 77, mode='L')
    png(src / 'cmyk.jpg', (16, 16), (0, 255, 255, 0), mode='CMYK')
    png(src / 'alpha.png', (16, 16), (0, 0, 255, 0), mode='RGBA')
    Image.fromarray(np.full((16, 16), 65535, np.uint16)).save(src / 'deep.png')        # 16-bit grayscale
    png(src / 'pal.png', (16, 16), 3, mode='P')
    rep = convert(src, tmp_path / 'out')
    assert rep.converted == {'grayscale': 2, 'CMYK': 1, 'alpha': 1, 'palette': 1} and rep.written == 6
    ds = load(tmp_path / 'out')
    got = sorted(tuple(ds[i][0][:, 0, 0].tolist()) for i in range(6))
    assert (77, 77, 77) in got and (255, 255, 255) in got          # grey kept; transparent blue -> white
    assert sum(g == (255, 255, 255) for g in got) == 2              # the 16-bit white one too
    assert 'converted to RGB: 5' in rep.summary()


def test_tool_max_images_takes_classes_in_turn(tmp_path):
    src = class_tree(tmp_path / 'src', ('a', 'b', 'c'), per_class=5)
    rep = convert(src, tmp_path / 'out', max_images=7)
    assert rep.written == 7 and list(load(tmp_path / 'out').class_counts()) == [3, 2, 2]


def test_tool_workers_give_the_same_output(tmp_path):
    src = class_tree(tmp_path / 'src', ('a', 'b'), per_class=40)
    convert(src, tmp_path / 'one.zip', workers=1)
    convert(src, tmp_path / 'two.zip', workers=2)
    assert (tmp_path / 'one.zip').read_bytes() == (tmp_path / 'two.zip').read_bytes()


def test_tool_never_modifies_its_source(tmp_path):
    src = class_tree(tmp_path / 'src')
    (src / 'cat' / 'broken.png').write_bytes(b'garbage')
    before = tree_digest(src)
    convert(src, tmp_path / 'out')
    convert(src, tmp_path / 'out.zip')
    zsrc = zip_folder(src, tmp_path / 'src.zip')
    zbefore = zsrc.read_bytes()
    convert(zsrc, tmp_path / 'out2')
    assert tree_digest(src) == before and zsrc.read_bytes() == zbefore
    with pytest.raises(ValueError, match='inside the source'):
        convert(src, src / 'cat' / 'out')
    assert tree_digest(src) == before


@pytest.mark.parametrize('dest', ['out', 'out.zip'])
@pytest.mark.parametrize('error', [RuntimeError, KeyboardInterrupt])
def test_tool_failure_half_way_leaves_no_output(tmp_path, monkeypatch, dest, error):
    src = class_tree(tmp_path / 'src', per_class=5)
    real, calls = dataset_tool.convert_image, []
    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 6: raise error('disk on fire')
        return real(*a, **k)
    monkeypatch.setattr(dataset_tool, 'convert_image', flaky)
    (tmp_path / 'outdir').mkdir()
    with pytest.raises(error):
        convert(src, tmp_path / 'outdir' / dest)
    assert len(calls) == 6 and list((tmp_path / 'outdir').iterdir()) == []


# ---------------------------------------------------------------- the tool: bad input, one test each
def test_tool_skips_corrupt_and_truncated_images(tmp_path):
    src = class_tree(tmp_path / 'src', per_class=2)
    (src / 'cat' / 'garbage.jpg').write_bytes(b'\xff\xd8\xff not really a jpeg')
    noisy = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO(); Image.fromarray(noisy).save(buf, format='JPEG')
    (src / 'dog' / 'cut.jpg').write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
    buf = io.BytesIO(); Image.fromarray(noisy).save(buf, format='PNG')
    (src / 'dog' / 'cut.png').write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
    rep = convert(src, tmp_path / 'out')
    reasons = {Path(f).name: r for f, r, _ in rep.skipped}
    assert reasons == {'garbage.jpg': 'not an image', 'cut.jpg': 'corrupt or truncated', 'cut.png': 'corrupt or truncated'}
    assert rep.written == 4 and len(load(tmp_path / 'out')) == 4
    assert 'cut.png' in rep.summary() and 'corrupt or truncated: 2' in rep.summary()


def test_tool_skips_unreadable_files(tmp_path):
    src = class_tree(tmp_path / 'src', per_class=1)
    (src / 'cat' / 'gone.png').symlink_to(tmp_path / 'nowhere.png')          # a dangling link: cannot be read
    rep = convert(src, tmp_path / 'out')
    assert [(Path(f).name, r) for f, r, _ in rep.skipped] == [('gone.png', 'unreadable')] and rep.written == 2
    assert 'No such file' in rep.summary()


def test_tool_skips_non_image_files(tmp_path):
    src = class_tree(tmp_path / 'src', per_class=1)
    (src / 'cat' / 'README.md').write_text('# cats')
    (src / '.DS_Store').write_bytes(b'\0')
    rep = convert(src, tmp_path / 'out')
    assert sorted((Path(f).name, r) for f, r, _ in rep.skipped) == [('.DS_Store', 'hidden file'), ('README.md', 'not an image')]
    assert rep.written == 2


def test_tool_mixed_sizes_resized_and_too_small_skipped(tmp_path):
    src = tmp_path / 'src'
    for i, size in enumerate([(16, 16), (40, 30), (300, 17), (15, 200), (8, 8)]):
        png(src / f'{i}.png', size, (i * 50, 0, 0))
    rep = convert(src, tmp_path / 'out', resolution=16)
    assert rep.written == 3 and sorted(f for f, _, _ in rep.skipped) == ['3.png', '4.png']
    assert {r for _, r, _ in rep.skipped} == {'too small'}
    assert 'needs a short side of at least 16' in rep.summary()
    assert load(tmp_path / 'out').resolution == 16


def test_tool_labels_naming_missing_files(tmp_path):
    src = labelled_folder(tmp_path / 'ds', n=4, size=16)
    (src / 'img3.png').unlink()
    rep = convert(src, tmp_path / 'out')
    assert rep.skipped == [('img3.png', 'listed in dataset.json but missing', '')] and rep.written == 3
    png(src / 'new.png', (16, 16))
    rep = convert(src, tmp_path / 'out2')
    assert ('new.png', 'no label in dataset.json', '') in rep.skipped


def test_tool_class_index_out_of_range(tmp_path):
    src = labelled_folder(tmp_path / 'ds', n=4, size=16)
    (src / 'classes.json').write_text(json.dumps({'a': 0, 'b': 1, 'c': 2}))
    (src / 'dataset.json').write_text(json.dumps({'labels': [['img0.png', 0], ['img1.png', 7],
                                                             ['img2.png', -1], ['img3.png', 'x']]}))
    rep = convert(src, tmp_path / 'out')
    assert rep.written == 1 and sorted(f for f, r, _ in rep.skipped if r == 'bad class index') == \
        ['img1.png', 'img2.png', 'img3.png']


def test_tool_empty_folder(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='no files in'):
        convert(tmp_path / 'empty', tmp_path / 'out')
    (tmp_path / 'empty' / 'junk.txt').write_text('x')
    with pytest.raises(ValueError, match='could be converted; nothing written'):
        convert(tmp_path / 'empty', tmp_path / 'out')
    assert not (tmp_path / 'out').exists() and leftovers(tmp_path) == []


def test_tool_dataset_json_not_json(tmp_path):
    src = labelled_folder(tmp_path / 'ds', n=2, size=16)
    (src / 'dataset.json').write_text('{"labels": [')
    with pytest.raises(ValueError, match=r'dataset\.json is not valid JSON'):
        convert(src, tmp_path / 'out')
    assert not (tmp_path / 'out').exists() and leftovers(tmp_path) == []


def test_tool_refuses_an_existing_output(tmp_path):
    src = class_tree(tmp_path / 'src', per_class=1)
    for dest in (tmp_path / 'exists', tmp_path / 'exists.zip'):
        dest.mkdir() if dest.suffix == '' else dest.write_text('precious')
        before = tree_digest(tmp_path / 'src'), (dest.read_text() if dest.is_file() else sorted(dest.iterdir()))
        with pytest.raises(FileExistsError, match='already exists: choose a new output path'):
            convert(src, dest)
        assert (tree_digest(tmp_path / 'src'), dest.read_text() if dest.is_file() else sorted(dest.iterdir())) == before


def test_tool_zip_with_nested_folders(tmp_path):
    "A zip made from a folder wraps everything in one top folder; class folders may nest deeper."
    src = class_tree(tmp_path / 'tree', ('cat', 'dog'), per_class=2)
    png(src / 'dog' / 'puppies' / 'p.png', (20, 20), (100, 0, 50))
    z = zip_folder(src, tmp_path / 'tree.zip', prefix='train/')
    rep = convert(z, tmp_path / 'out')
    ds = load(tmp_path / 'out')
    assert ds.class_names == ['cat', 'dog'] and list(ds.class_counts()) == [2, 3] and rep.skipped == []


# --------------------------------------------------------------------------------------- the CLI
def cli(*args, cwd=None):
    return subprocess.run([sys.executable, '-m', 'sgxl', 'dataset', *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_cli_converts_with_progress_and_report(tmp_path):
    src = class_tree(tmp_path / 'src', per_class=3)
    (src / 'cat' / 'notes.txt').write_text('x')
    out = cli(src, tmp_path / 'out.zip', '--resolution', 16, '--workers', 2)
    assert out.returncode == 0, out.stderr
    assert 'wrote 6 images (16x16 RGB, 2 classes)' in out.stdout and 'cat/notes.txt' in out.stdout
    assert 'img/s' in out.stderr and '7/7' in out.stderr          # the tqdm progress bar, finished
    assert len(load(tmp_path / 'out.zip')) == 6


def test_cli_help_and_listing():
    top = subprocess.run([sys.executable, '-m', 'sgxl', '--help'], capture_output=True, text=True, timeout=60)
    assert 'dataset' in top.stdout
    out = cli('--help')
    assert out.returncode == 0
    for opt in ('--resolution', '--transform', 'center-crop-wide', '--max-images'):
        assert opt in out.stdout


def test_cli_errors_are_one_line_with_exit_codes(tmp_path):
    src = class_tree(tmp_path / 'src', per_class=1)
    (tmp_path / 'out').mkdir()
    out = cli(src, tmp_path / 'out', '--resolution', 16)
    assert out.returncode == 2 and 'already exists' in out.stderr and 'Traceback' not in out.stderr
    (tmp_path / 'empty').mkdir()
    out = cli(tmp_path / 'empty', tmp_path / 'new', '--resolution', 16)
    assert out.returncode == 1 and 'no files in' in out.stderr and 'Traceback' not in out.stderr
    out = cli(tmp_path / 'missing', tmp_path / 'new2')
    assert out.returncode == 1 and 'does not exist' in out.stderr


# ------------------------------------------------------------------------------------------ DiffAugment
def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def batch(n=256, size=16, dtype=torch.float64):
    return torch.rand(n, 3, size, size, generator=gen(1), dtype=dtype) * 2 - 1


def test_brightness_range():
    x = batch()
    b = (brightness(x, gen()) - x)[:, 0, 0, 0]
    assert b.min() >= -0.5 and b.max() <= 0.5 and b.min() < -0.45 and b.max() > 0.45
    assert torch.allclose(brightness(x, gen()) - x, b[:, None, None, None].expand_as(x))


def test_saturation_range():
    x = batch()
    m = x.mean(1, keepdim=True)
    s = ((saturation(x, gen()) - m) / (x - m))[:, 0, 0, 0]           # the factor of each image
    assert s.min() >= 0 and s.max() <= 2 and s.min() < 0.1 and s.max() > 1.9
    assert torch.allclose(saturation(x, gen()).mean(1), x.mean(1))


def test_contrast_range():
    x = batch()
    m = x.mean((1, 2, 3), keepdim=True)
    c = ((contrast(x, gen()) - m) / (x - m))[:, 0, 0, 0]
    assert c.min() >= 0.5 and c.max() <= 1.5 and c.min() < 0.55 and c.max() > 1.45


def test_translation_is_a_zero_padded_shift_up_to_an_eighth():
    x = batch(200)
    t = translation(x, generator=gen())
    found = set()
    for i in range(len(x)):
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                ref = torch.zeros_like(x[i])
                ref[:, max(dy, 0):16 + min(dy, 0), max(dx, 0):16 + min(dx, 0)] = \
                    x[i][:, max(-dy, 0):16 - max(dy, 0), max(-dx, 0):16 - max(dx, 0)]
                if torch.equal(t[i], ref): found.add((dy, dx))
    assert found == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}   # every shift, none beyond 16/8


def test_cutout_zeroes_a_half_size_square():
    x = batch(200)
    u = cutout(x, generator=gen())
    full = 0
    for i in range(len(x)):
        ys, xs = torch.nonzero((u[i] == 0).all(0), as_tuple=True)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert len(ys) == h * w and h <= 8 and w <= 8
        full += int(h == 8 and w == 8)
    assert 0 < full < len(x)                                       # sometimes whole, sometimes over an edge


@pytest.mark.parametrize('op', ['brightness', 'saturation', 'contrast', 'color', 'translation', 'cutout'])
def test_each_op_is_differentiable(op):
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    f = lambda v: augment.AUGMENTS[op](v, generator=gen(3))
    assert torch.autograd.gradcheck(f, (x,))


def test_diff_augment_policy_seeding_and_errors():
    x = batch(8, dtype=torch.float32)
    assert torch.equal(diff_augment(x, generator=gen()), diff_augment(x, generator=gen()))
    assert not torch.equal(diff_augment(x, generator=gen(0)), diff_augment(x, generator=gen(1)))
    assert torch.equal(diff_augment(x, ''), x)
    assert torch.equal(diff_augment(x, 'translation', gen()), translation(x, generator=gen()))
    xg = x.clone().requires_grad_()
    diff_augment(xg).square().sum().backward()
    assert xg.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"unknown op\(s\) \['zoom'\]"):
        diff_augment(x, 'color,zoom')
    with pytest.raises(ValueError, match='float images'):
        diff_augment((x * 127).to(torch.uint8))


def test_load_paths_with_colons_and_named_like_builtins(tmp_path, monkeypatch):
    png(tmp_path / 'x:y' / 'a.png')
    assert len(load(tmp_path / 'x:y')) == 1 and len(load(str(tmp_path / 'x:y'))) == 1
    png(tmp_path / 'shapes' / 'a.png')                           # a folder called shapes wins over the built-in
    monkeypatch.chdir(tmp_path)
    assert isinstance(load('shapes'), FileDataset) and load('shapes').root == Path('shapes')


def test_starting_the_loader_leaves_the_global_random_stream_alone():
    "A resumed run starts its loader mid-run; that must not shift the latents drawn from torch's global RNG."
    from sgxl.data import infinite_loader, load
    ds = load('shapes', resolution=16, num_images=20)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    next(infinite_loader(ds, batch=4, seed=1))
    assert torch.equal(torch.rand(3), expected)
