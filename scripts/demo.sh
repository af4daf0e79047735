#!/bin/bash
# The main job on a built-in default: build the example bootable image, pull it
# into a fresh store (from podman's storage, then from a local registry), and
# list the store.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release -p bootc -p bootc-initramfs
bootc="$PWD/target/release/bootc"
BOOTC_BIN="$bootc" examples/build.sh latest

work=${BOOTC_DEMO_DIR:-/var/tmp/bootc-demo}
rm -rf "$work"
mkdir -p "$work"
sysroot="$work/sysroot"

echo "== Pulling containers-storage:localhost/bootc-example:latest into $sysroot"
"$bootc" --sysroot "$sysroot" image pull containers-storage:localhost/bootc-example:latest

# A registry on 127.0.0.1, stopped by its pid on exit.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<REG
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
REG
docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
regpid=$!
trap 'kill $regpid 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
printf '[[registry]]\nlocation = "127.0.0.1:%s"\ninsecure = true\n' "$port" > "$work/registries.conf"
skopeo copy --quiet --dest-tls-verify=false containers-storage:localhost/bootc-example:latest \
  "docker://127.0.0.1:$port/bootc-example:latest"

echo "== Pulling 127.0.0.1:$port/bootc-example:latest (same layers: nothing fetched twice)"
CONTAINERS_REGISTRIES_CONF="$work/registries.conf" \
  "$bootc" --sysroot "$sysroot" image pull "127.0.0.1:$port/bootc-example:latest"

echo "== bootc image list"
"$bootc" --sysroot "$sysroot" image list
"$bootc" --sysroot "$sysroot" image fsck
