"""captum_paths: path-choice attribution methods and their evaluation protocols, for Captum."""

__version__ = "0.1.0"

from captum_paths.attr import *  # noqa: F401,F403
from captum_paths.attr import __all__ as _attr_all

__all__ = list(_attr_all)
