"""Dock settings: one table per dock, built into magicgui widgets, remembered between launches.

A dock declares its form as a tuple of :func:`setting` rows (name, widget kind, default,
widget options) — the only place its defaults are written. :func:`build` makes the widgets;
:class:`DockSettings` puts the saved values back when the dock is built, saves every change,
and puts the defaults back on *Restore defaults*.

Values live in ``<config dir>/<dock>.json``: ``$NSE_CONFIG_DIR`` when set (the tests point it
at a temporary folder), else the user config folder that ``platformdirs`` gives for this
package. Nothing is read at import; a file that cannot be read or parsed gives the defaults
and a warning, and a value that no longer fits (a model trained in an earlier session, a file
that was deleted) gives that setting's default.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magicgui.widgets import CheckBox, Container, FileEdit, FloatSpinBox

from ..errors import NSEError

log = logging.getLogger("napari_shift_equivariance")

ENV_DIR = "NSE_CONFIG_DIR"
APP = "napari-shift-equivariance"
VERSION = 1


class SettingsWarning(UserWarning):
    """A settings file could not be read or written (the dock goes on with defaults)."""


@dataclass(frozen=True)
class Setting:
    """One row of a dock's table. ``default`` may be a callable ``default(dock)`` (evaluated
    when defaults are applied, e.g. a tile size that depends on the model)."""

    name: str
    kind: Callable[..., Any]
    default: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)
    persist: bool = True
    encode: Callable[[Any], Any] | None = None
    decode: Callable[[Any], Any] | None = None
    valid: Callable[[Any], bool] | None = None  # a restored value is used only if valid


def setting(name: str, kind: Callable[..., Any], default: Any = None, *, persist: bool = True,
            encode: Callable[[Any], Any] | None = None,
            decode: Callable[[Any], Any] | None = None,
            valid: Callable[[Any], bool] | None = None, **options: Any) -> Setting:
    """A :class:`Setting`; ``options`` go to the widget (label, choices, min, max, tooltip…)."""
    return Setting(name, kind, default, dict(options), persist, encode, decode, valid)


def path_or_none(value: Any) -> str | None:
    """A FileEdit's value as a path string, ``None`` when empty (FileEdit shows "." then)."""
    return None if str(value) in ("", ".") else str(value)


def model_file_setting() -> Setting:
    """The model-file row both docks have (shown when the model choice is a file)."""
    return setting("model_file", FileEdit, "", label="Model file", mode="r", filter="*.pt",
                   visible=False, encode=path_or_none, valid=lambda p: Path(p).is_file())


def activity_bar_setting() -> Setting:
    """Whether progress also goes to napari's activity bar (both docks; see
    :func:`._common.activity_progress` for why one may switch it off)."""
    return setting("napari_progress", CheckBox, True, text="progress in napari's activity bar",
                   tooltip="its busy animation costs CPU with software OpenGL (remote "
                   "desktops)")


