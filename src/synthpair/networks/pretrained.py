"""Networks own their config and their persistence (the ``save_pretrained`` / ``from_pretrained`` idea of diffusers).

A network class that mixes in :class:`Pretrained` can describe itself as JSON (:meth:`Pretrained.network_config`:
its constructor arguments and whatever else rebuilds it — a vocabulary, a cluster prior, the base a partial export
sits on) and rebuild itself from that description (:meth:`Pretrained.from_network_config`). It also decides what
its weights file holds (:meth:`Pretrained.saved_state`: the whole state dict, or only the adapters / branch / new
rows a wrapper added over a base) and how to put it back (:meth:`Pretrained.load_saved_state`). So a folder with

    network.json        {"format": "synthpair-network", "version": 1, "class": "ConditionalUNet", "config": {...}}
    model.safetensors   the tensors of saved_state()
    version.json        {"synthpair", "torch", "weights_sha256"}

rebuilds the network with :func:`from_pretrained` and no knowledge of the method that trained it. Every generator
export (``RUN/export``, ``RUN/snapshots/step_N``) written since issue 13 has a ``network.json``; older exports do not,
and :func:`synthpair.methods.export.load_export` rebuilds those through their method as before.

Partial exports name their base export and its weights' sha256; :func:`load_base` loads that base (through
:func:`from_pretrained`, or, for a base written before ``network.json`` existed, through the loader the methods
layer registers with :func:`register_legacy_loader` — the networks layer never imports the methods layer).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import fail
from ..io import read_json, write_bytes_atomic, write_json_atomic

NETWORK_FILE = "network.json"
NETWORK_FORMAT = "synthpair-network"
NETWORK_VERSION = 1

_CLASSES: dict[str, type] = {}
_LEGACY_LOADER: list[Callable[[Path], nn.Module]] = []


class Pretrained:
    """Mixin of the generator networks: JSON config + weights persistence (module docstring). Subclasses register
    under their class name; they implement :meth:`network_config` and :meth:`from_network_config`."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _CLASSES[cls.__name__] = cls

    def network_config(self) -> dict[str, Any]:
        """JSON-serialisable description that :meth:`from_network_config` rebuilds this network from."""
        raise NotImplementedError(f"{type(self).__name__}.network_config")

    @classmethod
    def from_network_config(cls, config: dict[str, Any], folder: Path) -> nn.Module:
        """The network described by ``config`` (read from ``folder/network.json``), before :meth:`load_saved_state`."""
        raise NotImplementedError(f"{cls.__name__}.from_network_config")

    def saved_state(self) -> dict[str, torch.Tensor]:
        """The tensors the weights file holds. Default: the whole state dict."""
        return self.state_dict()  # type: ignore[attr-defined]

    def load_saved_state(self, state: dict[str, torch.Tensor], folder: Path) -> None:
        """Put :meth:`saved_state`'s tensors back (RuntimeError on a mismatch). Default: strict ``load_state_dict``."""
        self.load_state_dict(state, strict=True)  # type: ignore[attr-defined]


def network_classes() -> dict[str, type]:
    """Registered network classes by name (those whose modules are imported)."""
    return dict(_CLASSES)


def network_record(model: nn.Module) -> dict[str, Any]:
    """``{"format", "version", "class", "config"}`` of ``model`` (what ``network.json`` holds)."""
    if not isinstance(model, Pretrained):
        raise TypeError(f"{type(model).__name__} does not implement Pretrained (network_config/from_network_config)")
    return {"format": NETWORK_FORMAT, "version": NETWORK_VERSION, "class": type(model).__name__,
            "config": model.network_config()}


def build_from_record(record: dict[str, Any], folder: Path) -> nn.Module:
    """The (weightless) network of a ``network.json`` record; one-line errors for another format / unknown class."""
    where = Path(folder) / NETWORK_FILE
    if record.get("format") != NETWORK_FORMAT or int(record.get("version", 0)) > NETWORK_VERSION:
        raise fail(f"{where}: not a {NETWORK_FORMAT} v{NETWORK_VERSION} file; re-export the run")
    _import_builtin()
    cls = _CLASSES.get(str(record.get("class")))
    if cls is None:
        raise fail(f"{where}: network class {record.get('class')!r} unknown (known: {', '.join(sorted(_CLASSES))}); "
                   f"import the module that defines it or re-export the run")
    return cls.from_network_config(dict(record.get("config") or {}), Path(folder))


def read_weights(folder: Path | str) -> tuple[dict[str, torch.Tensor], str]:
    """``(state, sha256)`` of ``folder/model.safetensors``, checked against ``version.json`` (one-line errors)."""
    from safetensors.torch import load

    folder = Path(folder)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise fail(f"{weights}: weights file missing; re-export the run (RUN/export) or retrain")
    version = read_json(folder / "version.json", "version.json")
    raw = weights.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    if sha != version.get("weights_sha256"):
        raise fail(f"{weights}: sha256 does not match version.json (corrupt or replaced); re-export or retrain the run")
    try:
        return load(raw), sha
    except Exception as err:  # noqa: BLE001  (safetensors raises its own error types for bad headers/data)
        raise fail(f"{weights}: unreadable safetensors file ({err}); re-export or retrain the run") from None


