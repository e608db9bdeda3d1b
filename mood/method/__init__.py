"""The method: volume -> slices -> codes -> restorations -> scores, for one region's weights."""
