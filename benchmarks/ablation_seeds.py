"""The ladder over several seeds: combine the results of `sgxl ablate` runs that differ only by --seed.

    sgxl ablate --data shapes --preset tiny --kimg 1 --snap 0.5 --metrics dfd500,dacc500,ddiv500,rfid64,eqt64_int \\
        --seed 0 --outdir runs/abl/seed0          # ... and again with --seed 1 --outdir runs/abl/seed1
    python benchmarks/ablation_seeds.py runs/abl/seed0 runs/abl/seed1 --out runs/abl

A laptop ablation on a few kimg is noisy, so a difference between rungs means something only where it is larger
than the spread over seeds. This prints (and writes as seeds.md) each rung's metrics as the mean over seeds
with the range (min..max), and draws every seed's curves (seeds.png), with sgxl.ablation's `seed_table` and
`plot_seed_curves` (notebook 20_ablation).
"""
import argparse
import json
from pathlib import Path

from sgxl.ablation import plot_seed_curves, seed_table


def load_results(folder: Path) -> dict:
    "The results.json that `sgxl ablate` wrote in `folder`."
    path = Path(folder) / 'results.json'
    if not path.exists(): raise SystemExit(f'{path} not found: run `sgxl ablate ... --outdir {folder}` first')
    return json.loads(path.read_text())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('folders', nargs='+', type=Path, help='output folders of `sgxl ablate` runs, one per seed')
    p.add_argument('--out', type=Path, help="where seeds.md and seeds.png go (default: the first folder's parent)")
    args = p.parse_args()
    results = [load_results(f) for f in args.folders]
    out = args.out or args.folders[0].parent
    out.mkdir(parents=True, exist_ok=True)
    try: table = seed_table(results)
    except ValueError as e: raise SystemExit(f'ablation_seeds: {e}')
    (out / 'seeds.md').write_text(table)
    plot_seed_curves(results, out / 'seeds.png')
    print(table + f'\nwritten: {out / "seeds.md"}, {out / "seeds.png"}')


if __name__ == '__main__':
    main()
