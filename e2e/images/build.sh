#!/usr/bin/env bash
# Builds the images Capstan's containerd runtime needs, without a registry, as OCI archives:
#   OUT/busybox.tar  localhost/busybox:1  (Debian's busybox-static, an applet symlink each)
#   OUT/pause.tar    localhost/pause:1    (a static binary that sleeps until SIGTERM)
# Needs umoci, skopeo, busybox-static and gcc. Idempotent: existing archives are kept unless
# FORCE=1. Import with `capstan image import OUT/*.tar` (or let `capstan up` do it).
# Without pause.tar the node agent makes and imports a pause image of its own (the capstan
# binary and the shared objects it loads: node-agent/src/pause_image/); this one is smaller
# (a few KB, static), so `make run` and `capstan bench pods` keep using it.
set -euo pipefail
out=${1:?usage: build.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
for tool in umoci skopeo; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done
busybox=$(command -v busybox || true)
[ -n "$busybox" ] && file -L "$busybox" 2>/dev/null | grep -q "dynamically linked" && busybox=""
[ -x /bin/busybox ] && [ -z "$busybox" ] && busybox=/bin/busybox
[ -n "$busybox" ] || { echo "build.sh: a static busybox is missing (apt-get install busybox-static)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# image NAME TAG CONFIGURE: an OCI layout with one layer made by CONFIGURE ROOTFS, archived
# under localhost/NAME:TAG.
image() {
  local name=$1 tag=$2 configure=$3 cmd=$4
  [ -s "$out/$name.tar" ] && [ "${FORCE:-0}" != 1 ] && { echo "build.sh: $out/$name.tar exists"; return; }
  local layout="$work/$name-oci" bundle="$work/$name-bundle"
  umoci init --layout "$layout"
  umoci new --image "$layout:$tag"
  umoci unpack --rootless --image "$layout:$tag" "$bundle" >/dev/null
  "$configure" "$bundle/rootfs"
  umoci repack --image "$layout:$tag" "$bundle"
  umoci config --image "$layout:$tag" --config.cmd "$cmd" --config.env PATH=/bin:/usr/bin \
    --config.workingdir / >/dev/null
  rm -f "$out/$name.tar.tmp"
  skopeo copy --quiet "oci:$layout:$tag" "oci-archive:$out/$name.tar.tmp:localhost/$name:$tag"
  mv "$out/$name.tar.tmp" "$out/$name.tar"
  echo "build.sh: $out/$name.tar (localhost/$name:$tag)"
}

busybox_rootfs() {
  local r=$1
  mkdir -p "$r/bin" "$r/etc" "$r/tmp" "$r/var/www" "$r/root"
  chmod 1777 "$r/tmp"
  cp "$busybox" "$r/bin/busybox"
  for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$r/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
}

pause_rootfs() {
  local r=$1
  if command -v gcc >/dev/null; then
    gcc -Os -static -s -o "$r/pause" "$here/pause.c"
  else
    # Without a compiler: busybox's shell, trapping TERM.
    mkdir -p "$r/bin"
    cp "$busybox" "$r/bin/sh"
    printf '#!/bin/sh\ntrap "exit 0" TERM INT\nwhile :; do sleep 3600 & wait $!; done\n' >"$r/pause"
    ln -sf sh "$r/bin/sleep"
    chmod +x "$r/pause"
  fi
}

image busybox 1 busybox_rootfs /bin/sh
image pause 1 pause_rootfs /pause
