"""The valid-convolution U-Net, its configuration, and model files.

A model file (``.pt``) holds the weights and the full :class:`ModelConfig` so that a model can be
rebuilt without any other input. It is loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .errors import NSEError
from .geometry import UNetGeometry, as_tuple
from .loss import DEFAULT_DELTA_D, DEFAULT_DELTA_V
from .options import check_known_fields

FORMAT = "napari-shift-equivariance/model"
FORMAT_VERSION = 1
DEFAULT_MODEL_DIR = Path(__file__).parent / "models"


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model and use it the way it was trained."""

    ndim: int = 2
    depth: int = 3
    factor: tuple[int, ...] = (2, 2)
    in_channels: int = 1
    base_channels: int = 16
    growth: int = 2
    upsampling: str = "learnt"
    embedding_dim: int = 8
    normalization: dict[str, Any] = field(
        default_factory=lambda: {"kind": "percentile", "low": 1.0, "high": 99.8}
    )
    window: tuple[int, ...] | None = None
    loss: dict[str, Any] = field(
        default_factory=lambda: {"delta_v": DEFAULT_DELTA_V, "delta_d": DEFAULT_DELTA_D})
    version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.factor = as_tuple(self.factor, self.ndim, "factor")
        if self.window is not None:
            self.window = as_tuple(self.window, self.ndim, "window")
        _ = self.geometry  # validates ndim, depth, factor
        if self.upsampling not in ("learnt", "nearest"):
            raise NSEError(f"upsampling must be 'learnt' or 'nearest', got {self.upsampling!r}")
        for name in ("in_channels", "base_channels", "growth", "embedding_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise NSEError(f"{name} must be a positive integer, got {v!r}")

    @property
    def geometry(self) -> UNetGeometry:
        return UNetGeometry.create(self.ndim, self.depth, self.factor)

    @property
    def out_channels(self) -> int:
        """Embedding channels plus one foreground logit."""
        return self.embedding_dim + 1

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["factor"] = list(self.factor)
        d["window"] = list(self.window) if self.window is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        check_known_fields(cls, d, "model configuration keys")
        return cls(**d)


def _conv(ndim: int) -> type[nn.Module]:
    return nn.Conv2d if ndim == 2 else nn.Conv3d


def _convt(ndim: int) -> type[nn.Module]:
    return nn.ConvTranspose2d if ndim == 2 else nn.ConvTranspose3d


def _pool(ndim: int) -> type[nn.Module]:
    return nn.MaxPool2d if ndim == 2 else nn.MaxPool3d


class ConvBlock(nn.Sequential):
    """Two valid 3×3(×3) convolutions, each followed by ReLU."""

    def __init__(self, ndim: int, c_in: int, c_out: int, n: int = 2):
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [_conv(ndim)(c_in if i == 0 else c_out, c_out, 3), nn.ReLU()]
        super().__init__(*layers)


class Upsample(nn.Module):
    """Upsampling by ``factor``: transposed conv (learnt) or nearest + 1×1 conv (fixed)."""

    def __init__(self, ndim: int, c_in: int, c_out: int, factor: tuple[int, ...], kind: str):
        super().__init__()
        self.kind = kind
        self.factor = factor
        if kind == "learnt":
            self.conv = _convt(ndim)(c_in, c_out, kernel_size=factor, stride=factor)
        else:
            self.conv = _conv(ndim)(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "learnt":
            return torch.relu(self.conv(x))
        x = nn.functional.interpolate(x, scale_factor=self.factor, mode="nearest")
        return self.conv(x)


def center_crop(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Crop the spatial axes of ``x`` (N, C, ...) to ``shape`` around the centre."""
    slices = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], shape):
        start = (have - want) // 2
        slices.append(slice(start, start + want))
    return x[tuple(slices)]


class UNet(nn.Module):
    """U-Net with valid convolutions: ``l`` poolings of factor ``f``, periodic-``f^l`` equivariant.

    Output channels: ``embedding_dim`` embedding channels, then one foreground logit.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        nd, f = config.ndim, config.factor
        chans = [config.base_channels * config.growth**k for k in range(config.depth + 1)]
        self.down = nn.ModuleList()
        c_prev = config.in_channels
        for k in range(config.depth):
            self.down.append(ConvBlock(nd, c_prev, chans[k]))
            c_prev = chans[k]
        self.pool = _pool(nd)(kernel_size=f, stride=f)
        self.bottom = ConvBlock(nd, chans[-2], chans[-1])
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for k in reversed(range(config.depth)):
            self.up.append(Upsample(nd, chans[k + 1], chans[k], f, config.upsampling))
            self.up_conv.append(ConvBlock(nd, 2 * chans[k], chans[k]))
        self.head = _conv(nd)(chans[0], config.out_channels, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation: keeps activations from vanishing through the deep valid path."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d | nn.ConvTranspose3d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips)):
            x = up(x)
            x = conv(torch.cat([center_crop(skip, x.shape[2:]), x], dim=1))
        return self.head(x)


def build_model(config: ModelConfig | None = None, seed: int | None = None, **kwargs) -> UNet:
    """A model with freshly initialised weights (seeded when ``seed`` is given)."""
    if config is None:
        config = ModelConfig(**kwargs)
    elif kwargs:
        raise TypeError("pass either a config or keyword arguments, not both")
    if seed is None:
        return UNet(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet(config)


def save_model(model: UNet, path: str | os.PathLike, *, overwrite: bool = False,
               extra: dict[str, Any] | None = None) -> Path:
    """Write weights + configuration to one ``.pt`` file, atomically (temp file, then rename)."""
    path = Path(path)
    if path.suffix != ".pt":
        raise NSEError(f"model files end in .pt, got {path.name}")
    if path.exists() and not overwrite:
        raise NSEError(f"{path} exists; refusing to overwrite it (use --overwrite)")
    if not path.parent.exists():
        raise NSEError(f"folder {path.parent} does not exist")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    tmp = path.with_name(path.name + ".partial")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def default_model_path(ndim: int = 2) -> Path:
    return DEFAULT_MODEL_DIR / f"default_{ndim}d.pt"


def resolve_model_path(spec: str | os.PathLike, ndim: int | None = None) -> Path:
    """``default`` / ``default2d`` / ``default3d``: the bundled models; anything else: a file."""
    s = str(spec)
    if s in ("default", "default2d", "default3d"):
        nd = 3 if s == "default3d" else (ndim or 2)
        p = default_model_path(nd)
        if not p.exists():
            raise NSEError(f"no bundled default {nd}D model in this installation ({p.name})")
        return p
    return Path(spec)


def load_model(spec: str | os.PathLike | UNet, device: str | torch.device = "cpu",
               ndim: int | None = None) -> UNet:
    """Load a model file (or ``default``); a bad, foreign or newer file gets a clear error."""
    if isinstance(spec, UNet):
        return spec.to(device)
    path = resolve_model_path(spec, ndim)
    if not path.exists():
        raise NSEError(f"model file {path} does not exist")
    if path.is_dir():
        raise NSEError(f"model path {path} is a folder, not a .pt file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise NSEError(
            f"{path} is not a readable model file (corrupt, truncated or not a torch file): "
            f"{type(exc).__name__}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise NSEError(f"{path} is not a napari-shift-equivariance model file")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise NSEError(
            f"{path} was written by a newer version ({payload.get('package_version')}); "
            f"upgrade napari-shift-equivariance"
        )
    config = ModelConfig.from_dict(payload["config"])
    model = UNet(config)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError:
        raise NSEError(f"{path}: weights do not match its configuration") from None
    model.eval()
    return model.to(device)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for ``"auto"`` (cuda > mps > cpu), ``"cpu"``, ``"cuda[:N]"`` or ``"mps"``.

    Raises :class:`NSEError` when the device is unknown or not available here.
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise NSEError("device 'mps' is not available on this machine")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        index = name[5:]
        if index and not index.isdigit():
            raise NSEError(f"bad device {device!r}: use cuda or cuda:N")
        if not torch.cuda.is_available():
            raise NSEError(f"device {device!r} is not available: no CUDA GPU found")
        if index and int(index) >= torch.cuda.device_count():
            raise NSEError(f"device {device!r} is not available: "
                           f"{torch.cuda.device_count()} CUDA device(s) found")
        return torch.device(name)
    raise NSEError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """The device choices present on this machine (for widgets)."""
    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out.insert(1, "cuda")
    if _mps_available():
        out.insert(1, "mps")
    return out
