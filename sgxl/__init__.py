__version__ = "0.1.0"

# The Python API (README, "Python API"), loaded on first use so that `import sgxl` stays light:
#   G = sgxl.load_network(path)          a run, a checkpoint, an exported folder, hf://USER/REPO, a release .pkl
#   sgxl.generate(G, seeds, classes, truncation) -> uint8 images (N, 3, H, W)
# name -> 'module' (the same name there) or 'module:name'
_API = {'load_network': 'sgxl.networks', 'generate': 'sgxl.explore:generate_images', 'export_network': 'sgxl.networks',
        'image_grid': 'sgxl.core', 'save_image_grid': 'sgxl.core', 'make_config': 'sgxl.core'}

def __getattr__(name: str):
    if name in _API:
        import importlib
        module, _, attr = _API[name].partition(':')
        return getattr(importlib.import_module(module), attr or name)
    raise AttributeError(f"module 'sgxl' has no attribute {name!r}")

def __dir__(): return sorted([*globals(), *_API])
