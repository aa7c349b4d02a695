"""Methods and baselines, one LightningModule per file."""

from robustrep.methods.base import Classifier, RobustMethod
from robustrep.methods.chroma_vae import ChromaVAE
from robustrep.methods.cim import CIM
from robustrep.methods.crltac import CRLTAC
from robustrep.methods.distill import Distill
from robustrep.methods.erm import ERM
from robustrep.methods.group_dro import GroupDRO
from robustrep.methods.ipirm import IPIRM
from robustrep.methods.jtt import JTT
from robustrep.methods.naive_vae import NaiveIndependent, NaiveVAEClass
from robustrep.methods.spread_supcon import SpreadSupCon

__all__ = [
    "CRLTAC",
    "ChromaVAE",
    "NaiveIndependent",
    "NaiveVAEClass",
    "CIM",
    "ERM",
    "JTT",
    "Classifier",
    "GroupDRO",
    "Distill",
    "IPIRM",
    "RobustMethod",
    "SpreadSupCon",
]
