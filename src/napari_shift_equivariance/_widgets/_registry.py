"""Where a dock's model comes from (:class:`ModelSource`), and the models trained since napari
started (:data:`REGISTRY`: the Train dock adds, both docks list).

Qt-free: a source is a small frozen value that parses from and formats to one string
(``"default:2"``, ``"registry:NAME"``, ``"file:PATH"``, ``"random:2,3,2,0"``), so that the
docks' settings can remember it between napari launches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psygnal import Signal

from ..errors import NSEError
from ..geometry import UNetGeometry
from ..model import ModelConfig, UNet, build_model, default_model_path, load_model

KINDS = ("default", "registry", "file", "random")
#: the architecture of an untrained (random-weights) model besides its l and f: for grid
#: previews and experiments before any model is trained
RANDOM_CONFIG = {"base_channels": 16, "embedding_dim": 8}


@dataclass
class Entry:
    name: str
    model: UNet
    info: dict = field(default_factory=dict)


class ModelRegistry:
    """An ordered name → model store for this process; emits ``changed(name)`` on every add."""

    changed = Signal(str)
    #: ``(ndim, depth, factor)`` chosen in the Segment dock before any model exists; the Train
    #: dock follows it when training from scratch
    geometry_chosen = Signal(int, int, int)

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def add(self, model: UNet, name: str | None = None, info: dict | None = None) -> str:
        """Store ``model`` under a new unique name (``name``, else ``trained #n``); return it."""
        base = name or f"trained #{len(self._entries) + 1}"
        unique, i = base, 2
        while unique in self._entries:
            unique, i = f"{base} ({i})", i + 1
        self._entries[unique] = Entry(unique, model, dict(info or {}))
        self.changed.emit(unique)
        return unique

    def get(self, name: str) -> UNet:
        return self._entries[name].model

    def info(self, name: str) -> dict:
        return dict(self._entries[name].info)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.changed.emit("")


#: the process-wide registry
REGISTRY = ModelRegistry()

#: loaded bundled / file / random models, shared by the docks (never trained in place: the
#: Train dock copies its start model)
_CACHE: dict[tuple, UNet] = {}


@dataclass(frozen=True)
class ModelSource:
    """One model choice of a dock.

    ``kind`` is ``"default"`` (bundled; ``ndim``), ``"registry"`` (trained this session;
    ``name``), ``"file"`` (a ``.pt``; ``path``) or ``"random"`` (untrained; ``ndim``,
    ``depth``, ``factor``, ``seed``). A dock's list holds ``file`` and ``random`` without their
    details; :meth:`complete` fills them in from the dock's form.
    """

    kind: str
    ndim: int | None = None
    name: str | None = None
    path: str | None = None
    depth: int | None = None
    factor: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise NSEError(f"unknown model source {self.kind!r}; expected one of {KINDS}")

    # -- constructors ------------------------------------------------------------------
    @classmethod
    def default(cls, ndim: int) -> ModelSource:
        return cls("default", ndim=int(ndim))

    @classmethod
    def registry(cls, name: str) -> ModelSource:
        return cls("registry", name=str(name))

    @classmethod
    def file(cls, path: str | Path | None = None) -> ModelSource:
        return cls("file", path=None if path in (None, "", ".") else str(path))

    @classmethod
    def random(cls, ndim: int | None = None, depth: int | None = None,
               factor: int | None = None, seed: int = 0) -> ModelSource:
        if ndim is None:
            return cls("random")
        return cls("random", ndim=int(ndim), depth=int(depth), factor=int(factor),
                   seed=int(seed))

    def complete(self, path: Any = None, ndim: int | None = None, depth: int | None = None,
                 factor: int | None = None, seed: int = 0) -> ModelSource:
        """A ``file`` source with ``path`` or a ``random`` one with its geometry and seed
        (from the dock's form); other kinds are complete already."""
        if self.kind == "file":
            return ModelSource.file(path)
        if self.kind == "random":
            return ModelSource.random(ndim, depth, factor, seed)
        return self

    # -- string form -------------------------------------------------------------------
    def __str__(self) -> str:
        if self.kind == "default":
            return f"default:{self.ndim}"
        if self.kind == "registry":
            return f"registry:{self.name}"
        if self.kind == "file":
            return f"file:{self.path}" if self.path else "file"
        if self.ndim is None:
            return "random"
        return f"random:{self.ndim},{self.depth},{self.factor},{self.seed}"

    @classmethod
    def parse(cls, text: str) -> ModelSource:
        """The inverse of ``str()``; raises NSEError on anything else."""
        kind, _, rest = str(text).partition(":")
        try:
            if kind == "default":
                return cls.default(int(rest))
            if kind == "registry" and rest:
                return cls.registry(rest)
            if kind == "file":
                return cls.file(rest or None)
            if kind == "random":
                if not rest:
                    return cls.random()
                ndim, depth, factor, seed = (int(v) for v in rest.split(","))
                return cls.random(ndim, depth, factor, seed)
        except ValueError:
            pass
        raise NSEError(f"not a model source: {text!r} (expected default:N, registry:NAME, "
                       "file:PATH or random:NDIM,DEPTH,FACTOR,SEED)")

    # -- what the docks show -----------------------------------------------------------
    @property
    def label(self) -> str:
        if self.kind == "default":
            return f"default {self.ndim}D (bundled)"
        if self.kind == "registry":
            return f"{self.name} (trained here)"
        if self.kind == "file":
            return Path(self.path).name if self.path else "model file…"
        if self.ndim is None:
            return "untrained: choose l and f (random weights)"
        return f"untrained {self.ndim}D l={self.depth} f={self.factor} (seed {self.seed})"

    @property
    def locked(self) -> bool:
        """Whether the architecture is the model's (everything but ``random``)."""
        return self.kind != "random"

    @property
    def is_complete(self) -> bool:
        return not ((self.kind == "file" and not self.path)
                    or (self.kind == "random" and self.ndim is None))

    @property
    def available(self) -> bool:
        """Whether :meth:`load` can work now (a trained model lives only in its session)."""
        if self.kind == "default":
            return default_model_path(self.ndim).exists()
        if self.kind == "registry":
            return self.name in REGISTRY
        if self.kind == "file":
            return bool(self.path) and Path(self.path).is_file()
        return True

    # -- loading -----------------------------------------------------------------------
    def config(self) -> ModelConfig:
        """The model's configuration (a ``random`` source builds no weights for it)."""
        if self.kind == "random" and self.ndim is not None:
            return self._random_config()
        return self.load().config

    def geometry(self) -> UNetGeometry:
        return self.config().geometry

    def _random_config(self) -> ModelConfig:
        return ModelConfig(ndim=self.ndim, depth=self.depth, factor=self.factor,
                           **RANDOM_CONFIG)

    def load(self) -> UNet:
        """The model (loaded once per process and shared; a changed file is re-read)."""
        if self.kind == "registry":
            if self.name not in REGISTRY:
                raise NSEError(f"model {self.name!r} is no longer available")
            return REGISTRY.get(self.name)
        key = self._cache_key()
        if key not in _CACHE:
            _CACHE[key] = self._make()
        return _CACHE[key]

    def _cache_key(self) -> tuple:
        if self.kind == "file":
            if not self.path or Path(self.path).is_dir():
                raise NSEError("choose a model file (.pt)")
            path = Path(self.path)
            if not path.exists():
                raise NSEError(f"model file {path} does not exist")
            return ("file", str(path.resolve()), path.stat().st_mtime_ns)
        if self.kind == "random" and self.ndim is None:
            raise NSEError("choose l and f for the untrained model")
        return (self.kind, self.ndim, self.depth, self.factor, self.seed)

    def _make(self) -> UNet:
        if self.kind == "file":
            return load_model(Path(self.path))
        if self.kind == "default":
            return load_model("default", ndim=self.ndim)
        return build_model(self._random_config(), seed=self.seed)


def bundled_sources() -> list[ModelSource]:
    """The bundled default models present in this installation."""
    return [ModelSource.default(nd) for nd in (2, 3) if default_model_path(nd).exists()]


def registry_sources() -> list[ModelSource]:
    """Models trained this session, newest first."""
    return [ModelSource.registry(name) for name in reversed(REGISTRY.names())]


def connect_while_alive(widget: Any, signal: Any, callback: Callable) -> None:
    """Connect ``callback`` to a registry ``signal`` until the Qt side of ``widget`` (a
    magicgui widget) is destroyed, e.g. when its dock or viewer closes."""
    signal.connect(callback)

    def _disconnect(*_: Any) -> None:
        with contextlib.suppress(Exception):
            signal.disconnect(callback)

    widget.native.destroyed.connect(_disconnect)
