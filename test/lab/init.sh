#!/bin/sh
# PID 1 of the lab guest (packed into the initramfs as /init by test/lab/build.sh).
#
# It prints marker lines on the serial console that test/lab/lab.ts waits for:
#   QUIESCE-LAB-DISK mountpoint=/data dev=/dev/vda serial=qdata1
#   QUIESCE-LAB-AGENT port=/dev/vport0p1
#   QUIESCE-LAB-LOAD dir=/data/load interval_ms=100
#   QUIESCE-LAB-READY
#   QUIESCE-LAB-FAILED <reason>      (then the guest powers off, so QEMU exits)
#
# Kernel command line options:
#   quiesce.load=1          run the write load on /data (see run_load)
#   quiesce.load_ms=N       pause between two load writes, in milliseconds (default 100)
#   quiesce.agent=0         do not start qemu-ga (a guest whose agent is absent)
#   quiesce.efi=1           format the disk with serial qefi as vfat and mount it on /boot/efi
#   quiesce.hook=fail       run qemu-ga with a fsfreeze hook (-F) that fails every freeze with status 3

/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
hostname quiesce-lab

say() { echo "QUIESCE-LAB-$*"; }

fail() {
  say "FAILED $*"
  poweroff -f
  # poweroff -f does not return; if it did, PID 1 must not exit (that panics the kernel).
  while :; do sleep 3600; done
}

load=0
load_ms=100
agent=1
efi=0
hook=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    quiesce.load=1) load=1 ;;
    quiesce.load_ms=*) load_ms="${arg#*=}" ;;
    quiesce.agent=0) agent=0 ;;
    quiesce.efi=1) efi=1 ;;
    quiesce.hook=fail) hook=fail ;;
  esac
done

while read -r module; do
  insmod "/lib/modules/$module.ko" || fail "insmod $module"
done </etc/lab/modules

# ---- data disks -------------------------------------------------------------------------------------
# virtio_blk probes while insmod runs, but devtmpfs creates the nodes asynchronously: wait (bounded)
# until both disks and their /dev nodes exist.
tries=0
while :; do
  count=0
  for dev in /sys/block/vd*; do
    [ -e "$dev" ] && [ -b "/dev/${dev##*/}" ] && count=$((count + 1))
  done
  [ "$count" -ge $((2 + efi)) ] && break
  tries=$((tries + 1))
  [ "$tries" -gt 200 ] && fail "expected $((2 + efi)) virtio disks, found $count"
  usleep 20000
done

# The disk with serial qdata1 goes on /data and qdata2 on /data2; a disk without one of those serials
# takes whichever mount point is left, in device order.
mount_disk() { # NAME MOUNTPOINT SERIAL
  mount -t ext4 "/dev/$1" "$2" || fail "mount /dev/$1 on $2"
  if [ -n "$3" ]; then
    # qemu-ga reports a disk's serial from udev's ID_SERIAL property, which libudev reads from udev's
    # database. There is no udevd here, so write the one entry udev's persistent-storage rule would.
    mkdir -p /run/udev/data
    echo "E:ID_SERIAL=$3" >"/run/udev/data/b$(cat "/sys/block/$1/dev")"
  fi
  say "DISK mountpoint=$2 dev=/dev/$1 serial=$3"
}
data_dev=""
data2_dev=""
efi_dev=""
for dev in /sys/block/vd*; do
  case "$(cat "$dev/serial" 2>/dev/null)" in
    qdata1) data_dev="${dev##*/}" ;;
    qdata2) data2_dev="${dev##*/}" ;;
    qefi) efi_dev="${dev##*/}" ;;
  esac
done
for dev in /sys/block/vd*; do
  name="${dev##*/}"
  [ "$name" = "$data_dev" ] || [ "$name" = "$data2_dev" ] || [ "$name" = "$efi_dev" ] && continue
  if [ -z "$data_dev" ]; then data_dev="$name"; elif [ -z "$data2_dev" ]; then data2_dev="$name"; fi
