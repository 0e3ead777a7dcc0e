#!/usr/bin/env bash
# Build a JavaScript sink into a component:
#   guest-sdk-js/build.sh COMPONENTIZE_JS_DIR SOURCE.js OUT.wasm
# COMPONENTIZE_JS_DIR is where `npm ci` installed the pinned tools (the
# directory holding node_modules/). The sink world (wit/world.wit here) adds
# wasi:filesystem to sluice:sink/sink; its WASI WIT comes from the WASI 0.2.12
# snapshot that jco ships, so nothing of WASI is copied into this repo.
#
# Run it from a directory that holds SOURCE.js and every module it imports:
# componentize-js resolves imports against, and can read only below, the
# working directory.
set -euo pipefail
tools=$1 source=$2 out=$3
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
wasi="$tools/node_modules/@bytecodealliance/jco/lib/wit/builtin/0.2.12"
[ -d "$wasi" ] || { echo "build.sh: no WASI WIT under $wasi (is jco installed in $tools?)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/wit/deps/sluice-sink"
cp "$here/wit/world.wit" "$work/wit/"
cp "$root"/wit/v0.2.0/*.wit "$work/wit/deps/sluice-sink/"
for p in io clocks filesystem; do
    mkdir -p "$work/wit/deps/wasi-$p"
    cp "$wasi/wasi-$p/package.wit" "$work/wit/deps/wasi-$p/"
done
mkdir -p "$(dirname "$out")"
# http and fetch-event would import wasi:http, which the host does not give.
"$tools/node_modules/.bin/componentize-js" --wit "$work/wit" --world-name sink-js \
    --disable http fetch-event --out "$out.tmp" "$source"
mv "$out.tmp" "$out"
