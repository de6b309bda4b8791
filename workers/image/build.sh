#!/usr/bin/env bash
# Builds the Docker image that ol-worker's `--sandbox docker` runs functions
# in: a minimal Debian root filesystem with python3 (its full standard
# library, with OpenSSL for ssl/hashlib) and the ol-edge runtime
# (workers/runtime/ol_runtime.py at /opt/ol-edge/ol_runtime.py). No
# registry is involved: debootstrap from this machine's own Debian mirror,
# strip what a Python runtime does not need, `docker import`.
#
# The tag is ol-edge/runtime:<first 12 hex of sha256(ol_runtime.py, this
# script)>; ol-worker computes the same tag from the runtime it embeds and
# refuses to start without it. Idempotent: exits at once when that image
# exists. Needs root, debootstrap and a running Docker engine.
#
#   workers/image/build.sh          build if missing, print the tag
#   workers/image/build.sh --tag    only print the tag
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
runtime=$here/../runtime/ol_runtime.py
hash=$(cat "$runtime" "$here/build.sh" | sha256sum | cut -c1-12)
tag="ol-edge/runtime:$hash"
if [ "${1:-}" = "--tag" ]; then
  echo "$tag"
  exit 0
fi
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "build.sh: debootstrap not found: run scripts/setup.sh" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "build.sh: debootstrap needs root" >&2; exit 1; }

# The Debian release and mirror this machine's apt uses (deb822 .sources
# files first, then one-line sources.list entries); never a hard-coded host.
. /etc/os-release
suite=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
mirror=""
keyring=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -e "$f" ] || continue
  # One stanza per blank-line-separated block: the one listing $suite.
  mirror=$(awk -v s="$suite" '
    BEGIN { RS=""; FS="\n" }
    {
      uris=""; ok=0
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", $i); split($i, u, /[ \t]+/); uris=u[1] }
        if ($i ~ /^Suites:/) { n = split($i, w, /[ \t]+/); for (j = 2; j <= n; j++) if (w[j] == s) ok=1 }
        if ($i ~ /^Types:/ && $i !~ /(^|[ \t])deb([ \t]|$)/) ok=-1
      }
      if (ok == 1 && uris != "") { print uris; exit }
    }' "$f")
  if [ -n "$mirror" ]; then
    keyring=$(awk -v m="$mirror" 'BEGIN { RS=""; FS="\n" } index($0, m) { for (i = 1; i <= NF; i++) if ($i ~ /^Signed-By:/) { sub(/^Signed-By:[ \t]*/, "", $i); print $i; exit } }' "$f")
    break
  fi
done
if [ -z "$mirror" ]; then
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk -v s="$suite" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i+1) == s) { print $i; exit } }')
fi
[ -n "$mirror" ] || { echo "build.sh: no Debian mirror for $suite in /etc/apt/sources.list(.d)" >&2; exit 1; }
[ -n "$keyring" ] && [ -f "$keyring" ] || keyring=/usr/share/keyrings/debian-archive-keyring.gpg

work=$(mktemp -d /var/tmp/ol-edge-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
echo "build.sh: debootstrap $suite from $mirror" >&2
debootstrap --variant=minbase --include=python3-minimal,libpython3-stdlib,libssl3 --keyring="$keyring" \
  "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -20 "$work/debootstrap.log" >&2
  echo "build.sh: debootstrap failed (log above)" >&2
  exit 1
}

