#!/bin/sh
# MOOD challenge entry point, sample task, brain MRI: one abnormality score per volume (<name>.txt).
# Usage: sh /workspace/run_sample_brain.sh INPUT_FOLDER OUTPUT_FOLDER
exec /opt/mood/bin/mood-run mood sample --input "${1:?input folder}" --output "${2:?output folder}" --region brain
