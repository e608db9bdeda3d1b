"""``from mood.detector import Detector``, as the README promises: the detector lives in
:mod:`mood.method.detector`; this module only re-exports its public names for that import."""
from .method.detector import DEFAULT_RESTORATIONS, Detector, resolve_weights

__all__ = ["DEFAULT_RESTORATIONS", "Detector", "resolve_weights"]
