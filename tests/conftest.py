import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny nets gain nothing from intra-op threads, and lose a lot on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _widget_settings_dir(tmp_path_factory, monkeypatch):
    """The napari docks remember their settings; in tests never in the real user folder."""
    monkeypatch.setenv("NSE_CONFIG_DIR", str(tmp_path_factory.mktemp("nse-config")))


@pytest.fixture
def clean_registry():
    """The docks' in-session model registry, empty before and after the test."""
    from napari_shift_equivariance._widgets._registry import REGISTRY

    REGISTRY.clear()
    yield REGISTRY
    REGISTRY.clear()


@pytest.fixture
def errors(monkeypatch):
    """Messages the widgets show with napari's show_error (one line each)."""
    from napari_shift_equivariance._widgets import _common

    seen: list[str] = []
    monkeypatch.setattr(_common, "show_error", seen.append)
    return seen
