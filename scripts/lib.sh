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