def config_dir() -> Path:
    """Where the docks keep their settings (``$NSE_CONFIG_DIR``, else the user config dir)."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_config_dir(APP, appauthor=False))


def build(table: tuple[Setting, ...], owner: Any) -> dict[str, Any]:
    """Make each row's widget (static defaults as initial values) and set it as
    ``owner.<name>``; returns them by name."""
    widgets = {}
    for row in table:
        kwargs = dict(row.options)
        if not callable(row.default) and row.default not in (None, ""):
            kwargs["value"] = row.default
        widget = row.kind(**kwargs)
        setattr(owner, row.name, widget)
        widgets[row.name] = widget
    return widgets


class DockSettings:
    """The persisted values of one dock (``name``: its file stem)."""

    def __init__(self, name: str, table: tuple[Setting, ...], owner: Any) -> None:
        self.name = name
        self.table = table
        self.owner = owner
        self.applying = False
        self._warned_write = False

    @property
    def path(self) -> Path:
        return config_dir() / f"{self.name}.json"

    def widget(self, row: Setting) -> Any:
        return getattr(self.owner, row.name)

    # -- reading -----------------------------------------------------------------------
    def load(self) -> dict[str, Any]:
        """The saved values (empty when there are none or the file is unusable)."""
        path = self.path
        if not path.exists():
            return {}
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(doc, dict) or not isinstance(doc.get("values"), dict):
                raise ValueError("not a settings document")
            return dict(doc["values"])
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            warnings.warn(f"ignoring the {self.name} dock's settings file {path} ({exc}); "
                          "using the defaults", SettingsWarning, stacklevel=3)
            return {}

    def start(self) -> None:
        """Put the saved values (or the defaults) on the widgets, then save every change."""
        self.apply(self.load())
        for row in self.table:
            if row.persist:
                self.widget(row).changed.connect(self._changed)

    def restore_defaults(self) -> None:
        """Every setting back to its default (and the file with it)."""
        self.apply({})
        self.save()

    def apply(self, values: Mapping[str, Any]) -> None:
        """In table order (causes before effects): a saved value where it fits, else the
        default."""
        self.applying = True
        try:
            for row in self.table:
                if row.persist and row.name in values and self._set_saved(row, values[row.name]):
                    continue
                self._set_default(row)
        finally:
            self.applying = False

    def _set_saved(self, row: Setting, raw: Any) -> bool:
        try:
            value = row.decode(raw) if row.decode is not None else raw
            if row.valid is not None and not row.valid(value):
                return False
            self.widget(row).value = value
        except (NSEError, ValueError, TypeError, KeyError) as exc:
            log.debug("settings %s: %s=%r not restored (%s)", self.name, row.name, raw, exc)
            return False
        return True

    def _set_default(self, row: Setting) -> None:
        try:
            value = row.default(self.owner) if callable(row.default) else row.default
            widget = self.widget(row)
            if value in (None, "") and hasattr(widget, "line_edit"):
                widget.line_edit.value = ""  # an empty path (FileEdit makes "" the cwd)
            elif value is not None or isinstance(widget, Auto):
                widget.value = value
        except (NSEError, ValueError, TypeError) as exc:
            log.debug("settings %s: no default for %s (%s)", self.name, row.name, exc)

    # -- writing -----------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        out = {}
        for row in self.table:
            if row.persist:
                value = self.widget(row).value
                out[row.name] = row.encode(value) if row.encode is not None else _plain(value)
        return out

    def _changed(self, *_: Any) -> None:
        if not self.applying:
            self.save()

    def save(self) -> Path | None:
        """Write the values (atomically: a temporary file, then a rename)."""
        path = self.path
        tmp = path.with_name(path.name + ".partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"version": VERSION, "values": self.values()}, indent=1),
                           encoding="utf-8")
            os.replace(tmp, path)
        except (OSError, TypeError, ValueError) as exc:
            if not self._warned_write:  # once per dock, not on every click
                self._warned_write = True
                warnings.warn(f"cannot save the {self.name} dock's settings to {path} "
                              f"({exc})", SettingsWarning, stacklevel=2)
            return None
        return path


class SettingsOwner:
    """A dock whose form is a :class:`DockSettings`: loading the last session's values or the
    defaults sets ``_restoring`` meanwhile, so that change handlers do not take them for the
    user's, then calls ``_settings_applied``."""

    _restoring = False
    settings: DockSettings

    def _load_settings(self, how: str) -> None:
        self._restoring = True
        try:
            getattr(self.settings, how)()  # "start" or "restore_defaults"
        finally:
            self._restoring = False
        self._settings_applied()

    def _settings_applied(self) -> None:
        """What the dock updates once its values are loaded."""

    def restore_defaults(self, *_: Any) -> None:
        """Every setting of this dock back to its default (remembered as such)."""
        self._load_settings("restore_defaults")


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


class Auto(Container):
    """A number with an *auto* check box: ``value`` is ``None`` while *auto* is ticked.

    While automatic, the spin box is greyed and can show what *auto* stands for
    (:meth:`show_auto`, e.g. the model's calibrated bandwidth); unticking starts from it.
    """

    def __init__(self, spin: Callable[..., Any] = FloatSpinBox, auto_text: str = "auto",
                 value: Any = None, label: str | None = None, tooltip: str | None = None,
                 shown: Any = None, **spin_options: Any) -> None:
        self.spin = spin(**spin_options)
        if shown is not None:  # what the spin box starts from when auto is unticked
            self.spin.value = shown
        self.auto = CheckBox(text=auto_text, value=value is None)
        super().__init__(widgets=[self.spin, self.auto], layout="horizontal", labels=False,
                         label=label, tooltip=tooltip)
        self.margins = (0, 0, 0, 0)
        if tooltip:
            self.spin.tooltip = self.auto.tooltip = tooltip
        if value is not None:
            self.spin.value = value
        self.auto.changed.connect(self._sync)
        self._sync()

    @property
    def value(self) -> Any:
        return None if self.auto.value else self.spin.value

    @value.setter
    def value(self, value: Any) -> None:
        if value is None:
            self.auto.value = True
        else:
            self.spin.value = value
            self.auto.value = False
        self._sync()

    def show_auto(self, value: Any) -> None:
        """Show what *auto* means now (no ``changed`` signal)."""
        if self.auto.value and value is not None:
            with self.spin.changed.blocked():
                self.spin.value = max(self.spin.min, min(self.spin.max, value))

    def _sync(self, *_: Any) -> None:
        self.spin.enabled = not self.auto.value
