# Keeps the trust `linkops enroll` installed current: the user CAs the
# machine accepts, and its key revocation list — written by OpenSSH's own
# ssh-keygen from the serials the daemon revoked (LINKOPS_CA_REVOKED_SERIALS),
# under each trusted CA. sshd reads both at each login: no reload.
set -eu
dir=/etc/ssh/linkops
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%s' "$LINKOPS_CA_USER_KEYS" > "$tmp/cas"
if [ -z "$LINKOPS_CA_REVOKED_SERIALS" ]; then
  : > "$tmp/revoked_keys" # nothing revoked: an empty list
else
  for serial in $LINKOPS_CA_REVOKED_SERIALS; do
    echo "serial: $serial" >> "$tmp/spec"
  done
  i=0
  update= # the first CA makes the list, each other one adds to it
  while IFS= read -r ca; do
    [ -n "$ca" ] || continue
    i=$((i + 1))
    printf '%s\n' "$ca" > "$tmp/ca$i.pub"
    ssh-keygen -q -k $update -f "$tmp/revoked_keys" -s "$tmp/ca$i.pub" "$tmp/spec"
    update=-u
  done < "$tmp/cas"
fi
# The revocation list first: a CA newly trusted never opens a login the list
# should have refused. In place, as the files' owner (the daemon's login).
cat "$tmp/revoked_keys" > "$dir/revoked_keys"
printf '%s' "$LINKOPS_CA_REVOKED_SERIALS" > "$dir/revoked_serials"
cat "$tmp/cas" > "$dir/user_ca.pub"
echo "trusting $(grep -c . "$tmp/cas") user CA(s), $(echo $LINKOPS_CA_REVOKED_SERIALS | wc -w) serial(s) revoked"
