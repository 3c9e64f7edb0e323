"""Execute notebooks and save their outputs in place, so that a student reading them on the web sees the figures.

    python tools/run_notebooks.py                 # every notebook in nbs/
    python tools/run_notebooks.py nbs/04_*.ipynb  # some of them
    python tools/run_notebooks.py --cold-cache --no-save   # time each notebook as a new user would run it

Each notebook runs in its own process with one torch thread (the test suite's setting, tests/conftest.py), skipping
the cells flagged with the project's `tst_flags` (`#| slow`, `#| cuda`): those cells keep no output, and the
notebook shows a committed figure beside them instead. Outputs are written only when the whole notebook succeeds;
then `nbdev-clean` strips metadata and execution counts (outputs are kept: `clear_all = false` in pyproject.toml).
Prints each notebook's time and the size of its outputs, and exits non-zero if a notebook fails or its outputs are
larger than --max-kb (no large arrays in the repository). `--cold-cache` gives each notebook an empty sgxl cache
folder of its own (the compiled ops excepted: they keep theirs, as CI warms them), so its time includes whatever it
computes and caches on a first run (class embeddings, probes, statistics); `--no-save` leaves the notebooks as they are.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUNNER = r'''
import os, sys
import torch
torch.set_num_threads(int(os.environ['SGXL_TEST_THREADS']))
from nbdev.config import get_config
from nbdev.test import test_nb
cfg = get_config()
skip = cfg.tst_flags.split() if isinstance(cfg.tst_flags, str) else list(cfg.tst_flags)
ok, secs = test_nb(sys.argv[1], skip_flags=skip, basepath=str(cfg.config_path), save=sys.argv[2] == 'save')
sys.exit(0 if ok else 1)
'''


def output_bytes(nb_path: Path) -> int:
    "Bytes of JSON the notebook's cell outputs take."
    nb = json.loads(nb_path.read_text())
    return sum(len(json.dumps(c.get('outputs', []))) for c in nb['cells'] if c['cell_type'] == 'code')


def cold_cache_env() -> dict:
    "Environment for a run with an empty sgxl cache folder; the compiled ops stay where they are built."
    from sgxl.ops_build import cache_dir
    return {'SGXL_OPS_CACHE': str(cache_dir()), 'SGXL_CACHE_DIR': tempfile.mkdtemp(prefix='sgxl-cold-cache-')}


def run_one(nb: Path, threads: int, save: bool = True, cold: bool = False) -> tuple:
    """Execute `nb` in a fresh process, saving outputs on success if `save`; returns (ok, seconds, CPU seconds,
    stderr tail). The CPU seconds (user + system, the process and what it waited for) hardly change with the load
    of a shared machine; at one thread they are close to the wall time the notebook takes on an idle one."""
    env = {**os.environ, 'MPLBACKEND': 'Agg', 'HF_HUB_OFFLINE': '1', 'PYTHONWARNINGS': 'ignore',
           'SGXL_TEST_THREADS': str(threads), 'OMP_NUM_THREADS': str(threads), 'MKL_NUM_THREADS': str(threads),
           'OMP_WAIT_POLICY': os.environ.get('OMP_WAIT_POLICY', 'PASSIVE'), **(cold_cache_env() if cold else {})}
    start = time.time()
    proc = subprocess.Popen([sys.executable, '-c', RUNNER, str(nb), 'save' if save else 'no-save'], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    cpu = usage.ru_utime + usage.ru_stime
    return os.waitstatus_to_exitcode(status) == 0, time.time() - start, cpu, err[-4000:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('notebooks', nargs='*', type=Path, help='notebooks to run (default: every nbs/*.ipynb)')
    p.add_argument('--threads', type=int, default=int(os.environ.get('SGXL_TEST_THREADS', '1')),
                   help='torch CPU threads per notebook (default 1, as the tests)')
    p.add_argument('-j', '--jobs', type=int, default=1, help='notebooks run at once (default 1)')
    p.add_argument('--max-kb', type=int, default=700, help='largest allowed outputs per notebook, in KiB (default 700)')
    p.add_argument('--cold-cache', action='store_true', help='each notebook with an empty sgxl cache folder of its own')
    p.add_argument('--no-save', action='store_true', help='only run and time the notebooks; keep their committed outputs')
    args = p.parse_args(argv)
    nbs = [n.resolve() for n in args.notebooks] or sorted((ROOT / 'nbs').glob('*.ipynb'))
    missing = [nb for nb in nbs if not nb.exists()]
    for nb in missing: print(f'no notebook at {nb}')
    failed = [nb.name for nb in missing]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:                    # each notebook is its own process
        runs = {nb: pool.submit(run_one, nb, args.threads, not args.no_save, args.cold_cache) for nb in nbs if nb.exists()}
        for nb, fut in runs.items():
            ok, secs, cpu, err = fut.result()
            if ok and args.no_save:
                print(f'{nb.name:32s} {secs:6.1f} s  cpu {cpu:6.1f} s', flush=True)
            elif ok:
                subprocess.run(['nbdev-clean', '--fname', str(nb)], cwd=ROOT, check=True)
                kb = output_bytes(nb) / 1024
                big = kb > args.max_kb
                print(f'{nb.name:32s} {secs:6.1f} s  cpu {cpu:6.1f} s  outputs {kb:7.1f} KiB{"  TOO LARGE (--max-kb)" if big else ""}',
                      flush=True)
                if big: failed.append(nb.name)
            else:
                print(f'{nb.name:32s} {secs:6.1f} s  FAILED (outputs not written)\n{err}', flush=True)
                failed.append(nb.name)
    if failed: print('failed:', ' '.join(failed))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
