# Sourced by the other scripts: makes sure the system packages a build
# needs are present, installing them with apt-get when run as root, or
# stopping with the exact command to run otherwise.
ensure_packages() {
  local missing=()
  local pkg bin
  for pair in "$@"; do
    pkg=${pair%%:*}; bin=${pair##*:}
    command -v "$bin" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "meshcast needs: ${missing[*]}. Run:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
}

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "meshcast needs a Rust toolchain (1.85 or newer). Run:" >&2
    echo "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y && . \"\$HOME/.cargo/env\"" >&2
    exit 1
  fi
}
