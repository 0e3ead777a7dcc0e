#!/usr/bin/env bash
# Build a component once per content of its inputs:
#   mk/build-once.sh OUT "INPUT..." -- COMMAND...   (COMMAND writes OUT)
#
# Make decides by mtime, and a fresh clone (every CI run) has new mtimes, so
# make re-runs the recipe; componentize-js and componentize-py do not give
# byte-identical output for the same input (a temp path, a snapshot), so
# every rebuild would be a new component for wasmtime to compile (seconds
# per Python component) and a new entry in the compiled-component cache.
# This keeps the last build per name under <dir>/.built/, keyed by a hash of
# the inputs' contents, and reuses it when nothing changed.
set -euo pipefail
out=$1 inputs=$2
shift 2
[ "$1" = "--" ] && shift
key=$(for f in $inputs; do printf '%s\n' "$f"; sha256sum < "$f"; done | sha256sum | cut -c1-16)
name=$(basename "$out" .wasm)
store="$(dirname "$out")/.built"
kept="$store/$name-$key.wasm"
mkdir -p "$store"
if [ -f "$kept" ]; then
    cp "$kept" "$out.part"
    mv "$out.part" "$out"
    echo "$out: inputs unchanged, reusing $kept"
    exit 0
fi
rm -f "$out"
"$@" || { rm -f "$out"; exit 1; }
rm -f "$store/$name"-*.wasm
cp "$out" "$kept.part"
mv "$kept.part" "$kept"
