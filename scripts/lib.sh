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
