"""Find every dataset and trainer module so that nobody maintains an import list.

CoOp registers datasets and trainers by importing each module by hand in ``train.py``; forgetting the
line silently leaves a new module unregistered. Here every module of the plugin packages is imported,
and each may declare its own config keys in an ``extend_cfg(cfg)`` function.
"""
import importlib
import os
import pkgutil

PLUGIN_PACKAGES = ("datasets", "trainers")
EXTRA_PLUGINS_ENV = "MUPL_EXTRA_PLUGINS"


def import_plugins(packages=PLUGIN_PACKAGES):
    """Import every public module of ``packages``, then the modules named in $MUPL_EXTRA_PLUGINS
    (comma-separated; a trainer or dataset kept outside the repository, such as the tests' own)."""
    modules = []
    for package_name in packages:
        package = importlib.import_module(package_name)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
            if info.name.startswith("_"):
                continue
            modules.append(importlib.import_module(f"{package_name}.{info.name}"))
    for module_name in os.environ.get(EXTRA_PLUGINS_ENV, "").split(","):
        if module_name.strip():
            modules.append(importlib.import_module(module_name.strip()))
    return modules


def extend_cfg(cfg, modules):
    """Let each plugin module add the config keys it owns."""
    for module in modules:
        hook = getattr(module, "extend_cfg", None)
        if callable(hook):
            hook(cfg)
