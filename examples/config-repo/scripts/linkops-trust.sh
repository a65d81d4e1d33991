# Keeps the trust `linkops enroll` installed current: the user CAs the
# machine accepts, and its key revocation list — written by OpenSSH's own
# ssh-keygen from the serials the daemon revoked (LINKOPS_CA_REVOKED_SERIALS),
# under each trusted CA. sshd reads both at each login: no reload.
set -eu
dir=/etc/ssh/linkops/kept
tmp=$(mktemp -d)
trap 'rm -rf "$tmp" "$dir"/.new.*' EXIT
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
# should have refused. Each file replaced whole (a rename in the directory
# enroll gave the daemon's login): sshd reads them at every login and must
# never see one half-written.
replace() {
  new=$(mktemp "$dir/.new.XXXXXX")
  cat "$1" > "$new"
  chmod 644 "$new"
  mv -f "$new" "$dir/$2"
}
printf '%s' "$LINKOPS_CA_REVOKED_SERIALS" > "$tmp/revoked_serials"
replace "$tmp/revoked_keys" revoked_keys
replace "$tmp/revoked_serials" revoked_serials
replace "$tmp/cas" user_ca.pub
echo "trusting $(grep -c . "$tmp/cas") user CA(s), $(echo $LINKOPS_CA_REVOKED_SERIALS | wc -w) serial(s) revoked"
