"""Does a generator learn `shapes` within the demo's budget? The demo's metrics over CPU time, per setup.

    python benchmarks/demo_learning.py --every-kimg 2 --kimg 12 --set seed=1         # the demo as `sgxl train` builds it
    python benchmarks/demo_learning.py --cfg F --no-demo --set stem_resolution=32 --set cls_weight=8 --budget 300
    python benchmarks/demo_learning.py --plain --budget 200 --batch 32               # a plain conditional GAN, for scale
    python benchmarks/demo_learning.py --pair sgxl,plain --data shapes:easy=1 --batch 16   # sgxl's G against the plain D

Issue 16 asks the demo (`sgxl train`, no arguments) to end within about 5 minutes on 2 CPU cores with at least
80% of its samples classified as their requested class by sgxl.domain's classifier (dacc) and a domain Frechet
distance (dfd) at most half of step 0's. This script trains one setup for --budget seconds of process CPU time
(robust to a shared machine; wall time is printed too), or up to --kimg, and prints dacc500, dfd500 and ddiv500
of the generator every --every CPU seconds (or every --every-kimg kimg), so setups can be compared by how far
they get per CPU second, and seeds of one setup by kimg (--set seed=N). --extra-ema 0.1,0.2 also keeps and scores
EMAs of G with other ramp-ups, beside the run's own, without changing the training:

- the sgxl path (default): the training step of the demo (`sgxl train` with no arguments: rung B, tiny,
  sgxl.training.DEMO_SETTINGS), or of rung --cfg with the demo's settings, or with --no-demo of rung --cfg at the
  plain tiny preset; then the --set changes. Built and fed as `sgxl train` builds it (`sgxl.training.Trainer`),
  scored on its EMA generator, as the demo scores;
- --plain: a small conventional conditional GAN (DCGAN-style generator with batch norm, a convolutional
  discriminator with a projection term, hinge loss, Adam 4e-4, betas (0.5, 0.99)): no sgxl network, only the
  same data and the same metric. It answers whether the target is within reach of any cheap GAN on this data;
- --pair G,D: one half of sgxl against one half of the plain GAN, in the plain GAN's loop (hinge loss, one D and
  one G step, no EMA, no regularisers), to find which half is slow. G: 'sgxl' (rung A's tiny generator with 4
  layers, margin 4, mapping lr x1, Adam 2e-3, betas (0, 0.99)) or 'plain'; D: 'plain' (with --d-cond), 'projected'
  (rung B's tiny projected D, lite0 at 32 px, no DiffAugment, Adam 2e-3, betas (0, 0.99), mean over patches) or
  'resnet' (rung A's tiny ResNet D, the plain D's optimiser). --d-cond sets how the plain D reads the label:
  'projection' (its own: psi(h) + e(y).h), 'scaled' (the projection term divided by sqrt(dim h)), 'sgxl' (as sgxl's
  discriminators read it: <W h, P norm(e(y))> / sqrt(M), no psi term) or 'sgxl+psi'.

Diagnostics of the sgxl path (each patches sgxl inside this process only, for the measurement; nothing here is a
feature of sgxl):
- --d-head psi: rung B's heads read the label as Miyato and Koyama's projection discriminator does, with an
  unconditional term, psi(h) + <phi(h), P e(c)> / sqrt(M) (sgxl's heads: the class term alone); 'psi-unscaled'
  without the 1 / sqrt(M);
- --mismatch W: a matching-aware D: real images with a wrong label (drawn uniformly among the others) as extra
  hinge negatives, weight W, beside the paper's loss;
- --equal-heads: every head of rung B's D counts equally in the loss (at 32 px lite0's four heads end at 25, 25,
  1 and 1 patches, so the two coarse heads, which see the whole shape, carry 2 of 52 shares; at the paper's 224 px
  every head ends at 4x4 patches): each head's patch logits are tiled to the largest head's count;
- --balanced-labels: the fakes' labels of each batch stratified (every class once before any twice), instead of
  drawn independently from the class frequencies;
- --patch-mean: each head's patch logits averaged before the hinge (one decision per head and image);
- --classes 0,1,2,4,5: the demo's data restricted to these shape classes (ids into sgxl.data.SHAPES_CLASSES),
  relabelled 0..K-1; the domain classifier is trained on the subset (its cache name says which);
- --probe: no training; how well a linear classifier reads the class of real images from the frozen feature
  network's four scales (global mean of each map, standardised), with D's input blur at sigma 0..4.
"""
import argparse
import copy
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from sgxl.core import make_config
from sgxl.evaluate import compute_metrics
from sgxl.baseline import ema_beta, update_ema

