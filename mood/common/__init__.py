"""What both methods share: slices in and out of volumes (:mod:`~mood.common.slicing`), devices
(:mod:`~mood.common.device`), and the monotone maps that bring raw scores into [0, 1) and their
fitting on normal holdout volumes (:mod:`~mood.common.maps`)."""
