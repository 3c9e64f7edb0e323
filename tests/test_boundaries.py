"""Every rung trained through every boundary of its schedule in one short run: the lazy R1 interval, the start
of path length, the end of the blur fade, the stage switches 16 -> 32 -> 64 of D..F, guidance from 32x32 on,
snapshots with metrics and checkpoints, a resume across a stage switch. The sizes are made for the test (batch
4, boundaries one or two steps apart: a stage is 2 steps, the blur fades in 1, path length starts at step 2;
heads of 3 layers, since tiny's 2 are both critically sampled and a second switch would cut them), on the tiny
preset otherwise; each run asserts that its losses stay finite and that each boundary had its effect.
Then what `sgxl train` checks before its first step, a metric that fails at a snapshot, and the snapshot metrics
split over torchrun processes."""
import json

import numpy as np
import pytest
import torch

from sgxl.core import make_config
from sgxl.checkpoint import build_generator, list_checkpoints, load_checkpoint
from sgxl.training import StatsLog, Trainer, check_before_training, train_main

DATA = 'shapes:num_images=40'
STEP = 0.004                                       # kimg per step at batch 4
METRIC = 'rfid8'                                   # a snapshot metric that needs no weight file


def train(tmp_path, cfg: str, max_steps: int | None = None, **overrides):
    "A Trainer for rung `cfg` (tiny, batch 4, rFID at each snapshot) with `overrides`, run; returns (trainer, rows)."
    c = make_config(cfg, 'tiny', **{**dict(data=DATA, batch=4, workers=0, metrics=(METRIC,)), **overrides})
    t = Trainer(c, outdir=tmp_path, device='cpu', progress=False, keep=100)
    t.run(max_steps)
    return t, StatsLog(t.run_dir, tensorboard=False).read()


def steps(rows) -> list[dict]:
    "The training rows of stats.jsonl (one per step here), without the snapshot rows."
    return [r for r in rows if 'loss/G' in r]


def has(rows, key) -> list[bool]: return [key in r for r in steps(rows)]


def assert_finite(rows):
    vals = {k: v for r in steps(rows) for k, v in r.items() if k.startswith(('loss/', 'reg/', 'D/'))}
    assert vals and all(np.isfinite(v) for r in steps(rows) for k, v in r.items()
                        if k.startswith(('loss/', 'reg/', 'D/'))), vals


def assert_snapshots(t, rows, n: int):
    "n snapshots, each with a finite metric in stats.jsonl and in its checkpoint's metadata."
    logged = [r[f'metrics/{METRIC}'] for r in rows if f'metrics/{METRIC}' in r]
    assert len(logged) == n and all(np.isfinite(logged)), logged
    metas = [load_checkpoint(p)[1] for p in list_checkpoints(t.run_dir)]
    assert all(np.isfinite(m['metrics'][METRIC]) for m in metas)


def test_rung_a_lazy_r1_and_snapshots(tmp_path):
    "R1 every 4th step (steps 0 and 4 of 6); a snapshot with rFID and a checkpoint every 2 steps."
    t, rows = train(tmp_path, 'A', kimg=6 * STEP, snap_kimg=2 * STEP, r1_gamma=1.0, r1_interval=4)
    assert_finite(rows)
    assert has(rows, 'reg/r1') == [True, False, False, False, True, False]
    assert_snapshots(t, rows, 3)
    assert [load_checkpoint(p)[1]['step'] for p in list_checkpoints(t.run_dir)] == [2, 4, 6]


@pytest.mark.parametrize('cfg', ['B', 'C'])
def test_rungs_b_c_path_length_starts_and_blur_fades(cfg, tmp_path):
    "Path length from 8 images on, every other step (steps 2, 4); the blur fades to 0 over 12 images (steps 0..2)."
    t, rows = train(tmp_path, cfg, kimg=6 * STEP, snap_kimg=3 * STEP, pl_start_kimg=2 * STEP, pl_interval=2,
                    blur_fade_kimg=3 * STEP)
    assert_finite(rows)
    assert has(rows, 'reg/pl') == [False, False, True, False, True, False]
    sigma = [r['D/blur_sigma'] for r in steps(rows)]
    assert sigma[0] == t.cfg.blur_sigma and sigma[0] > sigma[1] > sigma[2] > 0 and sigma[3:] == [0, 0, 0], sigma
    assert t.rung.pl_mean > 0
    assert_snapshots(t, rows, 2)


def frozen_keys(G) -> set[str]:
    "The names of the parameters of G's frozen modules (buffers such as w_avg may keep tracking, as released)."
    frozen = {id(m) for m in G.frozen_modules()}
    prefixes = [name + '.' for name, m in G.named_modules() if id(m) in frozen]
    return {k for k, _ in G.named_parameters() if any(k.startswith(p) for p in prefixes)}


