#!/usr/bin/env bash
# Installs the Debian packages the lab (test/lab) needs, on Debian 12 as root. Noninteractive and
# idempotent: a second run installs nothing. test/lab/build.sh then builds the guest from these packages
# (and downloads the kernel package itself with `apt-get download`, which needs the apt lists updated).
set -euo pipefail

packages=(
  qemu-system-x86   # the TCG VM (qemu-system-data brings the PVH and linuxboot option ROMs)
  qemu-guest-agent  # /usr/sbin/qemu-ga, copied into the guest's initramfs with the libraries ldd lists
  busybox-static    # the guest's userland
  cpio gzip xz-utils # packing the initramfs; unpacking the kernel's xz payload into a PVH-bootable vmlinux
  e2fsprogs         # mkfs.ext4 for the data images; e2fsck, dumpe2fs and debugfs to inspect copies
  openssh-server    # the lab sshd
  openssh-client    # ssh-keygen for the lab's keys; ssh in the smoke test
  socat             # talking to the agent socket by hand (npm run lab)
  python3           # the host daemon (provider/host/daemon.py) runs on the host holding the agent sockets
  util-linux        # flock (build lock), setpriv (parent-death signal for lab processes)
  apt dpkg          # apt-get download, dpkg -x of the kernel package
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients  # a real libvirtd, run by hand (test/lab/libvirtd.ts)
)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$package")
  fi
done

export DEBIAN_FRONTEND=noninteractive
# The lists are needed even when every package is present: the first lab build resolves and downloads the
# kernel package that linux-image-amd64 depends on.
if ! apt-get update -q >/tmp/install-lab-deps.apt-update.log 2>&1; then
  cat /tmp/install-lab-deps.apt-update.log >&2
  if ((${#missing[@]} > 0)); then
    echo "install-lab-deps: apt-get update failed" >&2
    exit 1
  fi
  echo "install-lab-deps: apt-get update failed; every package is installed, continuing with the old lists" >&2
fi

if ((${#missing[@]} > 0)); then
  echo "install-lab-deps: installing ${missing[*]}" >&2
  # Without this, installing openssh-server would start a system sshd on port 22; the lab runs its own.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "install-lab-deps: all ${#packages[@]} packages already installed" >&2
fi

# sshd's privilege separation directory (normally made by systemd-tmpfiles); test/lab/sshd.ts makes it too.
mkdir -p /run/sshd

# libvirtd, run by hand for the lab (AGENT-FACTS.md, "libvirt"): its qemu driver wants this system user even
# when it runs guests as root, and a qemu.conf that neither chowns nor confines the lab's files. The qemu.conf is
# written only where the packages left none (a --no-install-recommends install ships none): an existing
# libvirt host's configuration is never touched, and the lab then says what it needs.
id libvirt-qemu >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin libvirt-qemu
# A non-root SSH user for the lab's libvirt tests: the lab's libvirtd lets its group use its socket (as a host's
# `libvirt` group is let in), and the lab sshd authorizes the lab's throwaway key for it. No password, no home.
id quiesce-lab >/dev/null 2>&1 || useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /bin/sh quiesce-lab
# Not locked ("*", no password at all): sshd without PAM refuses a locked ("!") account even for a key.
usermod -p '*' quiesce-lab
if [[ ! -e /etc/libvirt/qemu.conf ]]; then
  mkdir -p /etc/libvirt
  cat >/etc/libvirt/qemu.conf <<'QEMU_CONF'
# Written by pulumi-quiesce's .ci/install-lab-deps.sh for the lab's hand-run libvirtd.
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
stdio_handler = "file"
QEMU_CONF
fi
