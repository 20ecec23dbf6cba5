#!/usr/bin/env bash
# Builds the lab guest from Debian packages into a cache directory:
#   kernel/vmlinuz   stock Debian kernel (the package linux-image-amd64 depends on, extracted, not installed)
#   kernel/vmlinux   the same kernel uncompressed, booted through its PVH entry point (3 s faster under TCG)
#   initramfs.gz     busybox-static, the virtio/ext4 modules, the real qemu-ga and its libraries, test/lab/init.sh
#   data1.img        pristine 64 MiB ext4 image (mounted on /data in the guest, disk serial qdata1)
#   data2.img        pristine 64 MiB ext4 image (mounted on /data2 in the guest, disk serial qdata2)
# Each product has a stamp file holding the key of its inputs; a run whose keys match rebuilds nothing.
#
# Usage: test/lab/build.sh            (cache dir: $QUIESCE_LAB_DIR, default <project>/.lab)
# Needs root only for `apt-get download` (first run); the Debian packages come from .ci/install-lab-deps.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
project="$(cd "$here/../.." && pwd)"
lab_dir="${QUIESCE_LAB_DIR:-$project/.lab}"
image_mib=64

# Kernel modules the init script loads, dependencies first. The closure is computed from each module's
# `depends=` field below; crc32c_generic is listed explicitly because ext4 and libcrc32c only name it as a
# soft dependency ("crypto-crc32c"), which needs a userspace modprobe the initramfs does not have
# (AGENT-FACTS.md, "A real guest on these machines").
# fat, vfat and two NLS tables serve the optional vfat /boot/efi disk (startGuest's efiDisk), which init
# formats with busybox mkdosfs at boot.
root_modules=(virtio_pci virtio_blk virtio_console crc32c_generic libcrc32c ext4 fat vfat nls_cp437 nls_ascii)

log() { printf 'lab-build: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || die "missing $tool; run .ci/install-lab-deps.sh"
  done
}

sha_of() { sha256sum | cut -c1-64; }

# stamp_ok NAME KEY: true when NAME was built from inputs with this KEY and its products still exist.
stamp_ok() {
  local name="$1" key="$2"
  shift 2
  [[ -f "$lab_dir/$name.stamp" && "$(cat "$lab_dir/$name.stamp")" == "$key" ]] || return 1
  local product
  for product in "$@"; do [[ -e "$product" ]] || return 1; done
}

write_stamp() { printf '%s' "$2" >"$lab_dir/$1.stamp"; }

need busybox cpio gzip xz ldd mkfs.ext4 sha256sum flock qemu-system-x86_64
[[ -x /usr/sbin/qemu-ga ]] || die "missing /usr/sbin/qemu-ga; run .ci/install-lab-deps.sh"
[[ "$(ldd /bin/busybox 2>&1 || true)" == *"not a dynamic executable"* ]] \
  || die "/bin/busybox is not static; install busybox-static"

mkdir -p "$lab_dir"
# Concurrent test workers may all ask for a build; one builds, the others wait and then find it cached.
exec 9>"$lab_dir/.build.lock"
flock -w 900 9 || die "timed out waiting for another build of $lab_dir"

started=$SECONDS

# ---- kernel ----------------------------------------------------------------------------------------
# Once downloaded, the kernel stays cached (its stamp holds the package name): a newer Debian kernel ABI
# is picked up only after removing kernel.stamp, so the lab never changes under the tests by itself.
resolve_kernel_package() {
  apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}

