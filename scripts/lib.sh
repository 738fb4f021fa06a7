# Shared by the scripts: go to the repository root and make sure the one
# thing cargo cannot fetch by itself, the wasm32-wasip2 target, is there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ensure_wasm_target() {
    if ! rustup target list --installed | grep -qx wasm32-wasip2; then
        echo "installing the wasm32-wasip2 target (once)" >&2
        rustup target add wasm32-wasip2
    fi
}

# Installs a Debian package when COMMAND is missing (the test suite's real
# peers: nginx for the auth_request test, wrk for the load benchmark).
ensure_debian_package() {
    local package=$1 command=$2
    if [ -x "$command" ] || command -v "$command" >/dev/null 2>&1; then
        return
    fi
    echo "installing $package (for $command)" >&2
    local sudo=""
    if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$package" >/dev/null
}

# The MCP gateway's real peers, pinned: the official MCP Python SDK (client
# and a test server) in a virtualenv, and the reference servers from npm.
# Installed once into $ARBITER_MCP_PEERS (default target/mcp-peers); pip's
# and npm's own caches keep the downloads between runs.
MCP_PY_VERSION=2.3.0
MCP_SERVERS_VERSION=2026.8.31
ensure_mcp_peers() {
    local dir=${ARBITER_MCP_PEERS:-$PWD/target/mcp-peers}
    local stamp="$dir/.installed-$MCP_PY_VERSION-$MCP_SERVERS_VERSION"
    if [ -f "$stamp" ]; then
        return
    fi
    echo "installing the MCP peers into $dir (once)" >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install -q --disable-pip-version-check "mcp==$MCP_PY_VERSION"
    (cd "$dir" && npm install -q --no-audit --no-fund --no-save \
        "@modelcontextprotocol/server-everything@$MCP_SERVERS_VERSION" \
        "@modelcontextprotocol/server-filesystem@$MCP_SERVERS_VERSION" >/dev/null)
    touch "$stamp"
}