def write_weights(folder: Path | str, state: dict[str, torch.Tensor]) -> str:
    """``model.safetensors`` (float32, CPU, contiguous) + ``version.json``; returns the sha256. version.json is
    written last, so a folder with it is complete."""
    from safetensors.torch import save

    import synthpair

    folder = Path(folder)
    data = save({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()})
    write_bytes_atomic(folder / "model.safetensors", data)
    sha = hashlib.sha256(data).hexdigest()
    write_json_atomic(folder / "version.json", {"synthpair": synthpair.__version__, "torch": torch.__version__,
                                                "weights_sha256": sha})
    return sha


def save_pretrained(model: nn.Module, folder: Path | str) -> Path:
    """Write ``network.json`` + ``model.safetensors`` (:meth:`Pretrained.saved_state`) + ``version.json``."""
    folder = Path(folder)
    record = network_record(model)
    write_json_atomic(folder / NETWORK_FILE, record)
    write_weights(folder, model.saved_state())  # type: ignore[attr-defined]
    return folder


def has_network_file(folder: Path | str) -> bool:
    return (Path(folder) / NETWORK_FILE).is_file()


def from_pretrained(folder: Path | str, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the network of ``folder`` (``network.json``) and load its weights → model in eval mode.

    One-line errors (naming the file): no ``network.json``, unknown class, weights missing / sha256 mismatch /
    unreadable, or weights that do not fit the network."""
    folder = Path(folder)
    if not has_network_file(folder):
        raise fail(f"{folder / NETWORK_FILE}: missing; export the network with save_pretrained (exports written "
                   f"before issue 13 load with synthpair.methods.export.load_export)")
    record = read_json(folder / NETWORK_FILE, NETWORK_FILE)
    state, _ = read_weights(folder)
    model = build_from_record(record, folder)
    try:
        model.load_saved_state(state, folder)  # type: ignore[attr-defined]
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else "mismatch"
        raise fail(f"{folder / 'model.safetensors'}: weights do not fit the network in {NETWORK_FILE} ({first}); "
                   f"re-export the run") from None
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------- partial exports
def register_legacy_loader(loader: Callable[[Path], nn.Module]) -> None:
    """How a base export without ``network.json`` is loaded (the methods layer registers ``load_export``)."""
    _LEGACY_LOADER[:] = [loader]


def base_record(export_dir: Path | str) -> dict[str, str]:
    """``{"base_export": absolute path, "base_weights_sha256"}`` — how a partial network names its base."""
    from .export import sha256_file

    base = Path(export_dir).resolve()
    return {"base_export": str(base), "base_weights_sha256": sha256_file(base / "model.safetensors")}


def load_base(record: dict[str, Any], folder: Path, kind: str, hint: str) -> nn.Module:
    """The base export ``record["base_export"]`` of a partial network saved in ``folder`` (eval mode, CPU). The base
    must exist (else the one-line error, with ``hint``) and hold weights of sha256 ``record["base_weights_sha256"]``
    (else RuntimeError "``kind`` checkpoint for another base model", which loading turns into one line)."""
    from .export import sha256_file

    base_dir = Path(record["base_export"])
    weights = base_dir / "model.safetensors"
    if not weights.is_file():
        raise fail(f"{base_dir}: base export of this {kind} generator not found (needed by {folder}); {hint}")
    sha = sha256_file(weights)
    if sha != record["base_weights_sha256"]:
        raise RuntimeError(f"{kind} checkpoint for another base model: {weights} has sha256 {sha[:12]}..., "
                           f"{folder} was trained on {str(record['base_weights_sha256'])[:12]}...")
    if has_network_file(base_dir):
        return from_pretrained(base_dir)
    if not _LEGACY_LOADER:
        raise fail(f"{base_dir}: an export without {NETWORK_FILE}; load it through synthpair.methods.export.load_export")
    return _LEGACY_LOADER[0](base_dir)


def overlay_state(model: nn.Module, state: dict[str, torch.Tensor], kind: str) -> None:
    """Load the tensors of a partial export (adapters, hypernetwork, new rows) over ``model``'s own, after the
    caller checked their names; a shape that differs is a RuntimeError "``kind`` checkpoint for another base
    model"."""
    own = model.state_dict()
    for k, v in state.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise RuntimeError(f"{kind} checkpoint for another base model ({k}: {tuple(v.shape)} != "
                               f"{tuple(own[k].shape)})")
    model.load_state_dict({**own, **state}, strict=True)


def config_of(cfg: Any) -> dict[str, Any]:
    """A frozen config dataclass as JSON (``synthpair.config.to_dict``)."""
    from ..config import to_dict

    return to_dict(cfg)


def config_from(cls: type, data: dict[str, Any], folder: Path, key: str) -> Any:
    """``cls`` from the JSON ``data`` of ``network.json``'s ``key`` (one-line errors naming the file and key)."""
    from ..config import from_dict

    return from_dict(cls, data, where=f"{Path(folder) / NETWORK_FILE}:{key}")


def _import_builtin() -> None:
    """Import the modules that define the built-in network classes (so they are registered)."""
    from . import conditional, controlnet, pig, prompt, unet  # noqa: F401


__all__ = ["NETWORK_FILE", "Pretrained", "network_classes", "network_record", "build_from_record", "read_weights",
           "write_weights", "save_pretrained", "from_pretrained", "has_network_file", "register_legacy_loader",
           "base_record", "load_base", "overlay_state", "config_of", "config_from"]