def stage_G(t, state, meta):
    "The generator of a checkpoint's stage with its weights (G, not the EMA)."
    G = build_generator(t.cfg, t.cfg.c_dim, meta['stage'])
    G.load_state_dict(state['rung']['G'])
    return G


def differs(a: dict, b: dict, keys) -> bool: return any(not torch.equal(a[k], b[k]) for k in keys)
def same(a: dict, b: dict, keys) -> bool: return all(torch.equal(a[k], b[k]) for k in keys)


def check_progressive_run(t, rows):
    """Stages 16 -> 32 -> 64, 2 steps each. Path length on the stem's second step only; the blur restarts with each
    stage's D and is 0 on its second step; after each switch the frozen part of G (and D's feature networks) stays
    bit-identical and the new head changes; rFID at each snapshot, a checkpoint at each switch."""
    assert_finite(rows)
    assert t.rung.stage == 2 and t.rung.resolution == 64 and t.rung.G.resolutions == [16, 32, 64]
    assert has(rows, 'reg/pl') == [False, True, False, False, False, False]
    assert [r['D/blur_sigma'] > 0 for r in steps(rows)] == [True, False] * 3
    assert_snapshots(t, rows, 3)
    (s1, m1), (s2, m2), (s3, m3) = [load_checkpoint(p) for p in list_checkpoints(t.run_dir)]
    assert [m['stage'] for m in (m1, m2, m3)] == [1, 2, 2] and [m['step'] for m in (m1, m2, m3)] == [2, 4, 6]
    G1, G2 = stage_G(t, s1, m1), stage_G(t, s2, m2)
    g1, g2, g3 = s1['rung']['G'], s2['rung']['G'], s3['rung']['G']
    stem, head1 = frozen_keys(G1), frozen_keys(G2) - frozen_keys(G1)    # head1: stage 1's head, kept by stage 2
    assert stem and head1 and head1.isdisjoint(stem)
    assert same(g1, g2, stem) and same(g1, g3, stem)                    # the stem: untouched by stages 1 and 2
    assert differs(g1, g2, head1) and same(g2, g3, head1)               # stage 1's head trained, then froze
    head2 = set(g3) - frozen_keys(G2)
    assert differs(g2, g3, [k for k in head2 if g3[k].is_floating_point()])   # stage 2's head trains
    d1, d3 = s1['rung']['D'], s3['rung']['D']
    assert same(d1, d3, [k for k in d1 if k.startswith('feature_nets.')])    # D's feature networks never move


def test_rung_d_through_two_switches_and_resume_across_one(tmp_path):
    """Rung D 16 -> 32 -> 64 (and lazy R1 on the projected D, whose feature networks are frozen); a run stopped in
    stage 1 and resumed crosses the second switch to the same result, bit for bit."""
    kw = dict(resolution=64, head_layers=3, kimg=6 * STEP, snap_kimg=2 * STEP, stage_kimg=2 * STEP,
              pl_start_kimg=STEP, pl_interval=1, blur_fade_kimg=STEP, r1_gamma=1.0, r1_interval=3)
    t, rows = train(tmp_path / 'whole', 'D', **kw)
    check_progressive_run(t, rows)
    assert has(rows, 'reg/r1') == [True, False, False, True, False, False]
    stopped, _ = train(tmp_path / 'resumed', 'D', max_steps=3, **kw)      # stops in stage 1, one step past the switch
    assert stopped.rung.stage == 1 and stopped.step_index == 3
    resumed = Trainer(None, resume=stopped.run_dir, device='cpu', progress=False, keep=100)
    assert resumed.rung.stage == 1 and resumed.step_index == 3
    resumed.run()
    again = StatsLog(resumed.run_dir, tensorboard=False).read()
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith('timing/')} for r in rs]
    assert strip(steps(again)) == strip(steps(rows))                    # every loss, to the last bit
    metric = lambda rs, step: [r[f'metrics/{METRIC}'] for r in rs if r['step'] == step and f'metrics/{METRIC}' in r]
    assert metric(again, 6) == metric(rows, 6) != []                    # and the last snapshot's metric
    for k, v in t.rung.G_ema.state_dict().items(): assert torch.equal(v, resumed.rung.G_ema.state_dict()[k]), k


