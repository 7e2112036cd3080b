"""Export a model as a bioimage.io model package (format 0.5): one ``.zip`` to share.

The package holds ``pytorch_state_dict`` weights (architecture :class:`BioimageioUNet`, imported
from this library, keyword arguments = the model configuration) and ``torchscript`` weights.
Its axes encode exact tiling: valid input sizes are ``min_input + n·f^l`` per spatial axis
(``ParameterizedSize``) and the output is the input minus the network context
(``SizeReference`` with ``offset = -context``), because the valid-convolution U-Net removes its
halo itself. Output channels: the embedding, then the foreground probability, as
``nse predict`` writes them. The percentile normalisation is the input's ``scale_range``
preprocessing. Instances need this package's mean-shift (``nse segment``): the package's
README says so.

The test input is an image padded by half the context on each side (reflect, as
:class:`~predict.Predictor` pads), and the test output is :class:`~predict.Predictor`'s
output on the image itself, so the package reproduces ``nse predict``. For percentile
normalisation the image is first clipped at percentiles chosen so that the padded tensor and
the image share their normalisation (bioimage.io computes percentiles on the tensor it gets).

``bioimageio.spec`` is needed only here (``pip install napari-shift-equivariance[bioimageio]``).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, normalize
from .errors import NSEError
from .geometry import Coordinate, Roi, as_tuple
from .io import atomic_path, check_output_path, read_box
from .model import ModelConfig, UNet, load_model
from .options import CALIBRATION_KEYS

FORMAT = "bioimageio"
SPATIAL_AXES = {2: ("y", "x"), 3: ("z", "y", "x")}
#: Test image size: the smallest valid output at least this large, per axis.
TEST_SIZE = {2: 128, 3: 24}
#: A larger sample image is cropped (centrally) to at most this size per axis.
MAX_TEST_SIZE = {2: 256, 3: 48}
_CITE_URL = "https://github.com/Kainmueller-Lab/shift_equivariance_unet"
_CITE_TEXT = ("Rumberger, Yu, Hirsch, Dohmen, Guarino, Mokarian, Mais, Funke, Kainmueller. "
              "How Shift Equivariance Impacts Metric Learning for Instance Segmentation. "
              "ICCV 2021.")
#: ``ModelConfig`` fields the architecture needs; ``extra`` (training record, calibration)
#: goes to the package's ``config`` instead.
_ARCH_FIELDS = ("ndim", "depth", "factor", "in_channels", "base_channels", "growth",
                "upsampling", "embedding_dim", "normalization", "window", "loss", "version")


class BioimageioUNet(UNet):
    """:class:`~model.UNet` as a bioimage.io package runs it.

    Built from keyword arguments (the :class:`~model.ModelConfig` fields), with the same
    state dict as :class:`~model.UNet`; the last output channel is the foreground
    *probability* (sigmoid of the logit), as :class:`~predict.Predictor` returns it.
    """

    def __init__(self, **config: Any):
        super().__init__(ModelConfig.from_dict(config))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return torch.cat([y[:, :-1], torch.sigmoid(y[:, -1:])], dim=1)


def _require_bioimageio() -> None:
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError:
        raise NSEError("bioimage.io export needs bioimageio.spec: pip install "
                       "'napari-shift-equivariance[bioimageio]'") from None


def _wrapper(model: UNet) -> BioimageioUNet:
    cfg = model.config.to_dict()
    net = BioimageioUNet(**{k: cfg[k] for k in _ARCH_FIELDS})
    net.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return net.eval()


def sample_shape(config: ModelConfig, shape: Sequence[int] | None = None) -> Coordinate:
    """The smallest valid *output* size at least ``shape`` (default :data:`TEST_SIZE`), so
    that image + context is a valid network input."""
    return config.geometry.valid_output_above(shape or TEST_SIZE[config.ndim])


def _sample_image(config: ModelConfig, sample: Any, seed: int) -> np.ndarray:
    """The test image: the given sample (cropped to a valid output size) or generated nuclei,
    with the model's channels first when it has more than one."""
    from .data import nuclei

    nd, c = config.ndim, config.in_channels
    if sample is None:
        shape = tuple(sample_shape(config))
        image = nuclei(shape, seed=seed)[0].astype(np.float32)
        return np.stack([image] * c) if c > 1 else image
    sample = np.asarray(sample, dtype=np.float32)
    expect = nd + (1 if c > 1 else 0)
    if sample.ndim != expect or (c > 1 and sample.shape[0] != c):
        raise NSEError(f"the sample image must have shape ({'C, ' if c > 1 else ''}"
                       f"{', '.join(SPATIAL_AXES[nd])}) for this {nd}D model with {c} "
                       f"channel(s), got {sample.shape}")
    spatial = sample.shape[-nd:]
    valid = config.geometry.valid_output_sizes(1)[0]
    if any(s < m for s, m in zip(spatial, valid)):
        raise NSEError(f"the sample image {spatial} is smaller than the smallest valid "
                       f"output {tuple(config.geometry.min_output)}")
    g = config.geometry
    # the largest valid output size inside the sample, at most MAX_TEST_SIZE: a central crop
    cap = [max(s, m) for s, m in zip(as_tuple(MAX_TEST_SIZE[nd], nd), g.min_output)]
    keep = [m + ((min(s, c) - m) // k) * k
            for s, c, m, k in zip(spatial, cap, g.min_output, g.grid)]
    crop = tuple(slice((s - k) // 2, (s - k) // 2 + k) for s, k in zip(spatial, keep))
    return np.ascontiguousarray(sample[(..., *crop)])


def _pad(image: np.ndarray, config: ModelConfig) -> np.ndarray:
    """The image padded by half the context per side, exactly as the predictor reads it."""
    nd = config.ndim
    half = config.geometry.half_context
    roi = Roi(-half, Coordinate(image.shape[-nd:]) + config.geometry.context)
    if image.ndim == nd:
        return read_box(image, roi, "reflect")[0]
    return np.stack([read_box(image, roi, "reflect", lead=(i,))[0]
                     for i in range(image.shape[0])])


def _match_percentiles(image: np.ndarray, config: ModelConfig) -> np.ndarray:
    """Clip ``image`` so that its padded version has the same low/high percentiles.

    Percentiles of a clipped image are its clip values as long as enough pixels sit at
    them; the padded tensor holds the image once, so clipping at ``low * |padded| / |image|``
    per cent (and likewise at the top) is enough.
    """
    spec = config.normalization or normalize.DEFAULT
    if spec.get("kind", "percentile") != "percentile":
        return image
    low, high = float(spec.get("low", 1.0)), float(spec.get("high", 99.8))
    nd = config.ndim
    ratio = math.prod(s + c for s, c in zip(image.shape[-nd:], config.geometry.context))
    ratio /= math.prod(image.shape[-nd:])
    q_lo = min(49.0, 1.25 * low * ratio + 0.1) if low > 0 else 0.0
    q_hi = max(51.0, 100.0 - 1.25 * (100.0 - high) * ratio - 0.1) if high < 100 else 100.0
    lo, hi = np.percentile(image, [q_lo, q_hi])
    clipped = np.clip(image, lo, hi).astype(np.float32)
    a = normalize.normalization_params(clipped, spec)
    b = normalize.normalization_params(_pad(clipped, config), spec)
    if not np.allclose(a, b, rtol=1e-6, atol=1e-6):
        raise NSEError("could not make a test image whose padded version shares its "
                       "normalisation; give another sample image")
    return clipped


def _preprocessing(config: ModelConfig, axes: Sequence[str]) -> list[Any]:
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        ScaleLinearDescr,
        ScaleLinearKwargs,
        ScaleRangeDescr,
        ScaleRangeKwargs,
    )

    spec = config.normalization or normalize.DEFAULT
    kind = spec.get("kind", "percentile")
    if kind == "none":
        return []
    if kind == "fixed":
        scale = float(spec["scale"])
        return [ScaleLinearDescr(kwargs=ScaleLinearKwargs(
            gain=1.0 / scale, offset=-float(spec["offset"]) / scale))]
    if kind == "percentile":
        # one pair of percentiles over all channels and spatial axes, as normalize.py does
        return [ScaleRangeDescr(kwargs=ScaleRangeKwargs(
            axes=[AxisId(a) for a in axes], min_percentile=float(spec.get("low", 1.0)),
            max_percentile=float(spec.get("high", 99.8)), eps=1e-6))]
    raise NSEError(f"normalisation kind {kind!r} cannot be exported")


def _coordinates_note(config: ModelConfig) -> str:
    """One sentence (no line break, so the README stays dedented) for models trained with
    coordinates: clustering must add them back."""
    from .options import model_coord_scale

    scale = model_coord_scale(config)
    if not scale:
        return ""
    axes = ", ".join(SPATIAL_AXES[config.ndim])
    return (f" The first {config.ndim} embedding channels are offsets: before clustering add "
            f"{scale:g} times each pixel's global position in pixels ({axes}) to them "
            "(coordinate scale in the loss settings; napari-shift-equivariance does this).")


def _readme(config: ModelConfig, name: str) -> str:
    g = config.geometry
    cal = {k: config.extra.get(k) for k in CALIBRATION_KEYS
           if (config.extra or {}).get(k) is not None}
    return textwrap.dedent(f"""\
        # {name}

        A {config.ndim}D valid-convolution U-Net (depth l={g.depth}, pooling factor
        f={tuple(g.factor)}) trained with the discriminative loss, exported by
        napari-shift-equivariance {__version__}.

        ## Output: embeddings, not labels

        The output has {config.out_channels} channels: {config.embedding_dim} embedding
        channels, then the foreground probability. **The embeddings are not instance labels:**
        instances come from clustering the embeddings of foreground pixels with mean-shift.
        Use napari-shift-equivariance for that (`nse segment IMAGE --model MODEL.pt`, or
        `segment()` / `instances_from_prediction()` in Python), with its bandwidth
        {cal.get('bandwidth', 'from the loss margins')}.{_coordinates_note(config)}

        ## Sizes and exact tiling

        Valid inputs are `{tuple(g.min_input)} + n * {tuple(g.grid)}` per spatial axis
        ({', '.join(SPATIAL_AXES[config.ndim])}); the output is the input minus the context
        {tuple(g.context)}, centred (half the context is removed on each side). To predict
        an image of any size, pad it by half the context on each side (reflect) and cut it
        into output tiles of `n * f^l` = multiples of {tuple(g.grid)} placed on the global
        `f^l` grid: the stitched result then equals one pass over the whole image
        (Rumberger et al., ICCV 2021, Cor. 4). `nse predict` does exactly this.

        ## Normalisation

        `{config.normalization}`: bioimage.io computes percentiles on the tensor it is
        given, `nse predict` on the whole image; on tiles or padded inputs the two can
        differ slightly. The test input is padded so that both agree.

        ## Calibration

        `{cal or 'none stored'}` (mean-shift bandwidth, foreground threshold, minimum
        size in pixels, minimum size as a fraction of the image's median instance size,
        spatial radius: the pixels of position that weigh one bandwidth in the clustering
        space, 0 = positions not used; relative bandwidth, when above 0: cluster each image
        at that fraction of coordinate scale x the median object diameter found by a first
        clustering of its central sample at the bandwidth).

        ## Validation

        The test input is a {config.ndim}D image padded by half the context per side
        (reflect); the test output is what `nse predict` (napari-shift-equivariance's
        `Predictor`, whole-image pass) returns for the image itself. Running the package on the
        test input with `bioimageio.core` reproduces it (`bioimageio test model.zip`), and
        correct tiles (`nse predict --tile`) equal the whole-image pass to ~1e-6.
        """)


def export_bioimageio(
    model: UNet | str | os.PathLike,
    path: str | os.PathLike,
    *,
    name: str | None = None,
    description: str | None = None,
    authors: Sequence[str] = ("napari-shift-equivariance user",),
    license: str = "BSD-3-Clause",
    sample: Any = None,
    seed: int = 0,
    torchscript: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a bioimage.io model package (format 0.5) to ``path`` (``.zip``).

    Parameters
    ----------
    model
        A :class:`~model.UNet` or a model spec for :func:`~model.load_model`.
    sample
        Test image (``(C,) *spatial``), centrally cropped to a valid output size of at most
        :data:`MAX_TEST_SIZE`; default: generated nuclei of :func:`sample_shape`.
    torchscript
        Also write TorchScript weights (traced).
    overwrite
        Replace an existing ``path``; without it an existing file is an error.

    Returns the path; the file appears only when complete.
    """
    _require_bioimageio()
    from bioimageio.spec import ValidationContext, save_bioimageio_package
    from bioimageio.spec.model.v0_5 import (
        Author,
        CiteEntry,
        FileDescr,
        InputTensorDescr,
        LicenseId,
        ModelDescr,
        OutputTensorDescr,
        TensorId,
        WeightsDescr,
    )

    path = Path(path)
    with _spec_errors():
        try:
            license_id = LicenseId(license)
        except ValueError:
            raise NSEError(f"unknown licence {license!r}: use an SPDX id such as "
                           f"BSD-3-Clause, MIT or CC-BY-4.0") from None
    if path.suffix.lower() != ".zip":
        raise NSEError(f"a bioimage.io package is a .zip file, got {path.name}")
    check_output_path(path, overwrite)
    if not isinstance(model, UNet):
        model = load_model(model)
    config = model.config
    g = config.geometry
    name = name or f"napari-shift-equivariance {config.ndim}D embeddings"
    net = _wrapper(model)

    image = _match_percentiles(_sample_image(config, sample, seed), config)
    test_in = _pad(image, config)
    if config.in_channels == 1:
        test_in = test_in[None]
    test_in = test_in[None].astype(np.float32)  # batch, channel, *spatial
    test_out = _predictor_output(model, image)[None]
    spatial = SPATIAL_AXES[config.ndim]
    in_id, out_id = TensorId("input"), TensorId("output")

    with tempfile.TemporaryDirectory(prefix="nse-export-") as tmp_dir:
        tmp = Path(tmp_dir)
        np.save(tmp / "test_input.npy", test_in)
        np.save(tmp / "test_output.npy", test_out)
        _write_tif(tmp / "sample_input.tif", test_in[0, 0] if config.in_channels == 1
                   else test_in[0])
        _write_tif(tmp / "sample_output.tif", test_out[0])
        (tmp / "README.md").write_text(_readme(config, name), encoding="utf-8")

        in_axes, out_axes = _axes(config, in_id)
        weights = _weights(net, config, tmp, test_in if torchscript else None)
        with ValidationContext(perform_io_checks=False), _spec_errors():
            descr = ModelDescr(
                name=name,
                description=description or (
                    f"{config.ndim}D U-Net with valid convolutions (l={g.depth}, "
                    f"f={tuple(g.factor)}): per-pixel embeddings for mean-shift instance "
                    f"segmentation, and a foreground probability; exact tile-and-stitch "
                    f"with output tiles n*{tuple(g.grid)}."),
                authors=[Author(name=a) for a in authors],
                cite=[CiteEntry(text=_CITE_TEXT, url=_CITE_URL)],
                license=license_id,
                documentation=FileDescr(source=tmp / "README.md"),
                tags=["instance-segmentation", "metric-learning", "embeddings",
                      f"{config.ndim}d", "napari-shift-equivariance", "unet"],
                inputs=[InputTensorDescr(
                    id=in_id, axes=in_axes, test_tensor=FileDescr(source=tmp / "test_input.npy"),
                    sample_tensor=FileDescr(source=tmp / "sample_input.tif"),
                    preprocessing=_preprocessing(config, ["channel", *spatial]),
                    description="raw image, padded by half the context per side")],
                outputs=[OutputTensorDescr(
                    id=out_id, axes=out_axes,
                    test_tensor=FileDescr(source=tmp / "test_output.npy"),
                    sample_tensor=FileDescr(source=tmp / "sample_output.tif"),
                    description="embedding channels, then foreground probability")],
                weights=WeightsDescr(**weights),
                config={"napari-shift-equivariance": {
                    "version": __version__,
                    "model_config": _yaml_safe(config.to_dict()),
                    "grid": list(g.grid), "context": list(g.context),
                    "min_input": list(g.min_input),
                }},
            )
        with atomic_path(path, overwrite) as part:
            # the packer picks its format from the suffix: write <name>.zip inside a
            # temporary folder, then move it onto the .partial that atomic_path renames
            packed = tmp / "package.zip"
            save_bioimageio_package(descr, output_path=packed)
            shutil.move(packed, part)  # a copy when the temporary folder is elsewhere
    return path


def _axes(config: ModelConfig, in_id: Any) -> tuple[list[Any], list[Any]]:
    """Input axes with valid sizes ``min_input + n·f^l``; output axes ``input - context``."""
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        BatchAxis,
        ChannelAxis,
        Identifier,
        ParameterizedSize,
        SizeReference,
        SpaceInputAxis,
        SpaceOutputAxis,
    )

    g = config.geometry
    spatial = SPATIAL_AXES[config.ndim]
    in_axes = [
        BatchAxis(),
        ChannelAxis(channel_names=[Identifier(f"channel{i}")
                                   for i in range(config.in_channels)]),
        *[SpaceInputAxis(id=AxisId(a), size=ParameterizedSize(min=int(m), step=int(s)))
          for a, m, s in zip(spatial, g.min_input, g.grid)],
    ]
    out_axes = [
        BatchAxis(),
        ChannelAxis(channel_names=[
            *(Identifier(f"embedding{i}") for i in range(config.embedding_dim)),
            Identifier("foreground")]),
        # the valid convolutions remove the halo themselves: the output is smaller
        *[SpaceOutputAxis(id=AxisId(a), size=SizeReference(
            tensor_id=in_id, axis_id=AxisId(a), offset=-int(c)))
          for a, c in zip(spatial, g.context)],
    ]
    return in_axes, out_axes


def _weights(net: BioimageioUNet, config: ModelConfig, folder: Path,
             trace_input: np.ndarray | None) -> dict[str, Any]:
    """State-dict weights (plain tensors) and, given an input to trace, TorchScript."""
    from bioimageio.spec.model.v0_5 import (
        ArchitectureFromLibraryDescr,
        Identifier,
        PytorchStateDictWeightsDescr,
        TorchscriptWeightsDescr,
        Version,
    )

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    torch.save(state, folder / "weights.pt")
    version = Version(torch.__version__.split("+")[0])
    weights = {"pytorch_state_dict": PytorchStateDictWeightsDescr(
        source=folder / "weights.pt",
        architecture=ArchitectureFromLibraryDescr(
            callable=Identifier("BioimageioUNet"),
            import_from="napari_shift_equivariance.export",
            kwargs={k: v for k, v in config.to_dict().items() if k in _ARCH_FIELDS},
        ),
        pytorch_version=version,
    )}
    if trace_input is not None:
        _trace(net, trace_input, folder / "weights_torchscript.pt")
        weights["torchscript"] = TorchscriptWeightsDescr(
            source=folder / "weights_torchscript.pt", pytorch_version=version,
            parent="pytorch_state_dict")
    return weights


@contextlib.contextmanager
def _spec_errors() -> Iterator[None]:
    """A description the spec rejects (a bad licence id, name, author) as one clear line."""
    from pydantic import ValidationError

    try:
        yield
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        msg = str(first.get("msg", exc)).splitlines()[0]
        if len(msg) > 160:
            msg = msg[:160] + "..."
        raise NSEError(f"bioimage.io rejects the package description: "
                       f"{where + ': ' if where else ''}{msg}") from None


def check_package(path: str | os.PathLike, weight_format: str | None = None,
                  devices: Sequence[str] = ("cpu",)) -> tuple[str, list[str]]:
    """Test-run a package with ``bioimageio.core.test_model`` in this environment, offline.

    Returns the summary status (``"passed"`` or ``"failed"``) and one line per failed check.
    The seeds and flags ``test_model`` sets are restored afterwards.
    """
    _require_bioimageio()
    try:
        from bioimageio.core import test_model
    except ImportError:
        raise NSEError("testing a package needs bioimageio.core: pip install "
                       "'napari-shift-equivariance[bioimageio]'") from None
    with _restored_global_state():
        summary = test_model(str(path), weight_format=weight_format, devices=list(devices))
    failed = [f"{d.name}: {e.msg}".splitlines()[0]
              for d in summary.details if d.status == "failed" for e in (d.errors or [])]
    return str(summary.status), failed


@contextlib.contextmanager
def _restored_global_state() -> Iterator[None]:
    """Undo what ``bioimageio.core``'s determinism set-up changes process-wide."""
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global state is what it seeds
    deterministic = torch.are_deterministic_algorithms_enabled()
    env = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        torch.use_deterministic_algorithms(deterministic)
        if env is None:
            os.environ.pop("TF_ENABLE_ONEDNN_OPTS", None)
        else:
            os.environ["TF_ENABLE_ONEDNN_OPTS"] = env


def _predictor_output(model: UNet, image: np.ndarray) -> np.ndarray:
    """``nse predict``'s output, from a CPU copy (the caller's model stays where it is)."""
    from .predict import Predictor

    copy = UNet(model.config)
    copy.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return Predictor(copy, "cpu").run(image, "whole")


def _trace(net: BioimageioUNet, example: np.ndarray, path: Path) -> None:
    """TorchScript by tracing (the forward loops over module lists with Python ``zip``)."""
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is what bioimage.io runs; torch's deprecation note is not for users
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(net, torch.from_numpy(example), check_trace=False)
    traced.save(str(path))


def _write_tif(path: Path, array: np.ndarray) -> None:
    import tifffile

    tifffile.imwrite(path, np.ascontiguousarray(array, dtype=np.float32),
                     photometric="minisblack")


def _yaml_safe(value: Any) -> Any:
    """Plain YAML types only (tuples become lists)."""
    if isinstance(value, dict):
        return {str(k): _yaml_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_yaml_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
