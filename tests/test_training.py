"""The training loop as users run it: `sgxl train` for every rung, a SIGKILLed run resumed, 2-process DDP,
corrupted checkpoints, classifier guidance. Everything on the tiny preset, on CPU."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sgxl.baseline import RungA
from sgxl.core import RUNGS, make_config, seed_everything
from sgxl.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint, load_generator
from sgxl.distributed import training_rung
from sgxl.training import StatsLog, Trainer, train_main

TINY = ['--preset', 'tiny', '--data', 'shapes:num_images=40', '--batch', '4', '--quiet']


def sgxl(*args, env=None, **kw):
    "Run the real console entry point in a fresh process (one thread, so runs are comparable bit for bit)."
    e = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', **(env or {})}
    return subprocess.Popen([sys.executable, '-m', 'sgxl', *args], env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def rows(run_dir):
    "stats.jsonl without the timing columns."
    return [{k: v for k, v in r.items() if not k.startswith('timing/')} for r in StatsLog(run_dir, tensorboard=False).read()]


@pytest.mark.parametrize('cfg', RUNGS)
def test_every_rung_trains_through_sgxl_train(cfg, tmp_path, capsys):
    extra = ['--set', 'stage_kimg=0.008'] if cfg in 'DEF' else []          # D..F also grow 16 -> 32
    code = train_main(['--cfg', cfg, *TINY, '--kimg', '0.016', '--snap', '0.008', '--outdir', str(tmp_path), *extra])
    out = capsys.readouterr()
    assert code == 0, out.err
    run_dir = next(tmp_path.iterdir())
    assert f'run folder: {run_dir}' in out.out
    stats = rows(run_dir)
    assert stats and all(np.isfinite(v) for r in stats for k, v in r.items() if k.startswith('loss/'))
    G, meta = load_generator(run_dir)
    assert meta['config']['cfg'] == cfg and G.img_resolution == 32 and meta['kimg'] >= 0.016
    if cfg == 'F': assert any(r.get('loss/guidance', 0) > 0 for r in stats)   # guidance ran at 32x32


def test_sigkill_then_resume_continues_bit_for_bit(tmp_path):
    args = ['--cfg', 'A', *TINY, '--kimg', '0.032', '--snap', '0.008', '--seed', '3']
    whole = sgxl('train', *args, '--outdir', str(tmp_path / 'whole'))
    killed = sgxl('train', *args, '--outdir', str(tmp_path / 'killed'))
    deadline = time.time() + 600
    run = None
    while time.time() < deadline and killed.poll() is None:                  # wait for the second checkpoint
        run = next((tmp_path / 'killed').glob('*'), None)
        if run is not None and len(list_checkpoints(run)) >= 2: break
        time.sleep(0.2)
    assert killed.poll() is None, f'the run ended before it could be killed:\n{killed.stdout.read()}'
    killed.send_signal(signal.SIGKILL); killed.wait()
    assert latest_checkpoint(run) is not None
    resumed = sgxl('train', '--resume', str(run), '--quiet')
    assert resumed.wait(timeout=900) == 0, resumed.stdout.read()
    assert whole.wait(timeout=900) == 0, whole.stdout.read()
    a, b = rows(next((tmp_path / 'whole').iterdir())), rows(run)
    assert [r['step'] for r in a] == [r['step'] for r in b] == list(range(1, 9))
    assert a == b                                                           # every loss, to the last bit


def test_two_process_ddp_matches_one_process(tmp_path):
    "torchrun with 2 gloo processes of 4 images == one process of 8 images in chunks of 4."
    common = ['train', '--cfg', 'A', '--preset', 'tiny', '--data', 'shapes:num_images=40', '--batch', '8',
              '--batch-gpu', '4', '--kimg', '0.024', '--snap', '0.024', '--quiet', '--device', 'cpu']
    one = sgxl(*common, '--outdir', str(tmp_path / 'one'))
    two = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                            '-m', 'sgxl', *common, '--outdir', str(tmp_path / 'two')],
                           env={**os.environ, 'OMP_NUM_THREADS': '1'}, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    assert one.wait(timeout=900) == 0, one.stdout.read()
    assert two.wait(timeout=900) == 0, two.stdout.read()
    (run1,), (run2,) = list((tmp_path / 'one').iterdir()), list((tmp_path / 'two').iterdir())
    s1, m1 = load_checkpoint(latest_checkpoint(run1))
    s2, m2 = load_checkpoint(latest_checkpoint(run2))
    assert m1['step'] == m2['step'] == 3 and m2['world_size'] == 2
    for net in ('G', 'D', 'G_ema'):
        for k, v in s1['rung'][net].items():
            assert torch.allclose(v.float(), s2['rung'][net][k].float(), rtol=1e-4, atol=1e-5), (net, k)


def test_corrupted_checkpoint_is_a_clear_error_and_the_previous_is_intact(tmp_path, capsys):
    assert train_main(['--cfg', 'A', *TINY, '--kimg', '0.016', '--snap', '0.008', '--outdir', str(tmp_path)]) == 0
    run = next(tmp_path.iterdir())
    previous, latest = list_checkpoints(run)[-2:]
    tensors = latest.with_name(latest.name.replace('.json', '.safetensors'))
    tensors.write_bytes(tensors.read_bytes()[:-100])                       # a truncated write
    capsys.readouterr()
    assert train_main(['--resume', str(run), '--quiet']) == 1
    err = capsys.readouterr().err
    assert 'corrupted' in err and previous.name in err                      # names the fix
    state, meta = load_checkpoint(previous)                                 # untouched, loads
    assert meta['step'] == 2
    with pytest.raises(CheckpointError, match='corrupted'): load_checkpoint(latest)


def test_guidance_lowers_the_classifier_loss_on_G_output(tmp_path):
    """Rung F at 32x32 (stem at 32: one stage), 10 steps with and without guidance; the same probe scores both
    generators on the same latents and classes. (Measured: cross-entropy about 6.5 without, 5.6 with.)"""
    from sgxl.guidance import make_classifier
    import torch.nn.functional as F
    losses = {}
    for w in (0.0, 8.0):
        cfg = make_config('F', 'tiny', data='shapes:num_images=400', batch=8, kimg=0.08, snap_kimg=0.08,
                          stem_resolution=32, cls_weight=w)
        t = Trainer(cfg, outdir=tmp_path / f'w{w}', progress=False)
        t.run()
        if w == 8.0: classifier = t.rung.classifier
        losses[w] = t.rung.G
    g = torch.Generator().manual_seed(0)
    z, c = torch.randn(64, losses[0.0].z_dim, generator=g), torch.arange(64) % 10
    with torch.no_grad():
        ce = {w: F.cross_entropy(classifier(G(z, c)), c).item() for w, G in losses.items()}
    assert ce[8.0] < ce[0.0] - 0.1, ce


def test_metrics_during_training_and_sgxl_metrics_on_the_run(tmp_path, capsys):
    "cfg.metrics are computed at each snapshot (stats.jsonl, checkpoint metadata); `sgxl metrics` reads the run."
    from sgxl.evaluate import metrics_main
    assert train_main(['--cfg', 'A', *TINY, '--kimg', '0.008', '--snap', '0.008', '--metrics', 'eqt4_int',
                       '--outdir', str(tmp_path)]) == 0
    run = next(tmp_path.iterdir())
    logged = [r for r in StatsLog(run, tensorboard=False).read() if 'metrics/eqt4_int' in r]
    assert logged and np.isfinite(logged[0]['metrics/eqt4_int'])
    assert load_checkpoint(latest_checkpoint(run))[1]['metrics']['eqt4_int'] == logged[0]['metrics/eqt4_int']
    capsys.readouterr()
    assert metrics_main(['--network', str(run), '--metrics', 'eqt4_int,rfid8', '--device', 'cpu', '--batch', '8']) == 0
    out = capsys.readouterr().out
    saved = json.loads((run / 'metrics.json').read_text())
    assert saved['data'] == 'shapes:num_images=40' and np.isfinite(saved['metrics']['rfid8']) and 'rfid8' in out


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


@cuda_only
def test_rng_state_round_trips_through_the_gpu():
    "A checkpoint loaded onto the GPU hands set_rng_state CUDA tensors, nested in lists."
    from sgxl.training import rng_state, set_rng_state
    def to_cuda(v):
        if isinstance(v, torch.Tensor): return v.cuda()
        return [to_cuda(x) for x in v] if isinstance(v, list) else v
    state = rng_state()
    want = (np.random.rand(3), torch.rand(3), torch.rand(3, device='cuda'))
    set_rng_state({k: to_cuda(v) for k, v in state.items()})
    got = (np.random.rand(3), torch.rand(3), torch.rand(3, device='cuda'))
    assert np.array_equal(want[0], got[0]) and torch.equal(want[1], got[1]) and torch.equal(want[2], got[2])


@pytest.mark.parametrize('device', ['cpu', pytest.param('cuda', marks=cuda_only)])
def test_resume_with_kimg_trains_longer_and_other_changes_are_refused(device, tmp_path, capsys):
    assert train_main(['--cfg', 'A', *TINY, '--kimg', '0.008', '--snap', '0.008', '--outdir', str(tmp_path),
                       '--device', device]) == 0
    run = next(tmp_path.iterdir())
    assert [r['step'] for r in rows(run)] == [1, 2]                        # 8 images at batch 4
    capsys.readouterr()
    assert train_main(['--resume', str(run), '--batch', '8', '--seed', '1', '--quiet']) == 1
    assert '--batch, --seed cannot be given with it' in capsys.readouterr().err
    assert train_main(['--resume', str(run), '--kimg', '0.016', '--quiet', '--device', device]) == 0
    _, meta = load_generator(run)
    assert meta['kimg'] >= 0.016 and meta['config']['kimg'] == 0.016      # the new length is the run's now
    assert [r['step'] for r in rows(run)] == [1, 2, 3, 4]


def test_the_demo_is_rung_b_on_the_easy_shapes_with_its_own_settings(capsys):
    "`sgxl train` with no arguments: DEMO_SETTINGS over rung B tiny; any rung, data, preset or resolution leaves them."
    from sgxl.training import DEMO_RUNG, DEMO_SETTINGS
    assert train_main(['--dry-run']) == 0
    demo = json.loads(capsys.readouterr().out)
    assert demo['cfg'] == DEMO_RUNG == 'B' and demo['preset'] == 'tiny' and demo['data'] == 'shapes:easy=1'
    assert all(demo[k] == v for k, v in DEMO_SETTINGS.items())
    assert demo['blur_fade_kimg'] >= demo['kimg'] > demo['snap_kimg']     # blur over the whole run; a grid on the way
    assert train_main(['--kimg', '2', '--seed', '3', '--dry-run']) == 0   # bookkeeping options keep the demo
    short = json.loads(capsys.readouterr().out)
    assert short['cfg'] == 'B' and short['kimg'] == 2 and short['seed'] == 3 and short['g_lr'] == DEMO_SETTINGS['g_lr']
    assert train_main(['--cfg', 'B', '--preset', 'tiny', '--dry-run']) == 0   # a rung named: the tiny preset as is
    named = json.loads(capsys.readouterr().out)
    assert named == json.loads(make_config('B', 'tiny').to_json())


def test_mirror_adds_x_flipped_reals(tmp_path, capsys):
    "--mirror (a Config field and a `sgxl train` option): every real image also seen mirrored left to right."
    assert train_main(['--cfg', 'B', *TINY, '--mirror', '--dry-run']) == 0
    assert json.loads(capsys.readouterr().out)['mirror'] is True
    assert make_config('B', 'tiny').mirror is False                        # off unless asked for
    t = Trainer(make_config('A', 'tiny', data='shapes:num_images=40', batch=4, mirror=True), outdir=tmp_path,
                progress=False)
    assert len(t.dataset) == 80 and torch.equal(t.dataset[40 + 3][0], t.dataset[3][0].flip(-1))
    assert train_main(['--resume', str(tmp_path), '--mirror', '--quiet']) == 1   # a resumed run keeps its data
    assert '--mirror cannot be given' in capsys.readouterr().err


def test_batch_per_stage_and_resume_into_a_stage_with_its_own_batch(tmp_path):
    "stage_batch=(8,): the 16x16 stage trains with batch 8, the 32x32 one with batch 4; a resume takes each stage's."
    cfg = make_config('D', 'tiny', data='shapes:num_images=40', batch=4, stage_batch=(8,), kimg=0.032,
                      snap_kimg=0.008, stage_kimg=0.016)
    t = Trainer(cfg, outdir=tmp_path, progress=False)
    assert t.loader.batch == 8 and t.batch_now() == (8, None)
    t.run(max_steps=2)                                                      # 16 images: the stem's stage ends
    assert t.rung.stage == 1 and t.loader.batch == 4 and t.rung.nimg == 16
    first, grown = list_checkpoints(t.run_dir)[:2]                          # step 1 (stage 0), step 2 (grown)
    r = Trainer(None, resume=first, progress=False)                         # resume inside stage 0 ...
    assert r.rung.stage == 0 and r.loader.batch == 8
    r.run(max_steps=1)                                                      # ... and continue into stage 1
    assert r.rung.stage == 1 and r.loader.batch == 4 and r.rung.nimg == 16
    r2 = Trainer(None, resume=grown, progress=False)                        # resume in stage 1: its own batch
    assert r2.rung.stage == 1 and r2.loader.batch == 4 and r2.rung.cfg.batch == 4
    r2.run(max_steps=1)
    assert r2.rung.nimg == 20 and json.loads((t.run_dir / 'config.json').read_text())['stage_batch'] == [8]


def _ddp_worker(rank, world, port, out_dir):
    import os
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    torch.set_num_threads(1)
    seed_everything(0)                                     # same weights and latent stream on every rank
    rung = training_rung(RungA)(make_config('A', 'tiny', c_dim=2, batch=4, r1_interval=2), 'cpu', rank=rank, world=world)
    g = torch.Generator().manual_seed(10 + rank)           # different reals per rank
    reals, labels = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.tensor([0, 1])
    stats = [rung.step(reals, labels, i) for i in range(3)]  # R1 at steps 0 and 2
    flat = torch.cat([t.detach().flatten().float() for m in (rung.G, rung.D, rung.G_ema)
                      for t in [*m.parameters(), *m.buffers()]])
    torch.save({'params': flat, 'stats': stats, 'nimg': rung.nimg}, f'{out_dir}/rank{rank}.pt')
    dist.destroy_process_group()


def test_ddp_two_processes_stay_in_sync(tmp_path):
    "RungA with DistributedStep across 2 gloo CPU processes: weights, buffers and the EMA stay identical on both ranks."
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pt', weights_only=False) for r in (0, 1))
    assert torch.equal(r0['params'], r1['params']) and r0['nimg'] == r1['nimg'] == 3 * 2 * 2   # all ranks' images
    assert r0['stats'] != r1['stats'] and 'reg/r1' in r0['stats'][2]      # the ranks saw different data

def test_rung_a_stays_plain_and_the_mixin_changes_only_how_a_step_is_computed():
    "RungA (04) has no training-loop machinery after sgxl.training is imported; one process, one chunk: same bits."
    import inspect
    from sgxl.baseline import RungA
    assert not any(hasattr(RungA, a) for a in ('autocast', 'scaler', 'accumulate', 'scalers'))
    assert not {'rank', 'world', 'batch_gpu'} & (set(inspect.signature(RungA).parameters)
                                                   | set(inspect.signature(RungA.step).parameters))
    cfg = make_config('A', 'tiny', c_dim=2, batch=4, r1_interval=2, style_mixing=0.9)
    g = torch.Generator().manual_seed(4)
    reals, labels = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, torch.tensor([0, 1, 1, 0])
    runs = []
    for cls in (RungA, training_rung(RungA)):
        seed_everything(0)
        r = cls(cfg, 'cpu')
        stats = [r.step(reals, labels, i) for i in range(3)]
        runs.append((stats, r.state_dict()))
    (s_plain, sd_plain), (s_dist, sd_dist) = runs
    assert s_plain == s_dist and 'reg/r1' in s_plain[0]
    assert list(sd_dist) == ['G', 'G_ema', 'D', 'opt_G', 'opt_D', 'nimg', 'scalers', 'extra']   # the checkpoints' keys
    assert set(sd_plain) == set(sd_dist) - {'scalers'}
    for net in ('G', 'G_ema', 'D'):
        assert all(torch.equal(v, sd_dist[net][k]) for k, v in sd_plain[net].items()), net
    resumed = training_rung(RungA)(cfg, 'cpu')
    resumed.load_state_dict(sd_plain)                                      # a plain rung's state loads too
    assert resumed.nimg == 12


def test_every_rung_class_of_sgxl_train_is_the_rung_with_the_mixin():
    from sgxl.distributed import DistributedStep
    from sgxl.training import RUNG_CLASSES, rung_class
    for name, plain in RUNG_CLASSES.items():
        cls = rung_class(make_config(name, 'tiny'))
        assert cls.__mro__[:2] == (cls, DistributedStep) and cls.__mro__[2] is plain, name
