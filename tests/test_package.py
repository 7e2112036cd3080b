"""The package's public API: every advertised name resolves, and importing stays cheap."""

import subprocess
import sys

import napari_shift_equivariance as nse


def test_every_public_name_resolves():
    for name in nse.__all__:
        assert getattr(nse, name) is not None, name


def test_import_loads_neither_torch_nor_qt():
    # napari imports the package to read its manifest: that must not pull torch or Qt in
    code = ("import sys, napari_shift_equivariance; "
            "print(any(m == 'torch' or m.startswith(('PyQt', 'qtpy')) for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_functions_named_like_their_module_stay_functions():
    # the README's import line; importing the submodules first must not shadow the functions
    code = ("import napari_shift_equivariance.segment, napari_shift_equivariance.train; "
            "from napari_shift_equivariance import load_model, predict, segment, compare, "
            "train; import napari_shift_equivariance as nse; "
            "print(all(callable(f) and not isinstance(f, type(nse)) for f in "
            "(predict, segment, compare, train, nse.segment, nse.train)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
