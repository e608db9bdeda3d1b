#!/bin/sh
# Entrypoint of the mood-vqvae image.
#
#   IMAGE sample|pixel [FLAGS]  ->  mood TASK --input /input --output /output [FLAGS]
#                                   (FLAGS may override --input/--output; region defaults to auto),
#                                   run by mood-run, which keeps every write inside the output folder
#   IMAGE SUBCOMMAND [ARGS]     ->  mood SUBCOMMAND [ARGS]   (any other mood subcommand or option)
#   IMAGE COMMAND [ARGS]        ->  COMMAND [ARGS], unchanged, for any program on PATH or any path,
#                                   e.g. the challenge's `sh /workspace/run_sample_brain.sh IN OUT`
#   IMAGE                       ->  mood --help
set -eu

if [ $# -eq 0 ]; then
    exec mood --help
fi
case $1 in
    sample|pixel)
        task=$1
        shift
        exec /opt/mood/bin/mood-run mood "$task" --input /input --output /output "$@"
        ;;
    -*)
        exec mood "$@"
        ;;
    */*)
        exec "$@"
        ;;
esac
if command -v -- "$1" >/dev/null 2>&1; then
    exec "$@"
fi
# Not a program: a mood subcommand (train, calibrate, make-toy, validate, show, init-weights, ...).
exec mood "$@"
