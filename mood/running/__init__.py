"""Running at scale: a folder of volumes -> challenge predictions, across shards, GPUs and machines."""
