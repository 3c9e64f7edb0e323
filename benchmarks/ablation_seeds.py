"""The ladder over several seeds: combine the results of `sgxl ablate` runs that differ only by --seed.

    sgxl ablate --data shapes --preset tiny --kimg 1 --snap 0.5 --metrics dfd500,dacc500,ddiv500,rfid64,eqt64_int \\
        --seed 0 --outdir runs/abl/seed0          # ... and again with --seed 1 --outdir runs/abl/seed1
    python benchmarks/ablation_seeds.py runs/abl/seed0 runs/abl/seed1 --out runs/abl

`sgxl ablate` trains every rung with one seed. A laptop ablation on a few kimg is noisy, so a difference between
rungs means something only where it is larger than the spread over seeds: this prints (and writes as
seeds.md) each rung's metrics as the mean over seeds with the range (min..max), and draws the curves of every
seed (seeds.png: one colour per rung, one line style per seed).
"""
import argparse
import json
import statistics
from pathlib import Path

from sgxl.ablation import metric_label


def load_results(folder: Path) -> dict:
    "The results.json that `sgxl ablate` wrote in `folder`."
    path = Path(folder) / 'results.json'
    if not path.exists(): raise SystemExit(f'{path} not found: run `sgxl ablate ... --outdir {folder}` first')
    return json.loads(path.read_text())


def check_same_settings(results: list[dict]):
    "The runs must differ by their seed only (same rungs, data, budget, metrics)."
    key = lambda r: ({k: v for k, v in r['settings'].items() if k != 'seed'}, r['metrics'])
    for r in results[1:]:
        if key(r) != key(results[0]):
            raise SystemExit(f"the ablations differ in more than the seed: {key(results[0])} vs {key(r)}")
    seeds = [r['settings']['seed'] for r in results]
    if len(set(seeds)) != len(seeds): raise SystemExit(f'two ablations share a seed: {seeds}')


def seed_table(results: list[dict]) -> str:
    "Markdown: one row per rung, each metric as mean (min..max) over the seeds."
    keys, names = results[0]['metric_keys'], results[0]['metrics']
    rungs = [row['rung'] for row in results[0]['rows']]
    lines = ['| rung | adds | ' + ' | '.join(metric_label(k, names) for k in keys) + ' | sec/kimg |',
             '|---|---|' + '---|' * (len(keys) + 1)]
    for i, rung in enumerate(rungs):
        rows = [r['rows'][i] for r in results]
        cells = []
        for k in keys + ['sec_per_kimg']:
            vals = [row[k] for row in rows if row.get(k) is not None]
            cells.append('—' if not vals else f'{statistics.mean(vals):.3g} ({min(vals):.3g}..{max(vals):.3g})')
        lines.append(f"| {rung} | {rows[0]['adds']} | " + ' | '.join(cells) + ' |')
    s = results[0]['settings']
    lines += ['', f"Mean (min..max) over seeds {', '.join(str(r['settings']['seed']) for r in results)}; "
                  f"{s['data']}, {s['preset']} preset, {s['kimg']:g} kimg per rung, batch {s['batch']}, device {s['device']}."]
    return '\n'.join(lines) + '\n'


def plot_seed_curves(results: list[dict], path: Path):
    "Every metric against kimg: a colour per rung, a line style per seed."
    from matplotlib.figure import Figure
    keys, names = results[0]['metric_keys'], results[0]['metrics']
    cols = min(3, len(keys)); rows = -(-len(keys) // cols)
    fig = Figure(figsize=(3.6 * cols, 2.6 * rows), layout='constrained')
    axs = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax, key in zip(axs, keys):
        for j, r in enumerate(results):
            for i, (rung, pts) in enumerate(r['curves'].items()):
                ax.plot([p['kimg'] for p in pts], [p[key] for p in pts], ['-', '--', ':', '-.'][j % 4], color=f'C{i}',
                        marker='o', ms=3, label=f"{rung} seed {r['settings']['seed']}")
        ax.set_title(metric_label(key, names), fontsize=9); ax.set_xlabel('kimg', fontsize=8); ax.tick_params(labelsize=7)
    for ax in axs[len(keys):]: ax.axis('off')
    fig.legend(*axs[0].get_legend_handles_labels(), loc='outside right upper', fontsize=7)
    fig.savefig(path, dpi=90)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('folders', nargs='+', type=Path, help='output folders of `sgxl ablate` runs, one per seed')
    p.add_argument('--out', type=Path, help='where seeds.md and seeds.png go (default: the first folder\'s parent)')
    args = p.parse_args()
    results = [load_results(f) for f in args.folders]
    check_same_settings(results)
    out = args.out or args.folders[0].parent
    out.mkdir(parents=True, exist_ok=True)
    table = seed_table(results)
    (out / 'seeds.md').write_text(table)
    plot_seed_curves(results, out / 'seeds.png')
    print(table + f'\nwritten: {out / "seeds.md"}, {out / "seeds.png"}')


if __name__ == '__main__':
    main()
