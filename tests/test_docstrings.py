"""Every exported public function and class of sgxl (the names in each module's `__all__`), and every public method
of an exported class defined in sgxl, has a docstring of its own (issue 19: the code explains itself)."""
import importlib
import inspect
import pkgutil

import pytest

import sgxl


def sgxl_modules():
    "The installed package's modules (those nbdev exports: each has an `__all__`)."
    names = [m.name for m in pkgutil.iter_modules(sgxl.__path__, 'sgxl.') if not m.name.split('.')[-1].startswith('_')]
    return [mod for mod in map(importlib.import_module, sorted(names)) if hasattr(mod, '__all__')]


def own_doc(obj) -> str | None:
    "The object's own docstring (not one inherited from a base class, as `inspect.getdoc` would give)."
    if isinstance(obj, (staticmethod, classmethod)): obj = obj.__func__
    if isinstance(obj, property): obj = obj.fget
    doc = getattr(obj, '__doc__', None)
    return doc.strip() if isinstance(doc, str) and doc.strip() else None


def defined_in_sgxl(obj) -> bool:
    if isinstance(obj, (staticmethod, classmethod)): obj = obj.__func__
    if isinstance(obj, property): obj = obj.fget
    return (getattr(obj, '__module__', None) or '').split('.')[0] == 'sgxl'


def public_methods(cls):
    "(name, member) of the public methods, properties, static and class methods written in `cls`'s own body."
    for name, member in vars(cls).items():
        if name.startswith('_'): continue
        if inspect.isfunction(member) or isinstance(member, (staticmethod, classmethod, property)):
            if defined_in_sgxl(member): yield name, member


def missing_docstrings() -> list[str]:
    missing = []
    for mod in sgxl_modules():
        for name in mod.__all__:
            obj = getattr(mod, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or not defined_in_sgxl(obj): continue
            if obj.__module__ != mod.__name__: continue                         # re-exported: checked where defined
            if own_doc(obj) is None: missing.append(f'{mod.__name__}.{name}')
            if inspect.isclass(obj):
                missing += [f'{mod.__name__}.{name}.{m}' for m, member in public_methods(obj) if own_doc(member) is None]
    return missing


def test_the_walk_sees_the_package():
    "The walk is not vacuous: it finds the modules, classes and methods that the ladder is made of."
    mods = {m.__name__ for m in sgxl_modules()}
    assert {'sgxl.core', 'sgxl.stylegan3', 'sgxl.projected', 'sgxl.training'} <= mods
    from sgxl.baseline import RungA
    assert {'g_loss', 'd_loss'} <= dict(public_methods(RungA)).keys()


def test_every_exported_function_class_and_public_method_has_a_docstring():
    missing = missing_docstrings()
    assert not missing, f'{len(missing)} without a docstring:\n' + '\n'.join(missing)
