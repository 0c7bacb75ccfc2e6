"""`HarnessRayLauncher`: the ``_target_`` of ``conf/hydra/launcher/ray.yaml``.

Hydra only instantiates launchers that live in the ``hydra_plugins`` namespace, and imports every
module here at start-up, so this file stays import-light: Ray and hydra-ray-launcher are
imported when a sweep is launched, by `harness.ray_launch.launch` (which holds the logic).
"""

from __future__ import annotations

from typing import Optional, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class HarnessRayLauncher(Launcher):
    """Jobs as Ray tasks; same config shape as hydra-ray-launcher's ``RayLauncher`` (``ray.init``, ``ray.remote``)."""

    def __init__(self, ray: DictConfig) -> None:
        self.ray_cfg = ray
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None
        self.config: Optional[DictConfig] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from harness.ray_launch import launch

        return launch(self, job_overrides, initial_job_idx)


__all__ = ["HarnessRayLauncher"]
