#!/bin/sh
# MOOD challenge entry point, sample task, abdominal CT: one abnormality score per volume (<name>.txt).
# Usage: sh /workspace/run_sample_abdom.sh INPUT_FOLDER OUTPUT_FOLDER
exec /opt/mood/bin/mood-run mood sample --input "${1:?input folder}" --output "${2:?output folder}" --region abdom
