#!/bin/sh
# MOOD challenge entry point, pixel task, abdominal CT: a voxel-wise score map per volume (<name>, NIfTI).
# Usage: sh /workspace/run_pixel_abdom.sh INPUT_FOLDER OUTPUT_FOLDER
exec /opt/mood/bin/mood-run mood pixel --input "${1:?input folder}" --output "${2:?output folder}" --region abdom
