"""Run chosen tests many times under several CPU thread counts; print each test's pass rate and the range of the
values its asserts compared, so an assert that depends on the machine is found before it lands.

    python tools/flaky.py tests/test_inversion.py -k pti --threads 1,2,4 --runs 10
    python tools/flaky.py "tests/test_notebooks.py::test_notebook[19_inversion]" --threads 1,2 --runs 3

Each run is a fresh `python -m pytest` process with SGXL_TEST_THREADS=N (tests/conftest.py sets torch's thread
count from it, in the test process and in every process a test starts, notebooks included). Tests and notebooks
note the values they assert with `sgxl.core.record_value(name, value)`: while SGXL_RECORD names a file, each call
appends one line `test id<TAB>name<TAB>value` to it (the test id is pytest's, so a notebook's values are filed
under its notebook test). Exit status: 0 when every run of every test passed, else 1.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog='\n\n'.join(__doc__.split('\n\n')[1:]))
    p.add_argument('tests', nargs='+', help='pytest node ids or files (tests/test_x.py::test_y)')
    p.add_argument('-k', dest='keyword', default=None, help="pytest's -k expression to select tests")
    p.add_argument('--threads', default='1,2,4', help='comma-separated torch CPU thread counts (default: 1,2,4)')
    p.add_argument('--runs', type=int, default=10, help='runs per thread count (default: 10)')
    p.add_argument('--timeout', type=float, default=3600, help='seconds before one pytest run is stopped (default: 3600)')
    p.add_argument('--log', type=Path, default=None, help='also append every run\'s outcome and values to this file')
    args = p.parse_args(argv)
    try:
        args.threads = [int(t) for t in args.threads.split(',')]
    except ValueError:
        p.error(f'--threads {args.threads!r}: write positive integers separated by commas, e.g. 1,2,4')
    if any(t < 1 for t in args.threads): p.error(f'--threads {args.threads}: thread counts must be 1 or more')
    if args.runs < 1: p.error(f'--runs {args.runs}: use 1 or more')
    return args


def outcomes(junit: Path) -> dict[str, bool]:
    "{test id: passed} from pytest's JUnit XML (skipped tests are left out)."
    out = {}
    if not junit.exists(): return out
    for case in ET.parse(junit).getroot().iter('testcase'):
        if case.find('skipped') is not None: continue
        module = case.get('classname', '').replace('.', '/') + '.py'
        out[f"{module}::{case.get('name')}"] = case.find('failure') is None and case.find('error') is None
    return out


def read_values(path: Path) -> list[tuple[str, str, float]]:
    "The (test id, name, value) lines that `sgxl.core.record_value` appended."
    if not path.exists(): return []
    rows = []
    for line in path.read_text().splitlines():
        test, name, value = line.split('\t')
        rows.append((test, name, float(value)))
    return rows


def run_once(args, threads: int, work: Path, i: int) -> tuple[dict[str, bool], list, float, int]:
    "One pytest process at `threads` threads: (outcomes, recorded values, seconds, return code)."
    junit, record = work / f'junit-{threads}-{i}.xml', work / f'values-{threads}-{i}.tsv'
    env = {**os.environ, 'SGXL_TEST_THREADS': str(threads), 'SGXL_RECORD': str(record)}
    cmd = [sys.executable, '-m', 'pytest', '-q', '-n', '0', '-p', 'no:cacheprovider',   # -n 0: one process per run
           f'--junitxml={junit}', *args.tests]
    if args.keyword: cmd += ['-k', args.keyword]
    t0 = time.time()
    try:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            timeout=args.timeout).returncode
    except subprocess.TimeoutExpired:
        rc = -1
    return outcomes(junit), read_values(record), time.time() - t0, rc


def fmt(v: float) -> str: return f'{v:.4g}'


def report(passes, values, threads) -> bool:
    "Print pass rates per test and thread count, then each value's range per thread count; True if all passed."
    all_ok = True
    print('\npass rate (passed/runs) per thread count')
    width = max(len(t) for t in passes)
    print(f"{'test':<{width}}  " + '  '.join(f'{t:>2} thr' for t in threads))
    for test in sorted(passes):
        cells = []
        for t in threads:
            ok = passes[test].get(t, [])
            all_ok &= bool(ok) and all(ok)
            cells.append(f'{sum(ok):>2}/{len(ok):<3}' if ok else '   -  ')
        print(f'{test:<{width}}  ' + '  '.join(cells))
    if values:
        print('\nrecorded values: min..max per thread count, then over all runs')
        for (test, name) in sorted(values):
            per = values[(test, name)]
            every = [v for t in threads for v in per.get(t, [])]
            cells = [f'{t} thr {fmt(min(per[t]))}..{fmt(max(per[t]))}' for t in threads if per.get(t)]
            print(f'{test} {name}: ' + ', '.join(cells) + f';  all {fmt(min(every))}..{fmt(max(every))}'
                  f' (spread {fmt(max(every) - min(every))}, n={len(every)})')
    return all_ok


def main(argv=None) -> int:
    args = parse_args(argv)
    passes = defaultdict(lambda: defaultdict(list))             # test -> threads -> [passed per run]
    values = defaultdict(lambda: defaultdict(list))             # (test, name) -> threads -> [value per run]
    with tempfile.TemporaryDirectory(prefix='sgxl-flaky-') as tmp:
        for t in args.threads:
            for i in range(args.runs):
                got, vals, secs, rc = run_once(args, t, Path(tmp), i)
                if not got:
                    print(f'{t} threads, run {i + 1}: pytest collected or ran nothing (exit {rc}); '
                          f'check the test ids and -k', file=sys.stderr)
                    passes['(no tests ran)'][t].append(False)
                for test, ok in got.items(): passes[test][t].append(ok)
                for test, name, v in vals: values[(test, name)][t].append(v)
                failed = [k for k, ok in got.items() if not ok]
                line = (f'{t} threads, run {i + 1}/{args.runs}: {len(got) - len(failed)}/{len(got)} passed in {secs:.0f}s'
                        + (f'; FAILED {" ".join(failed)}' if failed else '')
                        + ''.join(f'; {name}={fmt(v)}' for _, name, v in vals))
                print(line, flush=True)
                if args.log:
                    with open(args.log, 'a') as f: f.write(line + '\n')
    return 0 if report(passes, values, args.threads) else 1


if __name__ == '__main__':
    sys.exit(main())
