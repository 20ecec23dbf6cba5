#!/usr/bin/env bash
# npm run demo: a quiesced snapshot of a throwaway local guest, through the same code path users run.
# On a fresh Debian/Ubuntu machine, as root: installs what is missing, builds, boots the lab guest (with an
# in-guest write load) and a local sshd, runs `quiesce run ... -- cp` over SSH, verifies the copy, cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "npm run demo needs root: it installs Debian packages and boots a QEMU guest and an sshd." >&2
  echo "Run it as root (sudo npm run demo), on a machine you can experiment on." >&2
  exit 1
fi
os_id=$(. /etc/os-release 2>/dev/null && echo "${ID:-} ${ID_LIKE:-}")
case " $os_id " in
  *" debian "* | *" ubuntu "*) ;;
  *)
    echo "npm run demo supports Debian and Ubuntu (found: ${os_id:-unknown})." >&2
    echo "Elsewhere, install the equivalents of: qemu-system-x86 qemu-guest-agent busybox-static cpio gzip xz-utils" >&2
    echo "e2fsprogs openssh-server openssh-client socat python3, plus a Debian kernel package, and adapt test/lab/build.sh." >&2
    exit 1
    ;;
esac

echo "demo: installing what is missing (Debian packages, npm packages)..." >&2
bash .ci/install-lab-deps.sh >&2
[ -d node_modules/ssh2 ] || npm ci --no-audit --no-fund >&2
npm run --silent build >&2
exec node_modules/.bin/ts-node --transpile-only scripts/demo.ts
