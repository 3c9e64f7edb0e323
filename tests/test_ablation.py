"""`sgxl ablate` as users run it: a 2-rung ladder on the tiny preset (one rung interrupted first, then resumed),
the table files complete and finite, a rerun that trains and scores nothing, FID/IS/precision/recall in the table
when weight files are given, and clear errors for bad input."""
import csv
import json
import math
import os
import subprocess
import sys

import pytest

from sgxl.ablation import (Ablation, ablate_main, ablate_parser, ablation_from_args, ablation_metrics,
                           is_finished, plan_metrics, run_ablation, train_rung)
from sgxl.metrics import INCEPTION_FILES, VGG16_FILES
from sgxl.checkpoint import list_checkpoints
from sgxl.training import StatsLog

METRICS = ['rfid8', 'eqt4_int']


def args_for(outdir, *extra):
    "Rungs A (fixed size) and D (grows 16 -> 32 after 12 images): 4 steps of 4 images, snapshots every 8."
    return ['--cfgs', 'A,D', '--data', 'shapes:num_images=40', '--preset', 'tiny', '--kimg', '0.016', '--batch', '4',
            '--snap', '0.008', '--set', 'stage_kimg=0.012', '--metrics', ','.join(METRICS), '--device', 'cpu',
            '--outdir', str(outdir), '--quiet', *extra]


def snapshot_files(outdir):
    "mtime of every checkpoint and evaluation cache under outdir/runs."
    return {p: p.stat().st_mtime_ns for p in (outdir / 'runs').rglob('*') if p.name.startswith(('ckpt-', 'ablation-evals'))}


def test_two_rung_ablation_resumes_tabulates_and_skips_on_rerun(tmp_path, capsys):
    out = tmp_path / 'abl'
    ab = ablation_from_args(ablate_parser().parse_args(args_for(out)))
    # 1. rung A stops after 2 of its 4 steps, as if interrupted
    run_a = train_rung(ab, 'A', max_steps=2, progress=False, log=lambda *a: None)
    assert not is_finished(run_a, ab.config('A')) and len(list_checkpoints(run_a)) == 1

    # 2. the ablation resumes A in the same folder, trains D, scores both, writes the table
    assert ablate_main(args_for(out)) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f'A: resuming {run_a.name} from ckpt-000000002.json' in printed and 'D: training 0.016 kimg' in printed
    runs = sorted(p.name for p in (out / 'runs').iterdir())
    assert len(runs) == 2 and runs[0] == run_a.name and '-D-' in runs[1]            # one folder per rung
    assert [r['step'] for r in StatsLog(run_a, tensorboard=False).read() if 'timing/sec_per_kimg' in r] == [1, 2, 3, 4]

    results = json.loads((out / 'results.json').read_text())
    rows = {r['rung']: r for r in results['rows']}
    assert list(rows) == ['A', 'D'] and results['metric_keys'] == METRICS
    for r in rows.values():
        assert r['kimg'] == 0.016 and r['resolution'] == 32
        for k in METRICS + ['wall_seconds', 'step_seconds', 'sec_per_kimg']:
            assert isinstance(r[k], float) and math.isfinite(r[k]), (r['rung'], k, r.get(k))
    d_points = results['curves']['D']
    assert [p['resolution'] for p in d_points] == [16, 32, 32]                      # the stem, scored upsampled
    assert all(math.isfinite(p[k]) for p in d_points for k in METRICS)
    assert results['skipped'] == {} and results['settings']['kimg'] == 0.016

    with open(out / 'table.csv') as f: table = list(csv.DictReader(f))
    assert [r['rung'] for r in table] == ['A', 'D']
    assert all(math.isfinite(float(r[k])) for r in table for k in METRICS)
    md = (out / 'table.md').read_text()
    assert 'rFID ↓ (8)' in md and 'EQ-T dB ↑ (4)' in md
    assert all(f'| {rung} | ' in md for rung in 'AD') and '—' not in md.split('\n\n')[0]   # no empty cell
    for png in ('curves.png', 'samples.png'): assert (out / png).stat().st_size > 1000

    # 3. the same command again: nothing trained, nothing scored, the same table
    before = snapshot_files(out)
    assert ablate_main(args_for(out)) == 0
    printed = capsys.readouterr().out
    assert 'A: finished before' in printed and 'D: finished before' in printed and 'ckpt-' not in printed
    assert snapshot_files(out) == before
    assert json.loads((out / 'results.json').read_text())['rows'] == results['rows']

    # 4. other settings into the same folder: an error naming the difference, nothing touched
    assert ablate_main(args_for(out, '--seed', '1')) == 1
    err = capsys.readouterr().err
    assert 'seed: 0 there, 1 now' in err and 'another --outdir' in err
    assert snapshot_files(out) == before


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    "A home without any weight files, so the plan does not depend on this machine's caches."
    for var, sub in (('HOME', 'home'), ('TORCH_HOME', 'torch'), ('SGXL_WEIGHTS_DIR', 'weights')):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    return tmp_path / 'weights'


