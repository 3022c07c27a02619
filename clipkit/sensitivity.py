"""Deprecated alias: the module moved to :mod:`clipkit.evaluation.sensitivity`."""
import sys
import warnings

from clipkit.evaluation import sensitivity as _moved

warnings.warn("clipkit.sensitivity moved to clipkit.evaluation.sensitivity; import it from there",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved  # the old name gives the moved module itself
