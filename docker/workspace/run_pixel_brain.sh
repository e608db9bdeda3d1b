#!/bin/sh
# MOOD challenge entry point, pixel task, brain MRI: a voxel-wise score map per volume (<name>, NIfTI).
# Usage: sh /workspace/run_pixel_brain.sh INPUT_FOLDER OUTPUT_FOLDER
exec /opt/mood/bin/mood-run mood pixel --input "${1:?input folder}" --output "${2:?output folder}" --region brain
