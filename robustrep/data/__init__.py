"""Benchmarks as LightningDataModules (see :mod:`robustrep.data.base` for the contract)."""

from robustrep.data.base import RobustDataModule, Splits
from robustrep.data.celeba import CelebA
from robustrep.data.chestxray import ChestXray
from robustrep.data.cifar import CIFAR10, CIFAR100, CIFAR10Coarse, CIFAR100Coarse, CIFAR100CoarseU
from robustrep.data.colored_mnist import ColoredMNISTCIM, ColoredMNISTIRM
from robustrep.data.datasets import TensorImageDataset
from robustrep.data.digit_compositions import GridMNIST, MFDominoes
from robustrep.data.imagenet9 import BackgroundChallenge
from robustrep.data.isic import ISIC
from robustrep.data.mnist import MNIST, FashionMNIST, MNISTCoarse
from robustrep.data.stl10 import STL10
from robustrep.data.synthetic import SyntheticSpurious
from robustrep.data.vipriors import VIPriors
from robustrep.data.vlcs import VLCS
from robustrep.data.waterbirds import Waterbirds

_MNIST_FILES = (
    "<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (download: true), or "
    "digits_source: sklearn (embedded)"
)

#: Every benchmark: name -> (class, expected files on disk, groups). Shown by `robustrep data list`.
BENCHMARKS: dict[str, tuple[type[RobustDataModule], str, str]] = {
    "synthetic": (
        SyntheticSpurious,
        "generated in memory (no files)",
        "label x background colour; strata = shapes",
    ),
    "mnist": (MNIST, _MNIST_FILES, "10 digits (group = class)"),
    "mnist_coarse": (MNISTCoarse, _MNIST_FILES, "0-4 vs 5-9 x digit stratum (group = digit)"),
    "fashion_mnist": (
        FashionMNIST,
        "<root>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] "
        "(download: true)",
        "10 classes",
    ),
    "colored_mnist_cim": (ColoredMNISTCIM, _MNIST_FILES, "0-4 vs 5-9 x yellow/blue background"),
    "colored_mnist_irm": (ColoredMNISTIRM, _MNIST_FILES, "noisy 0-4 vs 5-9 x red/green"),
    "grid_mnist": (GridMNIST, _MNIST_FILES, "digit x grid cell (9)"),
    "mf_dominoes": (
        MFDominoes,
        _MNIST_FILES + " + <root>/FashionMNIST/raw/...",
        "coat/dress x digit 0/1",
    ),
    "cifar10": (
        CIFAR10,
        "<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} (download: true)",
        "10 classes",
    ),
    "cifar10_coarse": (
        CIFAR10Coarse,
        "<root>/cifar-10-batches-py/ (download: true)",
        "animal/vehicle x fine-class stratum",
    ),
    "cifar100": (
        CIFAR100,
        "<root>/cifar-100-python/{train,test,meta} (download: true)",
        "100 classes",
    ),
    "cifar100_coarse": (
        CIFAR100Coarse,
        "<root>/cifar-100-python/ (download: true)",
        "20 superclasses x 5 fine classes",
    ),
    "cifar100_coarse_u": (
        CIFAR100CoarseU,
        "<root>/cifar-100-python/ (download: true)",
        "20 superclasses x 5 fine classes (500/250/100/50/50)",
    ),
    "stl10": (
        STL10,
        "<root>/stl10_binary/{train,test}_{X,y}.bin [+ unlabeled_X.bin] (download: true)",
        "10 classes",
    ),
    "celeba": (
        CelebA,
        "<root>/celeba/{list_attr_celeba.txt,list_eval_partition.txt,img_align_celeba/} "
        "or the Kaggle CSVs",
        "target x spurious attribute (default Blond_Hair x Male)",
    ),
    "waterbirds": (
        Waterbirds,
        "<root>/waterbird_complete95_forest2water2/{metadata.csv,<species>/*.jpg}",
        "landbird/waterbird x land/water",
    ),
    "background_challenge": (
        BackgroundChallenge,
        "<root>/bg_challenge/<variant>/val/<class>/ + "
        "<root>/original/train/<class>/ (IN-9 training data)",
        "9 classes; test sets original, mixed_same, mixed_rand, only_fg, no_fg",
    ),
    "vlcs": (
        VLCS,
        "<root>/VLCS/{Caltech101,LabelMe,SUN09,VOC2007}/{bird,car,chair,dog,person}/ (DomainBed)",
        "5 classes x 4 domains",
    ),
    "isic": (ISIC, "<root>/isic/{labels.csv,images/} (GEORGE)", "benign/malignant x patch"),
    "chest_xray": (
        ChestXray,
        "<root>/nih/{Data_Entry_2017.csv,images*/} + <root>/CheXpert-v1.0-small/{train.csv,train/}",
        "pneumonia x hospital (NIH/CheXpert)",
    ),
    "vipriors": (VIPriors, "<root>/imagenet_50/{train,val}/<wnid>/ + test/imgs/", "1000 classes"),
}

__all__ = [
    "BENCHMARKS",
    "BackgroundChallenge",
    "ChestXray",
    "ISIC",
    "VIPriors",
    "VLCS",
    "CelebA",
    "Waterbirds",
    "CIFAR10",
    "CIFAR100",
    "STL10",
    "CIFAR10Coarse",
    "CIFAR100Coarse",
    "CIFAR100CoarseU",
    "MNIST",
    "ColoredMNISTCIM",
    "ColoredMNISTIRM",
    "FashionMNIST",
    "GridMNIST",
    "MFDominoes",
    "MNISTCoarse",
    "RobustDataModule",
    "Splits",
    "SyntheticSpurious",
    "TensorImageDataset",
]