# The Debian kernel is a bzImage whose payload is compressed. Decompressing it under TCG takes about 3 s
# of every boot, so also keep the uncompressed ELF vmlinux; QEMU boots it directly through its PVH entry
# point (the ELF note XEN_ELFNOTE_PHYS32_ENTRY, type 18), which the Debian kernel has.
extract_vmlinux() { # BZIMAGE OUT: true when OUT is an ELF kernel with a PVH entry note
  local bzimage="$1" out="$2" magic tool offset
  for magic in 'xz:\xFD7zXZ\x00' 'zstd:\x28\xB5\x2F\xFD' 'gzip:\x1F\x8B\x08'; do
    tool="${magic%%:*}"
    command -v "$tool" >/dev/null 2>&1 || continue
    offset="$(LC_ALL=C grep -obUaP "${magic#*:}" "$bzimage" | head -n1 | cut -d: -f1)" || true
    [[ -n "$offset" ]] || continue
    # Trailing bytes after the compressed stream are expected; only the output matters.
    tail -c "+$((offset + 1))" "$bzimage" | "$tool" -dc 2>/dev/null >"$out" || true
    if [[ "$(head -c 4 "$out" | od -An -c | tr -d ' ')" == '177ELF' ]] \
      && LC_ALL=C grep -qaP '\x04\x00\x00\x00[\x04\x08]\x00\x00\x00\x12\x00\x00\x00Xen\x00' "$out"; then
      return 0
    fi
  done
  rm -f "$out"
  return 1
}

kernel_pkg=""
if [[ -f "$lab_dir/kernel.stamp" && -f "$lab_dir/kernel/vmlinuz" && -f "$lab_dir/kernel/release" ]]; then
  kernel_pkg="$(cat "$lab_dir/kernel.stamp")"
else
  need apt-get apt-cache dpkg
  kernel_pkg="$(resolve_kernel_package)"
  [[ -n "$kernel_pkg" ]] || die "apt-cache cannot resolve linux-image-amd64; run apt-get update (.ci/install-lab-deps.sh)"
  log "downloading $kernel_pkg"
  rm -rf "$lab_dir/kernel" "$lab_dir/kernel.tmp"
  mkdir -p "$lab_dir/kernel.tmp/deb"
  # apt-get download drops privileges to _apt, which cannot write into a root-owned directory; it then
  # warns and downloads as root. Download in a world-writable temp dir to keep the output quiet.
  dl_dir="$(mktemp -d)"
  chmod 0777 "$dl_dir"
  (cd "$dl_dir" && apt-get download -q "$kernel_pkg" >&2)
  dpkg -x "$dl_dir"/"$kernel_pkg"_*.deb "$lab_dir/kernel.tmp/deb"
  rm -rf "$dl_dir"
  release="$(ls "$lab_dir/kernel.tmp/deb/lib/modules")"
  [[ -n "$release" && -f "$lab_dir/kernel.tmp/deb/boot/vmlinuz-$release" ]] || die "unexpected layout in $kernel_pkg"
  mv "$lab_dir/kernel.tmp/deb/boot/vmlinuz-$release" "$lab_dir/kernel.tmp/vmlinuz"
  if extract_vmlinux "$lab_dir/kernel.tmp/vmlinuz" "$lab_dir/kernel.tmp/vmlinux"; then
    log "extracted vmlinux with a PVH entry point"
  else
    log "no PVH-bootable vmlinux in $kernel_pkg; booting the bzImage (about 3 s slower)"
  fi
  printf '%s\n' "$release" >"$lab_dir/kernel.tmp/release"
  mv "$lab_dir/kernel.tmp/deb/lib/modules/$release" "$lab_dir/kernel.tmp/modules"
  rm -rf "$lab_dir/kernel.tmp/deb"
  mv "$lab_dir/kernel.tmp" "$lab_dir/kernel"
  write_stamp kernel "$kernel_pkg"
fi
boot_kernel="$lab_dir/kernel/vmlinuz"
[[ -f "$lab_dir/kernel/vmlinux" ]] && boot_kernel="$lab_dir/kernel/vmlinux"
release="$(cat "$lab_dir/kernel/release")"
modules_dir="$lab_dir/kernel/modules"

# ---- module closure ---------------------------------------------------------------------------------
declare -A module_path=()
declare -A module_seen=()
module_order=()

find_module() {
  local name="$1" alt
  alt="${name//_/-}"
  if [[ -z "${module_path[$name]:-}" ]]; then
    local found
    found="$(find "$modules_dir/kernel" \( -name "$name.ko" -o -name "$alt.ko" \) -print -quit)"
    [[ -n "$found" ]] || die "kernel module $name not found in $release"
    module_path[$name]="$found"
  fi
  printf '%s' "${module_path[$name]}"
}

add_module() {
  local name="${1//-/_}"
  [[ -n "${module_seen[$name]:-}" ]] && return 0
  # A module built into the kernel needs no loading.
  if grep -qE "/${name//_/[_-]}\.ko\$" "$modules_dir/modules.builtin"; then
    module_seen[$name]=1
    return 0
  fi
  module_seen[$name]=1
  local file deps dep
  file="$(find_module "$name")"
  deps="$(tr '\0' '\n' <"$file" | sed -n 's/^depends=//p' | head -n1)"
  for dep in ${deps//,/ }; do add_module "$dep"; done
  module_order+=("$name")
}

# ---- initramfs --------------------------------------------------------------------------------------
qga_libs="$(ldd /usr/sbin/qemu-ga | awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}' | sort -u)"
initramfs_key="$(
  {
    printf 'kernel %s\nmodules %s\n' "$kernel_pkg" "${root_modules[*]}"
    sha256sum "$here/init.sh" "$here/build.sh" /bin/busybox /usr/sbin/qemu-ga
    # shellcheck disable=SC2086
    sha256sum $qga_libs
  } | sha_of
)"

if stamp_ok initramfs "$initramfs_key" "$lab_dir/initramfs.gz"; then
  log "initramfs: cached"
else
  for m in "${root_modules[@]}"; do add_module "$m"; done
  log "building initramfs (modules: ${module_order[*]})"
  root="$(mktemp -d "$lab_dir/initramfs.XXXXXX")"
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root"/{bin,sbin,dev,proc,sys,run,tmp,etc,root,data,data2,usr/bin,usr/sbin,var/lib,lib/modules,etc/lab}
  ln -s ../run "$root/var/run"
  cp /bin/busybox "$root/bin/busybox"
  ln -s busybox "$root/bin/sh"
  cp "$here/init.sh" "$root/init"
  chmod 0755 "$root/init"
  cp /usr/sbin/qemu-ga "$root/usr/sbin/qemu-ga"
  for lib in $qga_libs; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  : >"$root/etc/lab/modules"
  for m in "${module_order[@]}"; do
    cp "$(find_module "$m")" "$root/lib/modules/$m.ko"
    printf '%s\n' "$m" >>"$root/etc/lab/modules"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\n' >"$root/etc/group"
  printf 'ID=quiesce-lab\nNAME="pulumi-quiesce lab guest"\nVERSION_ID=1\nPRETTY_NAME="pulumi-quiesce lab guest (Debian %s kernel)"\n' \
    "$release" >"$root/etc/os-release"
  printf 'quiesce-lab\n' >"$root/etc/hostname"
  (cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --owner=0:0) \
    | gzip -6 -n >"$lab_dir/initramfs.gz.tmp"
  mv "$lab_dir/initramfs.gz.tmp" "$lab_dir/initramfs.gz"
  rm -rf "$root"
  trap - EXIT
  write_stamp initramfs "$initramfs_key"
fi

# ---- data images ------------------------------------------------------------------------------------
images_key="$(printf 'size %s MiB\nmke2fs %s\n' "$image_mib" "$(mkfs.ext4 -V 2>&1 | head -n1)" | sha_of)"
if stamp_ok images "$images_key" "$lab_dir/data1.img" "$lab_dir/data2.img"; then
  log "data images: cached"
else
  log "building data images (${image_mib} MiB ext4)"
  for n in 1 2; do
    img="$lab_dir/data$n.img"
    rm -f "$img.tmp"
    truncate -s "${image_mib}M" "$img.tmp"
    # Initialize inode tables and the journal now, so no ext4lazyinit thread writes in the guest, and
    # a fresh filesystem is exactly what the tests copy.
    mkfs.ext4 -q -F -L "qdata$n" -E lazy_itable_init=0,lazy_journal_init=0 "$img.tmp"
    mv "$img.tmp" "$img"
  done
  write_stamp images "$images_key"
fi

# Written last: lab.ts reads it to learn the products' paths, and its presence means the build finished.
cat >"$lab_dir/manifest.json" <<EOF
{
  "kernelPackage": "$kernel_pkg",
  "kernelRelease": "$release",
  "kernel": "$boot_kernel",
  "initramfs": "$lab_dir/initramfs.gz",
  "images": ["$lab_dir/data1.img", "$lab_dir/data2.img"]
}
EOF
log "ready in $((SECONDS - started)) s: $lab_dir"
