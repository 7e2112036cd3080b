"""The held-out crop joins training for the run's last stretch (``TrainConfig.refit``).

With one annotated image the automatic validation crop is a large share of all annotations
(at least one training window: 100 of 283 rows of the real nuclei in the benchmark, holding
four of their six touching pairs), and the model never learns from it. With ``refit`` the
crop is held out until ``1 - refit`` of the run, its AP is measured then (the honest figure,
on a copy of the model calibrated as the final calibration would be), and then it is
sampled like the rest of the training data until the end.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..model import UNet
from .calibrate import calibrate, evaluate
from .config import TrainConfig

#: the history key of the iteration at which the crop joined training
HISTORY_KEY = "refit_heldout_ap"


def heldout_ap(model: UNet, val: tuple[list, list], config: TrainConfig,
               device: torch.device) -> float:
    """AP@0.5 of the held-out split at the model's (calibrated) settings."""
    return float(evaluate(model, *val, ignore_index=config.ignore_index,
                          device=str(device))["ap"])


class Refit:
    """When the held-out crop joins training, and its AP measured just before."""

    def __init__(self, config: TrainConfig, val: Any, validation_given: bool,
                 history: list[dict]):
        share = config.refit_share
        on = share > 0 and val is not None and not validation_given
        self.at = 1.0 - share if on else None
        self.heldout_ap: float | None = None
        self.iteration: int | None = None  # iterations done when the crop joined
        for entry in history:  # resumed after the switch: the figure was measured before
            if HISTORY_KEY in entry:
                self.heldout_ap, self.iteration = entry[HISTORY_KEY], entry["iteration"] - 1

    @property
    def done(self) -> bool:
        return self.iteration is not None

    def due(self, fraction: float) -> bool:
        return self.at is not None and not self.done and fraction >= self.at

    def measure(self, model: UNet, cal_data: tuple[list, list], cal_desc: str,
                val: tuple[list, list], config: TrainConfig, device: torch.device,
                iteration: int, time_limit: float | None = None) -> float:
        """Calibrate a copy of ``model`` on the final calibration's data (within
        ``time_limit`` seconds: the best settings found by then) and score the crop at its
        settings; ``model`` itself is left as it is (in training mode)."""
        probe = copy.deepcopy(model)
        cal = calibrate(probe, *cal_data, ignore_index=config.ignore_index, device=str(device),
                        data=cal_desc, time_limit=time_limit)
        cal.apply(probe)
        self.heldout_ap = heldout_ap(probe, val, config, device)
        self.iteration = iteration
        model.train()
        return self.heldout_ap

    def note(self) -> str:
        return (f"the held-out crop joined training after iteration {self.iteration} "
                f"(refit); its AP@0.5 {self.heldout_ap:.3f} was measured then")
