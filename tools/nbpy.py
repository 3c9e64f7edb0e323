"""Convert between notebooks and a plain-text "percent" form for editing.

    python tools/nbpy.py to-nb  nbs/00_core.py     # writes nbs/00_core.ipynb
    python tools/nbpy.py to-py  nbs/00_core.ipynb  # writes nbs/00_core.py

The text form: cells separated by lines `# %%` (code) or `# %% [markdown]`
(markdown, each line prefixed by `# `); `id=...` after the marker keeps the cell's id, so a
round trip changes only the cells you edit (new cells get an id from nbdev-clean); a code cell whose id and
source are unchanged keeps its committed outputs, an edited cell loses them until the notebook is executed again
(`python tools/run_notebooks.py nbs/X.ipynb`). After to-nb, run nbdev-clean before nbdev-export. The .ipynb stays the source of truth;
the .py form is a scratch file for editing (gitignored under nbs/).
"""
import json, re, sys
from pathlib import Path

def _cell(kind, lines, cid=None):
    while lines and not lines[-1].strip(): lines.pop()
    while lines and not lines[0].strip(): lines.pop(0)
    if kind == 'markdown':
        lines = [l[2:] if l.startswith('# ') else l[1:] if l.startswith('#') else l for l in lines]
    src = [l + '\n' for l in lines]
    if src: src[-1] = src[-1][:-1]
    cell = {'cell_type': kind, 'metadata': {}, 'source': src}
    if cid: cell['id'] = cid
    if kind == 'code': cell.update(execution_count=None, outputs=[])
    return cell

def _kept_outputs(path):
    "The outputs of the existing notebook's code cells, by (id, source): unchanged cells keep them."
    if not path.exists(): return {}
    old = json.loads(path.read_text())
    return {(c.get('id'), ''.join(c['source'])): c.get('outputs', [])
            for c in old['cells'] if c['cell_type'] == 'code' and c.get('outputs')}

def to_nb(path):
    cells, kind, buf, cid = [], None, [], None
    for line in Path(path).read_text().splitlines():
        if line.startswith('# %%'):
            if kind: cells.append(_cell(kind, buf, cid))
            kind, buf = ('markdown' if '[markdown]' in line else 'code'), []
            m = re.search(r'id=(\S+)', line)
            cid = m.group(1) if m else None
        else: buf.append(line)
    if kind: cells.append(_cell(kind, buf, cid))
    out = Path(path).with_suffix('.ipynb')
    kept = _kept_outputs(out)
    for c in cells:
        if c['cell_type'] == 'code': c['outputs'] = kept.get((c.get('id'), ''.join(c['source'])), [])
    nb = {'cells': cells, 'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}},
          'nbformat': 4, 'nbformat_minor': 5}
    out.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    return out

def to_py(path):
    nb = json.loads(Path(path).read_text())
    parts = []
    for c in nb['cells']:
        src = ''.join(c['source'])
        cid = f" id={c['id']}" if c.get('id') else ''
        if c['cell_type'] == 'markdown':
            parts.append(f'# %% [markdown]{cid}\n' + '\n'.join(('# ' + l) if l else '#' for l in src.splitlines()))
        else: parts.append(f'# %%{cid}\n' + src)
    out = Path(path).with_suffix('.py')
    out.write_text('\n\n'.join(parts) + '\n')
    return out

if __name__ == '__main__':
    cmd, *paths = sys.argv[1:]
    for p in paths: print((to_nb if cmd == 'to-nb' else to_py)(p))
