"""Reading and converting volumes: files -> a validated volume in [0, 1], and scores -> files."""
