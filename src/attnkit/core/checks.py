"""Argument checks shared across attnkit: errors name the argument, the expected, the received."""
from __future__ import annotations


def check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; TypeError for non-ints (bools too), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {type(value).__name__} "
                        f"{value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def renamed_flag(new_value, old_value, old: str, new: str):
    """A keyword renamed in the redesign (``need_weights`` -> ``return_weights``): the old
    one still works, with a DeprecationWarning naming the new one."""
    if old_value is None:
        return new_value
    import warnings
    warnings.warn(f"{old}= is now {new}= (one name for one flag)", DeprecationWarning,
                  stacklevel=3)
    return old_value
