"""Every rung trained through every boundary of its schedule in one short run: the lazy R1 interval, the start
of path length, the end of the blur fade, the stage switches 16 -> 32 -> 64 of D..F, guidance from 32x32 on,
snapshots with metrics and checkpoints, a resume across a stage switch. Sizes made for the test (a few images
per stage), so each boundary is a step or two away; the tiny preset otherwise."""
import numpy as np
import pytest

from sgxl.core import make_config
from sgxl.training import StatsLog, Trainer

DATA = 'shapes:num_images=40'


def train(tmp_path, cfg: str, **overrides):
    "A Trainer for rung `cfg` (tiny, batch 4) with `overrides`, run to its end; returns (trainer, stats rows)."
    c = make_config(cfg, 'tiny', data=DATA, batch=4, workers=0, **overrides)
    t = Trainer(c, outdir=tmp_path, device='cpu', progress=False)
    t.run()
    return t, StatsLog(t.run_dir, tensorboard=False).read()


def test_path_length_runs_on_the_stem_and_not_in_a_head_stage(tmp_path):
    """Path length due every other step from the start: it runs at 16x16 and not after the switch to 32x32,
    where the mapping network is frozen (this crashed: 'One of the differentiated Tensors does not require grad')."""
    t, rows = train(tmp_path, 'D', kimg=0.016, snap_kimg=0.008, stage_kimg=0.008, pl_start_kimg=0.0, pl_interval=2)
    assert t.rung.stage == 1 and t.rung.kimg >= 0.016
    assert all(np.isfinite(v) for r in rows for k, v in r.items() if k.startswith(('loss/', 'reg/')))
    stem = [r for r in rows if r['kimg'] <= 0.008]                           # 2 steps of 4 images, then the switch
    head = [r for r in rows if r['kimg'] > 0.008]
    assert len(stem) == len(head) == 2
    assert any('reg/pl' in r for r in stem) and not any('reg/pl' in r for r in head)
    assert not t.rung.g_reg_active() and t.rung.opt_G.param_groups[0]['lr'] == t.cfg.g_lr   # head: plain Adam
