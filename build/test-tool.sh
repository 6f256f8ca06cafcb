#!/usr/bin/env bash
# Issue 15's check of the `peft` .NET tool: pack src/Host as a tool (plugins bundled) into a temporary feed, install it
# with --tool-path into a temporary folder (never globally), and from another empty folder list the plugins and train
# the quickstart for a few steps. About 4 minutes on 2 cores (the package holds LibTorch: ~150 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
tmp=$(mktemp -d -t peft-tool-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
version="0.1.0-tooltest.$(date +%s)"
dotnet pack src/Host -c Release -r linux-x64 -o "$tmp/feed" -p:Version="$version" -nologo -v q
dotnet tool install peft --tool-path "$tmp/tools" --add-source "$tmp/feed" --version "$version"
mkdir "$tmp/work" && cd "$tmp/work"
"$tmp/tools/peft" plugins
sed "s#\"data/#\"$repo/data/#g" "$repo/examples/quickstart.json" > quickstart.json
"$tmp/tools/peft" train --config quickstart.json --set training:max_steps=3 --set training:eval_every=0 --set training:checkpoint_every=0
test -f out/quickstart/adapter/adapter_model.safetensors
echo "test-tool: peft $version installed with --tool-path and trained from $tmp/work"
