"""Deprecated alias: the module moved to :mod:`clipkit.evaluation.bench`."""
import sys
import warnings

from clipkit.evaluation import bench as _moved

warnings.warn("clipkit.bench moved to clipkit.evaluation.bench; import it from there",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved  # the old name gives the moved module itself