@pytest.mark.parametrize('cfg', ['E', 'F'])
def test_rungs_e_f_through_two_switches(cfg, tmp_path):
    "Rungs E (lite0 + DeiT) and F (+ guidance) 16 -> 32 -> 64; F's guidance term is 0 at 16x16 and on from 32x32."
    t, rows = train(tmp_path, cfg, resolution=64, head_layers=3, kimg=6 * STEP, snap_kimg=2 * STEP,
                    stage_kimg=2 * STEP, pl_start_kimg=STEP, pl_interval=1, blur_fade_kimg=STEP)
    assert len(t.rung.D.feature_nets) == 2
    check_progressive_run(t, rows)
    if cfg == 'F':
        guide = [r['loss/guidance'] for r in steps(rows)]
        assert guide[:2] == [0, 0] and all(g > 0 for g in guide[2:]), guide


def test_a_stage_that_cannot_be_built_is_an_error_before_the_first_step(tmp_path):
    "Tiny's heads (2 layers, both critically sampled) cannot grow twice: 64x64 is refused at start, not at 32x32."
    with pytest.raises(ValueError, match='head_layers=2 at 32x32'):
        Trainer(make_config('D', 'tiny', data=DATA, batch=4, resolution=64), outdir=tmp_path, device='cpu')
    assert not any(tmp_path.iterdir())                                   # no run folder


def test_path_length_runs_on_the_stem_and_not_in_a_head_stage(tmp_path):
    """Path length due every other step from the start: it runs at 16x16 and not after the switch to 32x32,
    where the mapping network is frozen (this crashed: 'One of the differentiated Tensors does not require grad')."""
    t, rows = train(tmp_path, 'D', kimg=4 * STEP, snap_kimg=2 * STEP, stage_kimg=2 * STEP, pl_start_kimg=0.0,
                    pl_interval=2, metrics=())
    assert t.rung.stage == 1 and t.rung.kimg >= 4 * STEP
    assert_finite(rows)
    assert has(rows, 'reg/pl') == [True, False, False, False]          # step 2 is due, but in a head stage
    assert not t.rung.g_reg_active() and t.rung.opt_G.param_groups[0]['lr'] == t.cfg.g_lr   # head: plain Adam


# --- fail before training, not after it ------------------------------------------------------------------------

TINY_A = ['--cfg', 'A', '--preset', 'tiny', '--data', DATA, '--batch', '4', '--quiet']


def test_a_missing_inception_file_is_an_error_before_the_first_step(tmp_path, monkeypatch, capsys):
    for var, sub in (('SGXL_WEIGHTS_DIR', 'weights'), ('TORCH_HOME', 'torch'), ('HOME', 'home')):
        monkeypatch.setenv(var, str(tmp_path / sub))                      # no weight file anywhere
    code = train_main([*TINY_A, '--kimg', '0.008', '--metrics', 'fid50k', '--outdir', str(tmp_path / 'runs')])
    assert code == 1
    assert 'Inception-v3 (FID) weights not found' in capsys.readouterr().err
    assert not (tmp_path / 'runs').exists()                               # nothing trained, no run folder
    assert train_main([*TINY_A, '--metrics', 'fid50k,fd2k', '--outdir', str(tmp_path / 'runs')]) == 1
    assert "unknown metric 'fd2k'" in capsys.readouterr().err


def test_a_metric_that_raises_at_a_snapshot_keeps_that_snapshots_checkpoint(tmp_path, monkeypatch, capsys):
    import sgxl.training
    def broken(*args, **kwargs): raise RuntimeError('the metric broke')
    monkeypatch.setattr(sgxl.training, 'compute_metrics', broken)          # the name the loop calls
    code = train_main([*TINY_A, '--kimg', '0.016', '--snap', '0.008', '--metrics', 'rfid8',
                       '--outdir', str(tmp_path)])
    err = capsys.readouterr().err
    run = next(tmp_path.iterdir())
    assert code == 1 and 'the metric broke' in err and f'--resume {run}' in err
    (ckpt,) = list_checkpoints(run)                                       # the first snapshot's, complete
    state, meta = load_checkpoint(ckpt)
    assert meta['step'] == 2 and state['rung']['nimg'] == 8 and (run / 'samples-000000002.png').is_file()