def test_metric_plan_follows_the_weight_files(no_weights):
    names, skipped = plan_metrics(ablation_metrics(64))
    assert names == ['rfid64', 'eqt64_int']
    assert sorted(skipped) == ['fid64', 'is64', 'pr64_3']
    assert INCEPTION_FILES[0] in skipped['fid64'] and VGG16_FILES[0] in skipped['pr64_3']
    (no_weights / INCEPTION_FILES[0]).touch()                                     # now the Inception file is there
    names, skipped = plan_metrics(ablation_metrics(64))
    assert names == ['rfid64', 'fid64', 'is64', 'eqt64_int'] and list(skipped) == ['pr64_3']
    (no_weights / VGG16_FILES[0]).touch()
    assert plan_metrics(ablation_metrics(50_000)) == (['rfid50k', 'fid50k', 'is50k', 'pr50k3', 'eqt50k_int'], {})


def test_training_metrics_without_weights_fail_before_training(no_weights, tmp_path):
    ab = Ablation(tmp_path / 'abl', cfgs='A', overrides={'metrics': ('fid50k',)}, metrics=METRICS)
    with pytest.raises(FileNotFoundError, match=INCEPTION_FILES[0]):
        run_ablation(ab, progress=False, log=lambda *a: None)
    assert not (tmp_path / 'abl' / 'runs').exists()                                # not one step was taken


@pytest.mark.parametrize('extra, message', [
    (['--cfgs', 'A,G'], 'give distinct rungs among A,B,C,D,E,F'),
    (['--cfgs', 'A,A'], 'give distinct rungs'),
    (['--metrics', 'fid8,nope'], "unknown metric 'nope'"),
    (['--num', '1'], 'at least 2 images'),
    (['--kimg', '0'], 'positive training length'),
    (['--set', 'nope=1'], 'unknown config field'),
])
def test_bad_input_is_a_clear_error(extra, message, tmp_path, capsys):
    assert ablate_main(['--outdir', str(tmp_path), '--quiet', *extra]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'runs').exists()


def test_console_script_lists_and_runs_ablate():
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    top = subprocess.run([sys.executable, '-m', 'sgxl', '--help'], capture_output=True, text=True, env=env, timeout=120)
    assert 'ablate' in top.stdout
    out = subprocess.run([sys.executable, '-m', 'sgxl', 'ablate', '--help'], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0 and '--cfgs' in out.stdout and 'resumes an interrupted one' in out.stdout


def test_weight_files_put_fid_is_and_precision_recall_in_the_table(tmp_path, monkeypatch, capsys):
    """With weight files present, the default metric set runs them all. The files here are stand-ins with random
    weights (the real ones cannot be downloaded in CI): this checks that the ablation finds them, scores with them
    and tabulates every metric, not what the numbers mean."""
    import torch
    import torchvision
    from sgxl.metrics import RFID_SEED, random_inception_state_dict
    given = tmp_path / 'given'                                       # passed with --weights-dir, searched first
    given.mkdir()
    monkeypatch.setenv('SGXL_WEIGHTS_DIR', str(given))               # (HOME stays: the compiled ops' cache is there)
    torch.save(random_inception_state_dict(RFID_SEED + 1), given / INCEPTION_FILES[0])   # not rFID's network
    torch.manual_seed(0)
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), given / VGG16_FILES[0])
    out = tmp_path / 'abl'
    argv = ['--cfgs', 'A', '--data', 'shapes:num_images=8', '--preset', 'tiny', '--kimg', '0.004', '--batch', '4',
            '--snap', '0.004', '--num', '4', '--weights-dir', str(given), '--device', 'cpu', '--outdir', str(out),
            '--quiet']                                               # one step, one checkpoint, 4 images per metric
    assert ablate_main(argv) == 0, capsys.readouterr().err
    results = json.loads((out / 'results.json').read_text())
    assert results['metrics'] == ablation_metrics(4) and results['skipped'] == {}
    keys = ['rfid4', 'fid4', 'is4_mean', 'is4_std', 'pr4_3_precision', 'pr4_3_recall', 'eqt4_int']
    assert results['metric_keys'] == keys
    (row,) = results['rows']
    assert all(isinstance(row[k], float) and math.isfinite(row[k]) for k in keys), row
    assert row['fid4'] != row['rfid4']                               # FID used the Inception file, not rFID's net
    assert 0 <= row['pr4_3_precision'] <= 1 and 0 <= row['pr4_3_recall'] <= 1
    assert row['is4_mean'] >= 1                                      # (exactly 1 below 20 images: 1 per split)
    md = (out / 'table.md').read_text()
    assert all(h in md for h in ('FID ↓ (4)', 'IS ↑ (4)', 'precision ↑ (4)', 'recall ↑ (4)'))
    assert 'skipped' not in md
