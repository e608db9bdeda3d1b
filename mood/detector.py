"""``from mood.detector import Detector``, as the README promises: the detector lives in
:mod:`mood.detection.detector`; this module only re-exports its public names for that import."""
from .detection.detector import DEFAULT_RESTORATIONS, Detector, resolve_weights

__all__ = ["DEFAULT_RESTORATIONS", "Detector", "resolve_weights"]
