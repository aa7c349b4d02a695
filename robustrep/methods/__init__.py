"""Methods and baselines, one LightningModule per file."""

from robustrep.methods.base import Classifier, RobustMethod
from robustrep.methods.erm import ERM
from robustrep.methods.group_dro import GroupDRO
from robustrep.methods.jtt import JTT

__all__ = ["ERM", "JTT", "Classifier", "GroupDRO", "RobustMethod"]
