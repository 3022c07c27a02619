"""Deprecated alias: the module moved to :mod:`clipkit.evaluation.probe`."""
import sys
import warnings

from clipkit.evaluation import probe as _moved

warnings.warn("clipkit.probe moved to clipkit.evaluation.probe; import it from there",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved  # the old name gives the moved module itself