# Strip: package manager and its data, perl, docs, locales, charset
# converters, caches, logs, and the parts of the standard library a
# function runtime has no use for. Python, libc, the shell and coreutils
# stay (a handler may run a subprocess).
py=$(basename "$(readlink -f "$root/usr/bin/python3")")
rm -rf \
  "$root"/usr/share/{doc,man,info,locale,i18n,lintian,common-licenses,bug,menu,bash-completion,zsh,perl,perl5,debconf,dpkg,keyrings,pixmaps,gcc,gdb,base-passwd,base-files,pam,pam-configs,doc-base,util-linux,bash-completion,debianutils,sensible-utils,polkit-1,systemd,tabset,terminfo} \
  "$root"/usr/lib/x86_64-linux-gnu/{perl,perl-base,perl5,gconv,libapt*,audit,security} \
  "$root"/usr/lib/{apt,dpkg,systemd,udev,mime,init,lsb,os-release.d} \
  "$root"/usr/bin/{apt*,dpkg*,perl*,debconf*,deb-systemd*,mawk,gpgv,su,login,newgrp,passwd,chfn,chsh,gpasswd,mount,umount,wall} \
  "$root"/usr/sbin/{dpkg*,update-*,pam*,unix_chkpwd,add-shell,remove-shell,shadowconfig,chpasswd,useradd,userdel,usermod,groupadd,groupdel,groupmod,newusers,cpgr,cppw,grpck,pwck,vipw,vigr,pwconv,grpconv,pwunconv,grpunconv,chgpasswd,fsck*,mkfs*,mkswap,swap*,wipefs,agetty,sulogin,getty,installkernel,start-stop-daemon,rmt*,e2*,mke2fs,tune2fs,debugfs,dumpe2fs,badblocks,resize2fs,logsave,filefrag,e4*,mklost+found,blkid,findfs,fdisk,sfdisk,cfdisk,losetup,blkdiscard,ctrlaltdel,fstrim,hwclock,pivot_root,switch_root,runuser,chcpu,isosize,mkhomedir_helper,pam_*} \
  "$root"/var/lib/{apt,dpkg,debconf,systemd,pam} "$root"/var/cache/* "$root"/var/log/* \
  "$root"/etc/{apt,dpkg,systemd,init.d,rc*.d,cron.*,logrotate.d,pam.d,security,update-motd.d,kernel,default,skel,profile.d} \
  "$root"/usr/lib/"$py"/{test,ensurepip,idlelib,tkinter,lib2to3,pydoc_data,turtledemo,unittest/test,distutils/tests,ctypes/test,sqlite3/test,config-*} \
  "$root"/usr/lib/python3/dist-packages/* \
  "$root"/usr/libexec/* "$root"/usr/games "$root"/usr/local/games \
  "$root"/usr/share/zoneinfo/{right,posix} \
  "$root"/dev/* "$root"/run/* "$root"/tmp/* "$root"/home/* "$root"/root/.??* 2>/dev/null || true
find "$root" -xdev \( -name '*.a' -o -name '*.la' \) -delete
# No setuid or setgid binaries (chage, expiry, ...): nothing in a sandbox may
# gain privileges, whatever no-new-privileges does.
find "$root" -xdev -type f -perm /6000 -exec chmod ug-s {} +
mkdir -p "$root/opt/ol-edge" "$root/run/ol" "$root/code" "$root/tmp"
chmod 1777 "$root/tmp"
install -m 0644 "$runtime" "$root/opt/ol-edge/ol_runtime.py"

# The image must still run the runtime's imports as an unprivileged user.
chroot "$root" /usr/bin/python3 -I -S -c 'import json, socket, struct, io, os, traceback, importlib.util, time, hashlib, ssl, sqlite3, ctypes' || {
  echo "build.sh: the stripped image cannot import the runtime's modules" >&2
  exit 1
}

tar --numeric-owner -C "$root" -c . |
  docker import \
    --change 'USER 65534:65534' \
    --change 'WORKDIR /run/ol' \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1' \
    --change "LABEL ol-edge.runtime=$hash" \
    --change 'CMD ["/usr/bin/python3", "-I", "-S", "/opt/ol-edge/ol_runtime.py"]' \
    - "$tag" >/dev/null
size=$(docker image inspect -f '{{.Size}}' "$tag")
echo "build.sh: built $tag ($((size / 1024 / 1024)) MiB)" >&2
echo "$tag"
