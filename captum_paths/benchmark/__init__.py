"""The benchmark: ``python -m captum_paths.benchmark`` (see ``__main__`` for the flags), also under
``torchrun``, and :func:`compare` for your own model and data.

Modules: ``data`` (digits, MNIST / CIFAR-10 / image-folder loaders, the synthetic localisation set),
``models`` (the SAMP paper's CNN, ResNet-50 wrapper, training, ``--model`` builders), ``cache``
(trained-model cache), ``methods`` (the compared attributions and their knobs), ``runner`` (the
command-line run), ``engine`` (chunks, per-image seeding, sharding, merge), ``progress`` (resumable
records), ``distributed`` (torch.distributed set-up), ``sources`` (tensors, datasets, DataLoaders),
``comparison`` (:func:`compare`), ``report`` (table, claims, JSON, figures).
"""

from captum_paths.benchmark.comparison import Comparison, compare
from captum_paths.benchmark.engine import METRICS
from captum_paths.benchmark.methods import METHOD_NAMES, OPTIONAL_METHOD_NAMES

__all__ = ["compare", "Comparison", "METHOD_NAMES", "OPTIONAL_METHOD_NAMES", "METRICS"]
