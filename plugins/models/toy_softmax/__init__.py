"""toy_softmax: the one-third time-scaling teacher-student model (see family.py, train.py)."""

from harness_plugins.models.toy_softmax.family import ToySoftmaxCheckpoint, ToySoftmaxFamily

__all__ = ["ToySoftmaxCheckpoint", "ToySoftmaxFamily"]
