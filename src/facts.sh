# The facts LinkOps gathers from a machine: `name=value` lines, `unknown`
# where the machine cannot tell. POSIX sh, read-only, quick: nothing here
# refreshes package lists or takes a lock.
if [ -r /etc/os-release ]; then
  . /etc/os-release
  echo "os=${ID:-unknown}-${VERSION_ID:-unknown}"
  echo "os_name=${PRETTY_NAME:-unknown}"
fi
echo "kernel=$(uname -r)"
echo "arch=$(uname -m)"
read -r up _ < /proc/uptime && echo "uptime_s=${up%%.*}"
echo "cpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo unknown)"
while read -r key value _; do
  [ "$key" = "MemTotal:" ] && echo "memory_bytes=$((value * 1024))" && break
done < /proc/meminfo
df -Pk / 2>/dev/null | while read -r _ size used _; do
  case "$size" in *[!0-9]*|'') continue ;; esac
  echo "root_size_bytes=$((size * 1024))"
  echo "root_used_bytes=$((used * 1024))"
done
# Pending updates, by the package manager present; the first found wins.
if command -v apt-get >/dev/null 2>&1; then
  echo package_manager=apt
  pending=$(apt-get -s -o Debug::NoLocking=1 upgrade 2>/dev/null | grep '^Inst ')
  if [ -n "$pending" ]; then
    echo "updates=$(printf '%s\n' "$pending" | wc -l)"
    echo "security_updates=$(printf '%s\n' "$pending" | grep -ci security)"
  else
    echo updates=0
    echo security_updates=0
  fi
elif command -v dnf >/dev/null 2>&1; then
  echo package_manager=dnf
  echo "updates=$(dnf -q -C check-update 2>/dev/null | grep -c '^[^ ]')"
  echo "security_updates=$(dnf -q -C updateinfo list --security 2>/dev/null | grep -c '^[^ ]')"
elif command -v apk >/dev/null 2>&1; then
  echo package_manager=apk
  echo "updates=$(apk version -l '<' 2>/dev/null | grep -vc '^Installed')"
elif command -v opkg >/dev/null 2>&1; then
  echo package_manager=opkg
  echo "updates=$(opkg list-upgradable 2>/dev/null | wc -l)"
fi
# Debian's and Ubuntu's flag; dnf's needs-restarting says it by its exit code.
if [ -e /run/reboot-required ] || [ -e /var/run/reboot-required ]; then
  echo reboot_required=true
elif command -v needs-restarting >/dev/null 2>&1; then
  needs-restarting -r >/dev/null 2>&1 && echo reboot_required=false || echo reboot_required=true
elif [ -d /var/lib/dpkg ]; then
  echo reboot_required=false
fi
