#!/bin/bash
# The main job on a built-in default: build the example bootable image, pull it
# into a store (from podman's storage and from a local registry), install it to
# a disk image file, boot that disk in qemu (BIOS/GRUB, TCG) and print the
# `bootc status` the guest reports on its serial console as clean JSON, then a
# summary.
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
regpid=
qemupid=
cleanup() {
  [ -n "$regpid" ] && kill "$regpid" 2>/dev/null || true
  [ -n "$qemupid" ] && kill "$qemupid" 2>/dev/null || true
}
trap cleanup EXIT

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
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
printf '[[registry]]\nlocation = "127.0.0.1:%s"\ninsecure = true\n' "$port" > "$work/registries.conf"
skopeo copy --quiet --dest-tls-verify=false containers-storage:localhost/bootc-example:latest \
  "docker://127.0.0.1:$port/bootc-example:latest"

echo "== Pulling 127.0.0.1:$port/bootc-example:latest (same layers: nothing fetched twice)"
CONTAINERS_REGISTRIES_CONF="$work/registries.conf" \
  "$bootc" --sysroot "$sysroot" image pull "127.0.0.1:$port/bootc-example:latest"
echo "== bootc image list"
"$bootc" --sysroot "$sysroot" image list

echo "== Installing to $work/disk.raw"
truncate -s 6G "$work/disk.raw"
"$bootc" install to-disk --via-loopback --bootloader grub \
  --source-imgref containers-storage:localhost/bootc-example:latest \
  --karg bootc.test.poweroff=1 "$work/disk.raw"

echo "== Booting it (qemu, TCG, SeaBIOS; serial console in $work/serial.log)"
qemu-system-x86_64 -accel tcg -m 2048 -smp 2 -nographic -no-reboot -nic none \
  -drive file="$work/disk.raw",format=raw,if=virtio \
  -serial file:"$work/serial.log" -monitor none -display none &
qemupid=$!
for _ in $(seq 600); do
  kill -0 "$qemupid" 2>/dev/null || break
  sleep 1
done
if kill -0 "$qemupid" 2>/dev/null; then
  echo "error: the guest did not power off within 600 s; see $work/serial.log" >&2
  exit 1
fi
qemupid=
grep -q BOOTC-STATUS-END "$work/serial.log" || { echo "error: no status from the guest; see $work/serial.log" >&2; exit 1; }
# The status block of the serial log, by the unit's prefix
# (`bootc-status-console[PID]: `): kernel and other units' console lines
# printed into it are left out.
python3 - "$work/serial.log" > "$work/status.json" <<'PY'
import json, re, sys
text = open(sys.argv[1], "rb").read().decode("utf-8", "replace").replace("\r", "")
block = text.split("BOOTC-STATUS-BEGIN", 1)[1].split("BOOTC-STATUS-END", 1)[0]
kept = [m.group(1) for m in re.finditer(r"bootc-status-console\[\d+\]: (.*)", block)]
json.dump(json.loads("\n".join(kept)), sys.stdout)
PY
echo "== bootc status --format json, from the guest (also in $work/status.json)"
jq . "$work/status.json"
echo "== findmnt in the guest"
grep -a -E 'BOOTC-FINDMNT-(ROOT|USR)' "$work/serial.log" | tr -d '\r' || true
image_digest=$(podman image inspect --format '{{.Digest}}' localhost/bootc-example:latest)
booted=$(jq -r '.status.booted.image.image.image // "none"' "$work/status.json")
booted_digest=$(jq -r '.status.booted.image.imageDigest // "none"' "$work/status.json")
echo "== Summary"
echo "image built:        localhost/bootc-example:latest ($image_digest)"
echo "pulled into:        $sysroot (from containers-storage and 127.0.0.1:$port)"
echo "disk:               $work/disk.raw (GPT, installed with bootc install to-disk)"
echo "boot loader:        GRUB (BIOS), booted in qemu TCG with SeaBIOS"
if [ "$booted_digest" = "$image_digest" ]; then same="the image built above"; else same="podman has $image_digest"; fi
echo "booted deployment:  $booted @ $booted_digest ($same)"