done
mount_disk "$data_dev" /data "$(cat "/sys/block/$data_dev/serial" 2>/dev/null)"
mount_disk "$data2_dev" /data2 "$(cat "/sys/block/$data2_dev/serial" 2>/dev/null)"
# The optional blank disk with serial qefi becomes a vfat /boot/efi, as on a UEFI guest (Linux cannot
# freeze vfat: the agent skips it without a word).
if [ "$efi" = 1 ]; then
  [ -n "$efi_dev" ] || fail "quiesce.efi=1 but no disk with serial qefi"
  mkdosfs "/dev/$efi_dev" >/dev/null || fail "mkdosfs /dev/$efi_dev"
  mkdir -p /boot/efi
  mount -t vfat -o codepage=437,iocharset=ascii "/dev/$efi_dev" /boot/efi || fail "mount vfat /dev/$efi_dev on /boot/efi"
  say "DISK mountpoint=/boot/efi dev=/dev/$efi_dev serial=qefi"
fi

# ---- guest agent ------------------------------------------------------------------------------------
# Without udev there is no /dev/virtio-ports/ link: find the port by its name (AGENT-FACTS.md).
if [ "$agent" = 1 ]; then
  port=""
  tries=0
  while [ -z "$port" ]; do
    for p in /sys/class/virtio-ports/*; do
      [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && [ -c "/dev/${p##*/}" ] && port="/dev/${p##*/}"
    done
    tries=$((tries + 1))
    [ -z "$port" ] && [ "$tries" -gt 200 ] && fail "no virtio port named org.qemu.guest_agent.0"
    [ -z "$port" ] && usleep 20000
  done
  mkdir -p /var/lib/qemu-ga
  hook_arg=""
  if [ "$hook" = fail ]; then
    # A freeze hook as a site installs one (qemu-ga -F): it runs before every freeze, and its non-zero exit
    # aborts the freeze ("fsfreeze hook has failed with status 3").
    mkdir -p /etc/qemu
    printf '#!/bin/sh\necho "$(date) fsfreeze-hook $1: refusing" >>/var/log/qga-fsfreeze-hook.log\n[ "$1" = freeze ] && exit 3\nexit 0\n' >/etc/qemu/fsfreeze-hook
    chmod 0755 /etc/qemu/fsfreeze-hook
    hook_arg="--fsfreeze-hook=/etc/qemu/fsfreeze-hook"
    say "HOOK /etc/qemu/fsfreeze-hook fails every freeze"
  fi
  (
    while :; do
      qemu-ga -m virtio-serial -p "$port" -f /run/qemu-ga.pid -t /var/lib/qemu-ga $hook_arg
      say "AGENT-EXITED status=$? (restarting)"
      sleep 1
    done
  ) &
  say "AGENT port=$port"
fi

# ---- write load -------------------------------------------------------------------------------------
# Writes /data/load/f<N> (about 4 KiB, naming N on its first and last line) and fsyncs it, then appends
# N to /data/load/log and fsyncs that. So a consistent copy of the disk has f<N> whole for every N
# listed in log, except that only the newest $keep files are kept, so the 64 MiB disk never fills.
run_load() {
  keep=10000
  mkdir -p /data/load
  head -c 4000 /dev/zero | tr '\0' '.' >/tmp/load-pad
  n=0
  while :; do
    n=$((n + 1))
    { echo "quiesce-lab-load $n"; cat /tmp/load-pad; echo; echo "end $n"; } >"/data/load/f$n"
    sync "/data/load/f$n"
    echo "$n" >>/data/load/log
    sync /data/load/log
    [ "$n" -gt "$keep" ] && rm -f "/data/load/f$((n - keep))"
    usleep $((load_ms * 1000))
  done
}
if [ "$load" = 1 ]; then
  run_load </dev/null >/dev/null 2>&1 &
  say "LOAD dir=/data/load interval_ms=$load_ms"
fi

say READY
# PID 1 must never exit.
while :; do sleep 3600; done
