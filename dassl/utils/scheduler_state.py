"""Restoring an LR scheduler from a checkpoint through its own ``state_dict()`` as the template: only the
keys the live scheduler has, each of the template's type and in range, reach it (``load_state_dict``
copies every key it is given onto the scheduler, so a key named ``step`` would replace its method)."""
import math
import reprlib
from collections import Counter


MAX_VALUE = 2 ** 53  # epochs, milestones and learning rates far below; beyond, the LR formulas overflow


class SchedulerMismatch(ValueError):
    """A scheduler state that this run's scheduler cannot take."""


def _fits(value, template):
    """``value`` as the template's type, or None when it does not fit (type, range or length)."""
    if isinstance(template, bool):
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if isinstance(template, int):
        return value if isinstance(value, int) and -1 <= value < MAX_VALUE else None
    if isinstance(template, float):
        ok = isinstance(value, (int, float)) and (isinstance(value, int) or math.isfinite(value))
        ok = ok and 0 <= value < MAX_VALUE
        return float(value) if ok else None
    if isinstance(template, Counter):
        items = [(_fits(k, 0), _fits(v, 0)) for k, v in value.items()] if isinstance(value, dict) else [None]
        return Counter(dict(items)) if all(k is not None and v is not None for k, v in items) else None
    if isinstance(template, list):
        if not isinstance(value, (list, tuple)) or len(value) != len(template):
            return None
        items = [_fits(item, expected) for item, expected in zip(value, template)]
        return items if all(item is not None for item in items) else None
    return None


def checked_state(state, template, where="scheduler"):
    """The template with every key of ``state`` that it knows replaced by the value read (checked)."""
    if ("successor" in state) != ("successor" in template):
        has, lacks = ("has", "lacks") if "successor" in state else ("lacks", "has")
        raise SchedulerMismatch(f"its LR schedule {has} a warm-up and this run's {lacks} one: resume with the "
                                "OPTIM.WARMUP_EPOCH (and LR_SCHEDULER) the run was trained with")
    merged = dict(template)
    for key, expected in template.items():
        if key not in state:
            continue
        if key == "successor":
            merged[key] = checked_state(state[key], expected, "scheduler's successor")
        elif expected is not None and not isinstance(expected, str):
            value = _fits(state[key], expected)
            if value is None:
                raise SchedulerMismatch(f"its {where} state has {key} = {reprlib.repr(state[key])}, where this run's "
                                        f"scheduler has a {type(expected).__name__} like {expected!r}")
            merged[key] = value
    return merged

