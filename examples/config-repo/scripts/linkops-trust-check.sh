# Holds when the machine trusts exactly the daemon's user CAs and its
# revocation list names exactly the serials the daemon revoked.
dir=/etc/ssh/linkops/kept
[ -f /etc/ssh/sshd_config.d/linkops.conf ] || {
  echo "/etc/ssh/sshd_config.d/linkops.conf is missing: enroll the machine again (linkops enroll)"
  exit 2
}
drifted=0
if ! printf '%s' "$LINKOPS_CA_USER_KEYS" | cmp -s - "$dir/user_ca.pub"; then
  echo "$dir/user_ca.pub does not hold exactly the daemon's user CAs"
  drifted=1
fi
if ! printf '%s' "$LINKOPS_CA_REVOKED_SERIALS" | cmp -s - "$dir/revoked_serials"; then
  echo "the revocation list is not current (revoked: ${LINKOPS_CA_REVOKED_SERIALS:-none})"
  drifted=1
fi
exit $drifted
