"""The command-line benchmark: ``python -m captum_paths.benchmark`` (see ``__main__`` for the flags).

Modules: ``data`` (digits, MNIST / CIFAR-10 / image-folder loaders, the synthetic localisation set),
``models`` (the SAMP paper's CNN, ResNet-50 wrapper, training), ``cache`` (trained-model cache),
``methods`` (the compared attributions and their knobs), ``runner`` (protocols and the run),
``report`` (table, claims, JSON, figures).
"""
