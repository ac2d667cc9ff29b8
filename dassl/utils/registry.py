"""Name -> class registries, as in Dassl (and fvcore before it)."""
import difflib


def closest_match_hint(requested, available):
    matches = difflib.get_close_matches(str(requested), list(available), n=1)
    return f' Do you mean "{matches[0]}"?' if matches else ""


class Registry:
    def __init__(self, name):
        self._name = name
        self._obj_map = {}

    def _do_register(self, name, obj, force=False):
        if name in self._obj_map and not force:
            raise KeyError(f'An object named "{name}" was already registered in "{self._name}" registry')
        self._obj_map[name] = obj

    def register(self, obj=None, force=False):
        if obj is None:
            def wrapper(fn_or_class):
                self._do_register(fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class

            return wrapper
        self._do_register(obj.__name__, obj, force=force)
        return obj

    def get(self, name):
        if name not in self._obj_map:
            known = ", ".join(sorted(self._obj_map)) or "(none)"
            raise KeyError(
                f'No object named "{name}" found in "{self._name}" registry. '
                f"Registered: {known}.{closest_match_hint(name, self._obj_map)}"
            )
        return self._obj_map[name]

    def registered_names(self):
        return list(self._obj_map.keys())

    def __contains__(self, name):
        return name in self._obj_map
