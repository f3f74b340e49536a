#!/usr/bin/env bash
# Rebuilds static/niivue.min.js (Niivue and what it needs, one minified ES module, so the page
# fetches nothing from another host) and static/niivue.LICENSES.txt (the licence of every
# package bundled into it). Needs node and npm; versions are pinned in package.json and
# package-lock.json. node_modules stays out of git.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --ignore-scripts --no-audit --no-fund  # esbuild's binary comes as an optional package; no install script needed
npx esbuild niivue-entry.js --bundle --format=esm --minify --target=es2020 \
    --legal-comments=none --metafile=node_modules/.niivue-meta.json --outfile=static/niivue.min.js
node licences.mjs node_modules/.niivue-meta.json > static/niivue.LICENSES.txt