METRICS = ('dfd500', 'dacc500', 'ddiv500')


class PlainG(nn.Module):
    "z (N, 64) and labels (N,) -> images (N, 3, 32, 32): a linear layer to 4x4, three upsample-conv blocks."
    def __init__(self, classes: int, ch: int = 64, z_dim: int = 64):
        super().__init__()
        self.z_dim, self.c_dim, self.img_resolution, self.ch = z_dim, classes, 32, ch
        self.embed = nn.Embedding(classes, z_dim)
        self.fc = nn.Linear(2 * z_dim, 2 * ch * 16)
        block = lambda i, o: [nn.Upsample(scale_factor=2), nn.Conv2d(i, o, 3, 1, 1), nn.BatchNorm2d(o), nn.ReLU()]
        self.body = nn.Sequential(nn.BatchNorm2d(2 * ch), nn.ReLU(), *block(2 * ch, ch), *block(ch, ch // 2),
                                  *block(ch // 2, ch // 4), nn.Conv2d(ch // 4, 3, 3, 1, 1), nn.Tanh())

    def forward(self, z, c, truncation_psi: float = 1.0):
        y = c.argmax(1) if c.is_floating_point() else c                          # one-hot (N, K) or indices (N,)
        h = self.fc(torch.cat([z, self.embed(y)], 1)).view(-1, 2 * self.ch, 4, 4)   # (N, 2ch, 4, 4)
        return self.body(h)                                                     # (N, 3, 32, 32) in [-1, 1]


class PlainD(nn.Module):
    "images (N, 3, 32, 32), labels (N,) -> logits (N,): strided convs, a linear output plus a projection term."
    COND = ('projection', 'scaled', 'sgxl', 'sgxl+psi')

    def __init__(self, classes: int, ch: int = 64, cond: str = 'projection', cmap_dim: int = 64):
        super().__init__()
        act = lambda: nn.LeakyReLU(0.2)
        self.body = nn.Sequential(nn.Conv2d(3, ch // 4, 3, 2, 1), act(), nn.Conv2d(ch // 4, ch // 2, 3, 2, 1), act(),
                                  nn.Conv2d(ch // 2, ch, 3, 2, 1), act(), nn.Conv2d(ch, 2 * ch, 4), act(), nn.Flatten())
        self.cond = cond
        if cond in ('projection', 'scaled'):
            self.out, self.embed = nn.Linear(2 * ch, 1), nn.Embedding(classes, 2 * ch)
        else:                                                                   # sgxl's form: phi = W h, P e(y)
            self.phi, self.embed, self.proj = nn.Linear(2 * ch, cmap_dim), nn.Embedding(classes, 64), nn.Linear(64, cmap_dim)
            self.psi = nn.Linear(cmap_dim, 1) if cond == 'sgxl+psi' else None

    def forward(self, x, y):
        h = self.body(x)                                                        # (N, 2ch)
        if self.cond == 'projection': return self.out(h).squeeze(1) + (self.embed(y) * h).sum(1)   # $\psi(h) + e(y)^\top h$
        if self.cond == 'scaled': return self.out(h).squeeze(1) + (self.embed(y) * h).sum(1) / math.sqrt(h.shape[1])
        phi, e = self.phi(h), self.embed(y)                                     # (N, M), (N, 64)
        e = e * (e.square().mean(1, keepdim=True) + 1e-8).rsqrt()               # unit second moment
        logit = (phi * self.proj(e)).sum(1) / math.sqrt(phi.shape[1])           # $\langle \phi, P e \rangle / \sqrt M$
        return logit if self.psi is None else logit + self.psi(phi).squeeze(1)


class PlainGAN:
    "The plain conditional GAN's training step (hinge loss), with an EMA-free G scored in eval mode."
    def __init__(self, dataset, batch: int, lr: float = 4e-4):
        self.data = torch.stack([dataset[i][0] for i in range(len(dataset))]).float() / 127.5 - 1   # (N, 3, 32, 32)
        self.labels = torch.as_tensor(dataset.labels).long()
        self.G, self.D, self.batch, self.nimg = PlainG(dataset.num_classes), PlainD(dataset.num_classes), batch, 0
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr, betas=(0.5, 0.99))
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr, betas=(0.5, 0.99))

    def step(self) -> dict:
        idx = torch.randint(len(self.data), (self.batch,))
        real, y = self.data[idx], self.labels[idx]
        z, yf = torch.randn(self.batch, self.G.z_dim), torch.randint(self.G.c_dim, (self.batch,))
        fake = self.G(z, yf)
        loss_D = F.relu(1 - self.D(real, y)).mean() + F.relu(1 + self.D(fake.detach(), yf)).mean()
        self.opt_D.zero_grad(); loss_D.backward(); self.opt_D.step()
        loss_G = -self.D(fake, yf).mean()
        self.opt_G.zero_grad(); loss_G.backward(); self.opt_G.step()
        self.nimg += self.batch
        return {'loss/G': loss_G.item(), 'loss/D': loss_D.item()}

    def generator(self): return self.G.eval()
    def train(self): self.G.train()


class SgxlG(nn.Module):
    "sgxl's generator (rung A tiny, 4 layers, margin 4, mapping lr x1) with the plain G's call: (z, labels (N,))."
    def __init__(self, classes: int, **changes):
        super().__init__()
        from sgxl.stylegan3 import Generator
        cfg = make_config('A', 'tiny', **{**dict(num_layers=4, margin_size=4, mapping_lr_mult=1.0, blur_sigma=0, pl_weight=0), **changes})
        self.net, self.z_dim, self.c_dim, self.img_resolution = Generator.from_config(cfg, c_dim=classes), cfg.z_dim, classes, 32

    def forward(self, z, c, truncation_psi: float = 1.0):
        y = c if c.is_floating_point() else F.one_hot(c, self.c_dim).float()     # (N, K) one-hot
        return self.net(z, y)


def paired_gan(dataset, batch: int, g: str, d: str, d_cond: str = 'projection', g_changes: dict | None = None) -> PlainGAN:
    """The plain GAN's loop with generator `g` ('sgxl', 'plain') and discriminator `d` ('plain', 'projected', 'resnet');
    `g_changes`: config changes of the sgxl generator (--set)."""
    run, K = PlainGAN(dataset, batch), dataset.num_classes
    if g == 'sgxl':
        run.G = SgxlG(K, **(g_changes or {}))
        run.opt_G = torch.optim.Adam(run.G.parameters(), 2e-3, betas=(0.0, 0.99))
    onehot = lambda y: F.one_hot(y, K).float()
    if d == 'plain':
        run.D = PlainD(K, cond=d_cond)
        run.opt_D = torch.optim.Adam(run.D.parameters(), 4e-4, betas=(0.5, 0.99))
    elif d == 'projected':
        from sgxl.projected import projected_discriminator
        net = projected_discriminator(make_config('B', 'tiny', feature_resolution=32, diffaug=''), c_dim=K).train()
        run.D = lambda x, y: net(x, onehot(y)).mean(1)                           # mean over the patches: (N,)
        run.opt_D = torch.optim.Adam(net.trainable_parameters(), 2e-3, betas=(0.0, 0.99))
    else:
        from sgxl.baseline import ResNetDiscriminator
        net = ResNetDiscriminator.from_config(make_config('A', 'tiny'), c_dim=K)
        run.D = lambda x, y: net(x, onehot(y)).squeeze(1)
        run.opt_D = torch.optim.Adam(net.parameters(), 4e-4, betas=(0.5, 0.99))
    return run


class SgxlRun:
    "The training step of a rung as `sgxl train` builds it (Trainer: data, rung, stages), scored on G_ema."
    def __init__(self, cfg, outdir: str, extra_ema: tuple[float, ...] = ()):
        from sgxl.training import Trainer
        self.trainer = Trainer(cfg, outdir=outdir, progress=False)
        self.step_index = 0
        self.extra_ema = {r: copy.deepcopy(self.trainer.rung.G_ema) for r in extra_ema}  # EMA ramp-up -> its G_ema

    @property
    def nimg(self): return self.trainer.rung.nimg

    def step(self) -> dict:
        t = self.trainer
        real, labels = next(t.loader)
        stats = t.rung.step(real, labels if t.cfg.c_dim else None, self.step_index, t.batch_now()[1])
        self.step_index += 1
        for rampup, ema in self.extra_ema.items():                  # the same update as the rung's, another ramp-up
            update_ema(ema, t.rung.G, ema_beta(len(real), t.rung.nimg, t.cfg.ema_half_life_kimg, rampup))
        if getattr(t.rung, 'progressive', False) and t.rung.should_grow():
            t.grow(); print(f'  grew to {t.rung.resolution} px', flush=True)
        return stats

    def generator(self): return self.trainer.rung.G_ema
    def train(self): pass


def score(run, dataset, G=None) -> dict:
    "The demo's metrics of the run's generator, or of G (the training RNG untouched)."
    with torch.random.fork_rng(devices=[]):
        out = compute_metrics(METRICS, G if G is not None else run.generator(), dataset, device='cpu', seed=0)
    run.train()
    return out


def use_head_form(form: str):
    "--d-head: rung B's patch heads with an unconditional term psi (Miyato and Koyama's projection form)."
    import sgxl.projected as P
    init, forward = P.PatchDiscriminator.__init__, P.PatchDiscriminator.forward
    def with_psi(self, c_in, size, c_max=512, cmap_dim=0, embed_dim=0, end_size=8):
        init(self, c_in, size, c_max, cmap_dim, embed_dim, end_size)
        if cmap_dim:                                                              # in_channels: no power iteration
            self.psi = P.sn(nn.Conv2d(self.out.in_channels, 1, 4, padding=self.out.padding, bias=False))
    def psi_forward(self, x, embed=None):
        if not self.cmap_dim: return forward(self, x, embed)
        h = self.body(x)                                                          # (N, C, s, s)
        phi, pe = self.out(h), self.embed_proj(embed)                             # (N, M, p, p), (N, M)
        scale = 1.0 if form == 'psi-unscaled' else 1 / math.sqrt(self.cmap_dim)
        return (self.psi(h).squeeze(1) + (phi * pe[:, :, None, None]).sum(1) * scale).flatten(1)   # (N, p*p)
    P.PatchDiscriminator.__init__, P.PatchDiscriminator.forward = with_psi, psi_forward


def use_equal_heads():
    "--equal-heads: tile each head's patch logits (N, p) to the largest head's count, so each head weighs the same."
    import sgxl.projected as P
    forward = P.ProjectedDiscriminator.forward
    def equal(self, images, c=None, blur_sigma=0.0, generator=None):
        logits = forward(self, images, c, blur_sigma, generator)               # (N, P), heads side by side
        sizes = [h.patches ** 2 for heads in self.heads for h in heads]
        most = max(sizes)
        if any(most % s for s in sizes): raise SystemExit(f'--equal-heads: head patch counts {sizes} do not divide {most}')
        return torch.cat([l.repeat_interleave(most // s, dim=1) for l, s in zip(logits.split(sizes, 1), sizes)], 1)
    P.ProjectedDiscriminator.forward = equal


def use_balanced_labels():
    "--balanced-labels: the G and D phases' fake labels as shuffled rounds of every class."
    import sgxl.baseline as B
    draw = B.draw_latents
    def balanced(n, z_dim, num_ws, mixing, device, label_probs=None):
        d = draw(n, z_dim, num_ws, mixing, device, label_probs)
        if label_probs is not None:
            k = len(label_probs)
            rounds = lambda: torch.cat([torch.randperm(k) for _ in range(-(-n // k))])[:n][torch.randperm(n)].to(device)
            d['c_g'], d['c_d'] = rounds(), rounds()                                # (n,) each
        return d
    B.draw_latents = balanced


def use_patch_mean():
    "--patch-mean: every head returns the mean of its patch logits, (N, 1), so the hinge judges whole images."
    import sgxl.projected as P
    forward = P.PatchDiscriminator.forward
    P.PatchDiscriminator.forward = lambda self, x, embed=None: forward(self, x, embed).mean(1, keepdim=True)


def use_mismatch(weight: float):
    "--mismatch: rung B's D loss plus W * hinge(1 + D(x, wrong label)) on the real batch."
    import sgxl.projected as P
    d_loss = P.RungB.d_loss
    def matching_aware(self, b):
        loss, stats = d_loss(self, b)
        wrong = (b.c + torch.randint(1, self.c_dim, b.c.shape, device=b.c.device)) % self.c_dim   # never b.c
        extra = P.reduce_patches(F.relu(1 + self.discriminate(b.real, wrong)), **self.adv_reduce())
        return loss + weight * extra, {**stats, 'loss/D_mismatch': extra}
    P.RungB.d_loss = matching_aware


def use_classes(ids: list[int]):
    "--classes: the built-in shapes with only these shape ids, relabelled 0..K-1 (and named apart for caches)."
    import numpy as np
    import sgxl.data as D
    params, init = D.shapes_params, D.ShapesDataset.__init__
    def subset_params(seed, n):
        p = params(seed, n); p['label'] = torch.tensor(ids)[torch.arange(n) % len(ids)]; return p
    def subset_init(self, *a, **k):
        init(self, *a, **k)
        self._raw_labels = np.array([ids.index(int(v)) for v in self._raw_labels], dtype=np.int64)
        self.num_classes, self.class_names = len(ids), [D.SHAPES_CLASSES[i] for i in ids]
        self.name += '-classes' + '_'.join(map(str, ids))
    D.shapes_params, D.ShapesDataset.__init__ = subset_params, subset_init


def probe_features(cfg, n: int = 2000, held_out: int = 500):
    "--probe: held-out accuracy of a linear classifier on each scale's pooled features, per blur sigma."
    from sgxl.data import load
    from sgxl.projected import feature_networks, gaussian_blur
    ds = load(cfg.data, resolution=cfg.resolution)
    x = torch.stack([ds[i][0] for i in range(n)]).float() / 127.5 - 1          # (n, 3, R, R) in [-1, 1]
    y = torch.tensor([ds.label(i) for i in range(n)])
    net = feature_networks(cfg)[0].eval()
    print(f'{cfg.data} at {cfg.resolution} px, {n - held_out} training / {held_out} held-out images; rows: blur sigma')
    for sigma in (0, 1, 2, 3, 4):
        with torch.no_grad(): feats = net(gaussian_blur(x, sigma))
        accs = []
        for f in feats:
            h = f.mean((2, 3)); h = (h - h.mean(0)) / (h.std(0) + 1e-5)           # (n, C) standardised
            lin = nn.Linear(h.shape[1], ds.num_classes); opt = torch.optim.Adam(lin.parameters(), 1e-2)
            for _ in range(300):
                loss = F.cross_entropy(lin(h[:-held_out]), y[:-held_out]) + 1e-3 * lin.weight.square().sum()
                opt.zero_grad(); loss.backward(); opt.step()
            accs.append((lin(h[-held_out:]).argmax(1) == y[-held_out:]).float().mean().item())
        print(f'sigma {sigma}: ' + '  '.join(f'scale {i} ({tuple(f.shape[1:])}) {a:.3f}' for i, (f, a) in enumerate(zip(feats, accs))))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--cfg', default=None, help="rung of the sgxl path (default: the demo's)")
    p.add_argument('--no-demo', action='store_true', help="start from the plain tiny preset, not from the demo's "
                   "settings (sgxl.training.DEMO_SETTINGS, under --set's)")
    p.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE', help='config changes of the tiny preset (with --pair sgxl,...: of its generator; seed=N seeds the loop)')
    p.add_argument('--plain', action='store_true', help='the plain conditional GAN instead of an sgxl rung')
    p.add_argument('--pair', metavar='G,D', help="one half each in the plain GAN's loop: G sgxl|plain, D plain|projected|resnet")
    p.add_argument('--d-cond', default='projection', choices=PlainD.COND, help="how --pair's plain D reads the label")
    p.add_argument('--data', default='shapes', help="dataset of --plain, --pair and --no-demo, e.g. 'shapes:easy=1' (the demo's own: "
                   "its DEMO_SETTINGS; --set data=... wins)")
    p.add_argument('--batch', type=int, default=32, help='batch of the plain GAN (sgxl: --set batch=N)')
    p.add_argument('--budget', type=float, default=240, help='training CPU seconds (process time, metrics excluded)')
    p.add_argument('--every', type=float, default=40, help='CPU seconds between scores')
    p.add_argument('--every-kimg', type=float, help='kimg between scores instead (runs of one setup compare by kimg)')
    p.add_argument('--extra-ema', default='', help="sgxl path: also keep and score G EMAs with these ramp-ups, "
                   "e.g. '0.1,0.2' (the config's ema_rampup is the run's own)")
    p.add_argument('--kimg', type=float, help='stop at this many kimg (besides --budget)')
    p.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    p.add_argument('--outdir', default='/tmp/sgxl-demo-learning', help='run folders of the sgxl path')
    p.add_argument('--d-head', choices=('paper', 'psi', 'psi-unscaled'), default='paper',
                   help="diagnostic: how rung B's heads read the label (see above)")
    p.add_argument('--mismatch', type=float, default=0.0, help='diagnostic: weight of real images with wrong labels as D negatives')
    p.add_argument('--equal-heads', action='store_true', help="diagnostic: each of D's heads weighs the same in the loss")
    p.add_argument('--balanced-labels', action='store_true', help="diagnostic: the fakes' labels in shuffled rounds of every class")
    p.add_argument('--patch-mean', action='store_true', help="diagnostic: the hinge on each head's mean patch logit")
    p.add_argument('--classes', help='diagnostic: shape ids to keep, e.g. 0,1,2,4,5 (disc, square, triangle, ring, plus)')
    p.add_argument('--probe', action='store_true', help="diagnostic: linear probes of the feature network's scales, then exit")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.d_head != 'paper': use_head_form(args.d_head)
    if args.mismatch: use_mismatch(args.mismatch)
    if args.equal_heads: use_equal_heads()
    if args.balanced_labels: use_balanced_labels()
    if args.patch_mean: use_patch_mean()
    if args.classes:
        from sgxl.data import SHAPES_CLASSES
        ids = [int(i) for i in args.classes.split(',')]
        if len(set(ids)) != len(ids) or len(ids) < 2 or not all(0 <= i < len(SHAPES_CLASSES) for i in ids):
            p.error(f'--classes {args.classes}: give two or more distinct shape ids in 0..{len(SHAPES_CLASSES) - 1}')
        use_classes(ids)
    from sgxl.data import load
    from sgxl.training import parse_set
    if args.pair:
        g, _, d = args.pair.partition(',')
        if g not in ('sgxl', 'plain') or d not in ('plain', 'projected', 'resnet'):
            p.error(f"--pair {args.pair}: write G,D with G sgxl or plain and D plain, projected or resnet, e.g. --pair sgxl,plain")
        dataset = load(args.data, resolution=32)
        changes = {k: v for k, v in parse_set(args.set).items() if k != 'seed'}
        torch.manual_seed(parse_set(args.set).get('seed', 0))
        run = paired_gan(dataset, args.batch, g, d, args.d_cond, changes)
        name = f'G {g} {changes or ""}, D {d} ({args.d_cond}), batch {args.batch}'
    elif args.plain:
        dataset = load(args.data, resolution=32)
        run, name = PlainGAN(dataset, args.batch), f'plain conditional GAN, batch {args.batch}'
    else:
        from sgxl.training import DEMO_RUNG, DEMO_SETTINGS
        base = dict(data=args.data) if args.no_demo else dict(DEMO_SETTINGS)
        rung = args.cfg or DEMO_RUNG
        cfg = make_config(rung, 'tiny', **{**base, 'metrics': (), 'snap_kimg': 1e6, 'kimg': 1e6, **parse_set(args.set)})
        if args.probe: return probe_features(cfg)
        what = f'rung {rung} tiny' if args.no_demo else f"the demo's settings on rung {rung}"
        run, name = SgxlRun(cfg, args.outdir, tuple(float(r) for r in args.extra_ema.split(',') if r)), f'{what} with {parse_set(args.set)}'
    data = lambda: run.trainer.dataset if not (args.plain or args.pair) else dataset
    first = score(run, data())
    print(f'{name}: step 0 dfd500 {first["dfd500"]:.1f}, dacc500 {first["dacc500"]:.3f}; '
          f'{torch.get_num_threads()} threads', flush=True)
    print(f"{'kimg':>7}{'train CPU s':>12}{'wall s':>8}{'dfd500':>9}{'/ step 0':>9}{'dacc500':>9}{'ddiv500':>9}  losses")
    train_cpu, next_score, w0 = 0.0, (args.every_kimg or args.every), time.time()
    done = lambda: train_cpu >= args.budget or (args.kimg is not None and run.nimg >= args.kimg * 1000)
    while not done():
        c0 = time.process_time()
        stats = run.step()
        train_cpu += time.process_time() - c0
        progress = run.nimg / 1000 if args.every_kimg else train_cpu
        if progress >= next_score or done():
            next_score += args.every_kimg or args.every
            s = score(run, data())
            losses = ' '.join(f'{k.split("/")[-1]} {v:.3g}' for k, v in stats.items() if k.startswith('loss/'))
            print(f'{run.nimg / 1000:>7.2f}{train_cpu:>12.0f}{time.time() - w0:>8.0f}{s["dfd500"]:>9.1f}'
                  f'{s["dfd500"] / first["dfd500"]:>9.2f}{s["dacc500"]:>9.3f}{s.get("ddiv500", float("nan")):>9.3f}  {losses}', flush=True)
            for rampup, ema in getattr(run, 'extra_ema', {}).items():
                e = score(run, data(), ema)
                print(f'{"":>27}{e["dfd500"]:>9.1f}{e["dfd500"] / first["dfd500"]:>9.2f}{e["dacc500"]:>9.3f}'
                      f'{e["ddiv500"]:>9.3f}  EMA ramp-up {rampup:g}', flush=True)


if __name__ == '__main__':
    main()
