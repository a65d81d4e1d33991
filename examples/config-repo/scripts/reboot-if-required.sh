#!/bin/sh
# Reboots the machine when its packages ask for it (Debian's
# /run/reboot-required), a minute from now so that this run reports back
# first; a machine that cannot schedule it fails, and a rollout halts on it.
set -eu
if [ ! -e /run/reboot-required ]; then
    echo "no reboot required"
    exit 0
fi
packages=$(tr '\n' ' ' < /run/reboot-required.pkgs 2>/dev/null || true)
echo "a reboot is required${packages:+ by: $packages}"
shutdown -r +1 "LinkOps patch day: rebooting for updated packages"
echo "reboot scheduled in a minute"
