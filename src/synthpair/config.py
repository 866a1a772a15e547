"""Configuration is data: frozen dataclasses <-> JSON, with type-checked ``--set a.b=value`` overrides.

Every artifact folder gets the exact config that produced it as ``config.json``. ``from_dict`` rejects
unknown keys and wrong types, so a typo in a config file or an override is a one-line error instead of a
silently ignored setting.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import fail
from .io import read_json, write_json_atomic

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass -> plain JSON-able dict (tuples become lists). Keys the class lists in ``_omit_when_none``
    (TrainConfig's method sections another method reads) are left out when None."""
    out = json.loads(json.dumps(dataclasses.asdict(cfg)))
    for key in getattr(type(cfg), "_omit_when_none", ()):
        if out.get(key, 0) is None:
            del out[key]
    return out


def _optional_section(cls: Any, name: str) -> Any:
    """The dataclass type of field ``name`` of ``cls`` when it is ``Section | None`` (an optional section), else
    None."""
    if not dataclasses.is_dataclass(cls):
        return None
    tp = typing.get_type_hints(cls).get(name)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(kinds) == 1 and dataclasses.is_dataclass(kinds[0]) and type(None) in typing.get_args(tp):
            return kinds[0]
    return None


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ValueError as err:
                errors.append(str(err))
        raise fail(f"{where}: {value!r} does not match {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise fail(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise fail(f"{where}: expected a section (object), got {value!r}")
        return from_dict(tp, value, where=where)
    if origin in (tuple,):
        if not isinstance(value, (list, tuple)):
            raise fail(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise fail(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(args, value)))
    if origin in (list,):
        if not isinstance(value, (list, tuple)):
            raise fail(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin in (dict,):
        if not isinstance(value, dict):
            raise fail(f"{where}: expected an object, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise fail(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are one-line errors."""
    if not isinstance(data, dict):
        raise fail(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise fail(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise fail(f"{where}: {err}") from None
    return obj


def _parse_scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        if "," in text:
            return [_parse_scalar(t) for t in text.split(",") if t != ""]
        return text


def apply_overrides(cfg: T, overrides: list[str] | tuple[str, ...]) -> T:
    """Return a copy of ``cfg`` with ``key.sub=value`` overrides applied (values parsed as JSON when they can).

    Unknown keys and values of the wrong type are one-line errors naming the override.
    """
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise fail(f"--set {item!r}: expected key=value, e.g. --set train.steps=500")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        section = _optional_section(type(cfg), parts[0]) if len(parts) > 1 else None
        if section is not None and data.get(parts[0]) is None:
            data[parts[0]] = to_dict(section())  # an optional section left out (None): set keys on its defaults
        node: Any = data
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                valid = ", ".join(sorted(node)) if isinstance(node, dict) else "(none)"
                raise fail(f"--set {key}: unknown key {'.'.join(parts[:i + 1])!r}; valid keys here: {valid}")
            if i == len(parts) - 1:
                node[part] = _parse_scalar(raw)
            else:
                node = node[part]
    return from_dict(type(cfg), data, where="config")


def save_config(cfg: Any, path: Path | str) -> None:
    write_json_atomic(path, {"_type": type(cfg).__name__, **to_dict(cfg)})


def load_config(cls: type[T], path: Path | str) -> T:
    data = dict(read_json(path, "config.json"))
    data.pop("_type", None)
    return from_dict(cls, data, where=str(path))


# ------------------------------------------------------------------------------- resuming with a saved config
def with_legacy(data: dict[str, Any], legacy: dict[str, Any]) -> dict[str, Any]:
    """A saved config dict with the dotted ``legacy`` keys it lacks set to their value of that time (a setting
    added later, whose default may since have changed: the file was written when it did not exist, so the run
    used the value it had then). Returns a new dict; sections missing altogether stay missing."""
    import copy

    out = copy.deepcopy(data)
    for key, value in legacy.items():
        *path, leaf = key.split(".")
        node = out
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = value
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict → ``{"a.b": value}`` (lists are values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_changes(old: dict[str, Any], new: dict[str, Any], *, ignore: tuple[str, ...] | list[str] = (),
                   only: tuple[str, ...] | list[str] | None = None, defaults: dict[str, Any] | None = None,
                   nested: bool = True) -> list[str]:
    """The keys whose value differs between a saved config ``old`` and the one asked for now (``new``) — the
    one check every resumable stage makes before it continues (trainer checkpoints, studies' ``config.json``).

    ``nested``: compare leaves by dotted key (else top-level keys); ``ignore``: top-level keys that may change
    on resume; ``only``: compare just these keys (in this order; else every key, sorted); ``defaults``: a key
    missing from ``old`` whose new value equals its default did not exist when ``old`` was written, so it cannot
    have changed that run's result (it is not a change)."""
    fo, fn = (flatten(old), flatten(new)) if nested else (dict(old), dict(new))
    fd = (flatten(defaults) if nested else dict(defaults)) if defaults is not None else {}
    keys = list(only) if only is not None else sorted(set(fo) | set(fn))
    return [k for k in keys
            if fo.get(k) != fn.get(k) and k.split(".")[0] not in ignore
            and not (defaults is not None and k not in fo and k in fd and fn.get(k) == fd[k])]


def describe_changes(keys: list[str], old: dict[str, Any], new: dict[str, Any], *, nested: bool = True,
                     limit: int = 6) -> str:
    """``"k (old -> new), ..."`` for the first ``limit`` changed keys (one-line error messages)."""
    fo, fn = (flatten(old), flatten(new)) if nested else (old, new)
    return ", ".join(f"{k} ({fo.get(k)!r} -> {fn.get(k)!r})" for k in keys[:limit])


def args_config(args: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """A study's settings as a JSON-able dict from its parsed arguments (``argparse.Namespace``): the CLI's own
    keys (``func``, ``command``, ``experiment``, ``dry_run``) and ``drop`` left out, tuples as lists."""
    skip = {"func", "command", "experiment", "dry_run", *drop}
    return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in vars(args).items() if k not in skip}


def claim_config(path: Path | str, new: dict[str, Any], *, what: str = "experiment",
                 ignore: tuple[str, ...] | list[str] = (), only: tuple[str, ...] | list[str] | None = None,
                 grow: tuple[str, ...] | list[str] = (), write: bool = True) -> dict[str, Any]:
    """The one resume check of a multi-stage folder (pipeline, studies): compare the settings asked for now with
    the folder's saved ``config.json`` (``path``) and refuse other result-relevant settings in one line; then
    write the config (atomically) and return it.

    Top-level keys only. ``ignore``: keys that may change on resume (stages, device, progress, …); ``only``:
    compare just these; ``grow``: list-valued keys a study may extend (more N, seeds, rows) — compared as
    nothing, saved as the union (old order first). ``write=False`` checks without writing (dry runs)."""
    path = Path(path)
    merged = dict(new)
    if path.is_file():
        old = read_json(path, f"{what} config.json")
        old.pop("_type", None)
        diff = config_changes(old, new, ignore=(*ignore, *grow), only=only, nested=False)
        if diff:
            shown = describe_changes(diff, old, new, nested=False, limit=4)
            raise fail(f"{path}: holds a {what} with other settings: {shown}; rerun with the same settings to "
                       f"resume, or choose a new --out")
        for k in grow:
            if isinstance(old.get(k), list) and isinstance(new.get(k), list):
                merged[k] = list(dict.fromkeys([*old[k], *new[k]]))  # scalars (N, seeds, row names)
    if write:
        write_json_atomic(path, merged)
    return merged


# ------------------------------------------------------------------------------------------ named presets
PRESETS: dict[str, dict[str, Any]] = {
    "pig-paper": {
        "about": "PIG (paper 004, sec. 3.1): T = 1024 timesteps, linear betas 1e-4 .. 0.02, eps prediction; "
                 "sampling with DDIM (eta 0) in 256 steps",
        "train": {"method": "pig", "diffusion.schedule": "linear", "diffusion.num_timesteps": 1024,
                  "diffusion.beta_start": 1e-4, "diffusion.beta_end": 0.02, "diffusion.prediction": "eps",
                  # the paper gives no learning rate: the recipe this preset ran with (bench/results/pig_preset_*)
                  # before issue 12 made 1e-3 with cosine decay the default
                  "lr": 2e-4, "lr_schedule": "constant"},
        "generate": {"sampler": "ddim", "steps": 256, "eta": 0.0, "spacing": "uniform"},
    },
}
"""Named settings of a paper, per command section (``synthpair train|generate --preset NAME``): applied on top of
the defaults, under a ``--config`` file, ``--set`` overrides and explicit flags (which therefore win)."""


def preset_overrides(name: str | None, section: str) -> list[str]:
    """``key=value`` overrides of preset ``name`` for ``section`` (``train`` / ``generate``); [] for None.
    Unknown name → one-line error listing the presets."""
    import json

    if name is None:
        return []
    if name not in PRESETS:
        raise fail(f"--preset {name!r}: unknown; choose one of {', '.join(sorted(PRESETS))}")
    return [f"{k}={json.dumps(v)}" for k, v in PRESETS[name].get(section, {}).items()]