def test_a_progressive_rung_that_could_never_grow_is_refused_at_start(tmp_path, capsys):
    "stage_kimg=0 grows when FID stalls; with no FID metric it would stay at 16x16 for ever."
    code = train_main(['--cfg', 'D', '--preset', 'tiny', '--data', DATA, '--metrics', 'none', '--set', 'stage_kimg=0',
                       '--quiet', '--outdir', str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and 'stage_kimg=0' in err and 'never leave its 16x16 stem' in err and '--set stage_kimg' in err
    check_before_training(make_config('D', 'tiny', stage_kimg=0, metrics=('rfid8',)))    # an FID to watch: fine
    check_before_training(make_config('D', 'tiny', stage_kimg=0, metrics=(), resolution=16))  # one stage: fine


# --- torchrun: the snapshot metrics split over the processes ---------------------------------------------------

METRICS_SCRIPT = '''
import json, sys
from sgxl.core import make_config, seed_everything
from sgxl.data import load
from sgxl.evaluate import compute_metrics
from sgxl.stylegan3 import Generator
from sgxl.distributed import init_distributed

rank, world, _ = init_distributed('cpu')
seed_everything(0)
G = Generator.from_config(make_config('A', 'tiny'), 10).eval()
data = load('shapes:num_images=40', resolution=32)
out = compute_metrics(['rfid16', 'kid16', 'is16', 'eqt16_int'], G, data, batch=8, device='cpu', weights=sys.argv[2],
                      cache_dir=f'{sys.argv[1]}-cache', rank=rank, world=world)
json.dump(out, open(f'{sys.argv[1]}.{rank}', 'w'))
'''


def test_metrics_split_over_two_processes_equal_one_process(tmp_path):
    """Each of 2 gloo processes renders every other batch; rank 0 gathers and scores. The results equal one
    process's: bit for bit where the vectors are gathered (KID, IS) and for EQ-T, to rounding of the float64
    sums for rFID. (KID and IS run on a stand-in Inception file: random weights of the FID network's shapes.)"""
    import os, subprocess, sys
    from sgxl.metrics import INCEPTION_FILES, random_inception_state_dict
    weights = tmp_path / INCEPTION_FILES[0]
    torch.save(random_inception_state_dict(seed=1), weights)
    script = tmp_path / 'metrics.py'
    script.write_text(METRICS_SCRIPT)
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    run = lambda *launch, out: subprocess.Popen([sys.executable, *launch, str(script), str(tmp_path / out), str(weights)],
                                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    one = run(out='one')
    two = run('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', out='two')
    assert one.wait(timeout=900) == 0, one.stdout.read()
    assert two.wait(timeout=900) == 0, two.stdout.read()
    read = lambda name: json.loads((tmp_path / name).read_text())
    single, split, other = read('one.0'), read('two.0'), read('two.1')
    assert split == other                                                 # every rank returns the results
    assert list(split) == list(single) == ['rfid16', 'kid16', 'is16_mean', 'is16_std', 'eqt16_int']
    for k in ('kid16', 'is16_mean', 'is16_std', 'eqt16_int'): assert split[k] == single[k], k
    assert split['rfid16'] == pytest.approx(single['rfid16'], rel=1e-9), (split, single)


FAILING_METRIC_SCRIPT = '''
import sys
import sgxl.evaluate as E
from sgxl.core import make_config
from sgxl.data import load
from sgxl.stylegan3 import Generator
from sgxl.distributed import init_distributed

rank, world, _ = init_distributed('cpu')
def no_classifier(*args, **kwargs): raise FileNotFoundError('the domain classifier cache is unreadable (test)')
if rank == 0: E.domain_metrics = no_classifier                     # rank 0 alone runs the domain metrics
G = Generator.from_config(make_config('A', 'tiny'), 10).eval()
try:
    E.compute_metrics(['dacc16'], G, load('shapes:num_images=40', resolution=32), batch=8, device='cpu',
                      rank=rank, world=world)
except Exception as e:
    print(f'rank {rank} stopped: {type(e).__name__}: {e}', flush=True)
    sys.exit(3)
print(f'rank {rank} finished', flush=True)
'''


def test_a_metric_that_fails_on_rank_0_stops_every_process(tmp_path):
    """The domain metrics run on rank 0 alone. When they fail there, the other torchrun process must stop with a
    message naming rank 0's failure. Before `agreed` it waited in the broadcast of the results for as long as rank 0
    lived (for ever where rank 0 catches the error and goes on), then stopped with gloo's 'Connection closed by
    peer', which names neither the metric nor the cause."""
    import os, signal, subprocess, sys
    script = tmp_path / 'failing.py'
    script.write_text(FAILING_METRIC_SCRIPT)
    run = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                            str(script)], env={**os.environ, 'OMP_NUM_THREADS': '1'}, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = run.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        pytest.fail('a metric that failed on rank 0 left torchrun hanging: ' + run.communicate()[0][-2000:])
    assert run.returncode != 0, out
    assert 'rank 0 stopped: FileNotFoundError: the domain classifier cache is unreadable (test)' in out, out
    assert 'rank 1 stopped: RuntimeError: the domain metrics failed on rank 0 (FileNotFoundError: the domain ' in out, out
    assert 'finished' not in out, out
