//! Users, their roles, and the persisted failed-login counters behind lockout.

use linkops_reconcilers::role::{AccountRole, Role};

use super::audit::{self, Actor, Audit, AuditAction};
use super::engine::{Read, Write, WriteTx};
use super::records::Outcome;
use super::records::{LoginFailures, SecondFactor, SsoIdentity, User};
use super::schema::{API_TOKENS, LOGIN_FAILURES, META, RETIRED_NAMES, TERMINAL_WORKSPACES, USERS};
use super::{Error, Result, Store, now_ms};

/// A deleted account, and the terminal workspaces deleted with it.
#[derive(Debug)]
pub struct DeletedUser {
    pub user: User,
    pub workspaces: Vec<String>,
}

impl Store {
    /// Creates a user, audited as done `by`; fails if the name is taken or was a deleted account's.
    pub fn create_user(
        &self,
        name: &str,
        role: Option<Role>,
        password_hash: &str,
        by: &Actor,
    ) -> Result<User> {
        let mut tx = self.write()?;
        if tx.get(USERS, name)?.is_some() {
            return Err(Error::UserExists(name.to_owned()));
        }
        if tx.get(RETIRED_NAMES, name)?.is_some() {
            return Err(Error::NameRetired(name.to_owned()));
        }
        let user = new_user(name, role, password_hash);
        tx.insert(USERS, name, &user)?;
        let detail = format!("role {}", AccountRole(role));
        audit::append(
            &mut tx,
            by,
            AuditAction::UserCreate,
            name,
            Outcome::Success,
            Some(detail),
        )?;
        tx.commit()?;
        Ok(user)
    }

    /// Creates the first user when there is none, atomically; `None` if users exist.
    pub fn create_first_user(
        &self,
        name: &str,
        role: Option<Role>,
        password_hash: &str,
    ) -> Result<Option<User>> {
        let mut tx = self.write()?;
        if tx.first(USERS)?.is_some() {
            return Ok(None);
        }
        let user = new_user(name, role, password_hash);
        tx.insert(USERS, name, &user)?;
        let detail = Some("first admin, generated password".into());
        audit::append(
            &mut tx,
            &Actor::System,
            AuditAction::UserCreate,
            name,
            Outcome::Success,
            detail,
        )?;
        tx.commit()?;
        Ok(Some(user))
    }

    pub fn user(&self, name: &str) -> Result<Option<User>> {
        self.read_one(USERS, name)
    }

    /// Every user, by name.
    pub fn users(&self) -> Result<Vec<User>> {
        self.read_all(USERS)
    }

    /// Replaces a user's password hash, audited as done `by`; tokens issued
    /// before now stop working.
    pub fn set_password(&self, name: &str, password_hash: &str, by: &Actor) -> Result<User> {
        let mut tx = self.write()?;
        let mut user = tx
            .get(USERS, name)?
            .ok_or_else(|| Error::NoSuchUser(name.to_owned()))?;
        user.password_hash = password_hash.to_owned();
        user.password_changed_at_ms = now_ms();
        tx.insert(USERS, name, &user)?;
        // A new password also lifts a lockout.
        tx.remove(LOGIN_FAILURES, name)?;
        audit::append(
            &mut tx,
            by,
            AuditAction::UserPasswd,
            name,
            Outcome::Success,
            None,
        )?;
        bump_account_version(&mut tx)?;
        tx.commit()?;
        self.user_changed();
        Ok(user)
    }

    /// Signs in a person an identity provider vouched for: their account —
    /// made at their first sign-in, with no role of its own — with the groups
    /// the provider says now, audited with the provider and subject. Refused
    /// when the name is a local account's, another provider subject's, or
    /// retired, and when an admin disabled them.
    pub fn sign_in_sso(&self, name: &str, identity: SsoIdentity) -> Result<User> {
        let mut tx = self.write()?;
        if tx.get(RETIRED_NAMES, name)?.is_some() {
            return Err(Error::NameRetired(name.to_owned()));
        }
        let user = match tx.get(USERS, name)? {
            None => User {
                sso: Some(identity.clone()),
                ..new_user(name, None, "")
            },
            Some(user) => {
                let holder = match &user.sso {
                    None => Some("a local account's".to_owned()),
                    Some(known)
                        if (known.provider != identity.provider
                            || known.subject != identity.subject) =>
                    {
                        Some(format!(
                            "the sign-in of subject {:?} at provider {}",
                            known.subject, known.provider
                        ))
                    }
                    Some(_) => None,
                };
                if let Some(holder) = holder {
                    return Err(Error::NameTaken {
                        name: name.to_owned(),
                        holder,
                    });
                }
                if user.disabled {
                    return Err(Error::Disabled(name.to_owned()));
                }
                User {
                    sso: Some(identity.clone()),
                    ..user
                }
            }
        };
        tx.insert(USERS, name, &user)?;
        let detail = format!(
            "provider {}, subject {}, groups [{}]",
            identity.provider,
            identity.subject,
            identity.groups.join(", ")
        );
        audit::append(
            &mut tx,
            &Actor::user(name),
            AuditAction::AuthSso,
            name,
            Outcome::Success,
            Some(detail),
        )?;
        // Their groups may have changed: open connections re-check.
        bump_account_version(&mut tx)?;
        tx.commit()?;
        self.user_changed();
        Ok(user)
    }

    /// Disables (or enables again) a user, audited as done `by`: a disabled
    /// user cannot sign in, and every session of theirs ends. The last admin
    /// stays enabled.
    pub fn set_disabled(&self, name: &str, disabled: bool, by: &Actor) -> Result<User> {
        let mut tx = self.write()?;
        let mut user = tx
            .get(USERS, name)?
            .ok_or_else(|| Error::NoSuchUser(name.to_owned()))?;
        if disabled {
            refuse_last_admin(&tx, &user)?;
        }
        user.disabled = disabled;
        tx.insert(USERS, name, &user)?;
        let action = match disabled {
            true => AuditAction::UserDisable,
            false => AuditAction::UserEnable,
        };
        audit::append(&mut tx, by, action, name, Outcome::Success, None)?;
        bump_account_version(&mut tx)?;
        tx.commit()?;
        self.user_changed();
        Ok(user)
    }

    /// Begins enrolling a second factor for `name` with `secret_base32`,
    /// replacing one being enrolled; refused once one is confirmed.
    pub fn begin_second_factor(&self, name: &str, secret_base32: &str) -> Result<()> {
        self.change_second_factor(name, |user| {
            if user.second_factor_enrolled().is_some() {
                return Err(Error::SecondFactorEnrolled(user.name.clone()));
            }
            user.second_factor = Some(SecondFactor {
                secret_base32: secret_base32.to_owned(),
                confirmed_at_ms: None,
                last_step: 0,
                recovery_sha256: Vec::new(),
            });
            Ok(None)
        })
    }

    /// Confirms the second factor being enrolled — a code of `step` was
    /// right — with the hashes of its recovery codes; audited.
    pub fn confirm_second_factor(
        &self,
        name: &str,
        step: u64,
        recovery_sha256: Vec<String>,
    ) -> Result<()> {
        self.change_second_factor(name, |user| {
            let factor = user
                .second_factor
                .as_mut()
                .filter(|f| f.confirmed_at_ms.is_none())
                .ok_or_else(|| Error::NoSecondFactor(user.name.clone()))?;
            factor.confirmed_at_ms = Some(now_ms());
            factor.last_step = step;
            factor.recovery_sha256 = recovery_sha256;
            Ok(Some((
                AuditAction::UserSecondFactor,
                "enrolled (TOTP)".to_owned(),
            )))
        })
    }

    /// Takes a code of time step `step` unless one of that step or a later
    /// one was taken already (a code is good once): whether it was taken.
    pub fn take_second_factor_step(&self, name: &str, step: u64) -> Result<bool> {
        let mut taken = false;
        self.change_second_factor(name, |user| {
            if let Some(factor) = user.second_factor.as_mut()
                && factor.confirmed_at_ms.is_some()
                && step > factor.last_step
            {
                factor.last_step = step;
                taken = true;
            }
            Ok(None)
        })?;
        Ok(taken)
    }

    /// Takes a recovery code by its hash, once: whether it was one; audited.
    pub fn take_recovery_code(&self, name: &str, sha256: &str) -> Result<bool> {
        let mut taken = false;
        self.change_second_factor(name, |user| {
            let Some(factor) = user.second_factor.as_mut() else {
                return Ok(None);
            };
            let before = factor.recovery_sha256.len();
            factor.recovery_sha256.retain(|hash| hash != sha256);
            taken = factor.recovery_sha256.len() < before;
            let left = factor.recovery_sha256.len();
            Ok(taken.then(|| {
                (
                    AuditAction::UserSecondFactor,
                    format!("a recovery code used; {left} left"),
                )
            }))
        })?;
        Ok(taken)
    }

    /// Removes a user's second factor (a lost phone), audited as `by`'s.
    pub fn remove_second_factor(&self, name: &str, by: &Actor) -> Result<User> {
        let mut tx = self.write()?;
        let mut user = tx
            .get(USERS, name)?
            .ok_or_else(|| Error::NoSuchUser(name.to_owned()))?;
        user.second_factor = None;
        tx.insert(USERS, name, &user)?;
        let detail = Some("removed".to_owned());
        audit::append(
            &mut tx,
            by,
            AuditAction::UserSecondFactor,
            name,
            Outcome::Success,
            detail,
        )?;
        tx.commit()?;
        Ok(user)
    }

    /// Changes `name`'s second factor in one transaction, with the audit
    /// entry (as the user's own) that `change` returns, if any.
    fn change_second_factor(
        &self,
        name: &str,
        change: impl FnOnce(&mut User) -> Result<Option<(AuditAction, String)>>,
    ) -> Result<()> {
        let mut tx = self.write()?;
        let mut user = tx
            .get(USERS, name)?
            .ok_or_else(|| Error::NoSuchUser(name.to_owned()))?;
        let audit = change(&mut user)?;
        tx.insert(USERS, name, &user)?;
        if let Some((action, detail)) = audit {
            audit::append(
                &mut tx,
                &Actor::user(name),
                action,
                name,
                Outcome::Success,
                Some(detail),
            )?;
        }
        tx.commit()
    }

    /// Changes a user's role, audited as done `by`; the last admin cannot be
    /// demoted. Returns the role before and the user now.
    pub fn set_role(
        &self,
        name: &str,
        role: Option<Role>,
        by: &Actor,
    ) -> Result<(Option<Role>, User)> {
        let mut tx = self.write()?;
        let changed = {
            let mut user = tx
                .get(USERS, name)?
                .ok_or_else(|| Error::NoSuchUser(name.to_owned()))?;
            if role != Some(Role::Admin) {
                refuse_last_admin(&tx, &user)?;
            }
            let before = std::mem::replace(&mut user.role, role);
            tx.insert(USERS, name, &user)?;
            (before, user)
        };
        let detail = format!("{} -> {}", AccountRole(changed.0), AccountRole(role));
        audit::append(
            &mut tx,
            by,
            AuditAction::UserRole,
            name,
            Outcome::Success,
            Some(detail),
        )?;
        bump_account_version(&mut tx)?;
        tx.commit()?;
        self.user_changed();
        Ok(changed)
    }

    /// Deletes a user (their tokens stop working at once); the last admin cannot be deleted.
    ///
    /// The name is retired, never to be an account again, so that every record
    /// naming it (audit log, operations, recordings) keeps meaning one person;
    /// the user's terminal workspaces go (recordings stay, for admins).
    pub fn delete_user(&self, name: &str, by: &Actor) -> Result<DeletedUser> {
        let mut tx = self.write()?;
        let user = tx
            .get(USERS, name)?
            .ok_or_else(|| Error::NoSuchUser(name.to_owned()))?;
        refuse_last_admin(&tx, &user)?;
        tx.remove(USERS, name)?;
        tx.remove(LOGIN_FAILURES, name)?;
        tx.insert(RETIRED_NAMES, name, &now_ms())?;
        let mut workspaces = Vec::new();
        for entry in tx.all(TERMINAL_WORKSPACES, false) {
            let (id, workspace) = entry?;
            if workspace.owner == name {
                workspaces.push(id);
            }
        }
        for id in &workspaces {
            tx.remove(TERMINAL_WORKSPACES, id)?;
        }
        // Their API tokens go with them.
        let mut tokens = Vec::new();
        for entry in tx.all(API_TOKENS, false) {
            let (id, token) = entry?;
            if token.owner.as_deref() == Some(name) {
                tokens.push(id);
            }
        }
        for id in &tokens {
            tx.remove(API_TOKENS, id.as_str())?;
        }
        let detail = format!(
            "was {}; {} terminal workspace(s) and {} API token(s) deleted; the name is retired",
            AccountRole(user.role),
            workspaces.len(),
            tokens.len()
        );
        audit::append(
            &mut tx,
            by,
            AuditAction::UserDelete,
            name,
            Outcome::Success,
            Some(detail),
        )?;
        bump_account_version(&mut tx)?;
        tx.commit()?;
        self.user_changed();
        Ok(DeletedUser { user, workspaces })
    }

    /// Changes whenever an account's password, role or existence changed.
    pub fn user_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.user_changes.subscribe()
    }

    pub(super) fn user_changed(&self) {
        self.user_changes.send_modify(|count| *count += 1);
    }

    /// Tells [`Store::user_changes`]' receivers of account changes made
    /// through another handle of the store (another replica, the CLI):
    /// `seen` is the account version last looked at, updated.
    pub fn notice_account_changes(&self, seen: &mut Option<u64>) -> Result<()> {
        let version = self.read()?.get(META, ACCOUNT_VERSION)?.unwrap_or(0);
        if seen.is_some_and(|seen| seen != version) {
            self.user_changed();
        }
        *seen = Some(version);
        Ok(())
    }

    pub fn login_failures(&self, name: &str) -> Result<Option<LoginFailures>> {
        self.read_one(LOGIN_FAILURES, name)
    }

    /// Read-modify-writes the failure counter of `name` in one transaction,
    /// so that concurrent attempts cannot lose a count, with the login's audit
    /// entry (`audit` sees the counter as it ends up).
    pub fn update_login_failures(
        &self,
        name: &str,
        update: impl FnOnce(Option<LoginFailures>) -> Option<LoginFailures>,
        audit: impl FnOnce(Option<&LoginFailures>) -> Audit,
    ) -> Result<Option<LoginFailures>> {
        let mut tx = self.write()?;
        let next = update(tx.get(LOGIN_FAILURES, name)?);
        match &next {
            Some(failures) => tx.insert(LOGIN_FAILURES, name, failures)?,
            None => {
                tx.remove(LOGIN_FAILURES, name)?;
            }
        }
        audit::append_audit(&mut tx, &audit(next.as_ref()))?;
        tx.commit()?;
        Ok(next)
    }
}

/// Refuses to take the admin role from `user` when no other user has it:
/// without an admin nobody can manage users through the API.
fn refuse_last_admin(tx: &WriteTx, user: &User) -> Result<()> {
    if user.role != Some(Role::Admin) {
        return Ok(());
    }
    for entry in tx.all(USERS, false) {
        let (_, other) = entry?;
        if other.role == Some(Role::Admin) && other.name != user.name {
            return Ok(());
        }
    }
    Err(Error::LastAdmin(user.name.clone()))
}

fn new_user(name: &str, role: Option<Role>, password_hash: &str) -> User {
    let now = now_ms();
    User {
        name: name.to_owned(),
        role,
        password_hash: password_hash.to_owned(),
        created_at_ms: now,
        password_changed_at_ms: now,
        sso: None,
        disabled: false,
        second_factor: None,
    }
}

/// A key every replica must hold the same of, compared by a fingerprint
/// kept in `meta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedKey {
    /// The key session tokens are signed with (`jwt_secret`).
    TokenSigning,
    /// The SSH user CA machines trust for the daemon's logins (`ca/user_ca`).
    UserCa,
    /// The user CA rotating in (`ca/user_ca.next`); 0: none is.
    UserCaNext,
}

impl SharedKey {
    /// The `meta` key holding its fingerprint.
    fn check_key(self) -> &'static str {
        match self {
            SharedKey::TokenSigning => "signing_key_check",
            SharedKey::UserCa => "user_ca_check",
            SharedKey::UserCaNext => "user_ca_next_check",
        }
    }
}

/// How a replica's key compares with the others'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agreement {
    /// The key the others hold.
    Same,
    /// None was recorded: this replica's is the store's from now on.
    First,
    /// No other replica is live and the recorded key was another: this one's
    /// replaced it (the key was changed while every replica was stopped).
    Changed,
    /// Live replicas hold another key.
    Differs,
}

impl Store {
    /// Compares this replica's `key` with the others', by its fingerprint
    /// `check`; `alone`: no other replica is live.
    pub fn agree_on_key(&self, key: SharedKey, check: u64, alone: bool) -> Result<Agreement> {
        let mut tx = self.write()?;
        let agreement = match tx.get(META, key.check_key())? {
            Some(recorded) if recorded == check => Agreement::Same,
            Some(_) if !alone => Agreement::Differs,
            recorded => {
                tx.insert(META, key.check_key(), &check)?;
                match recorded {
                    Some(_) => Agreement::Changed,
                    None => Agreement::First,
                }
            }
        };
        tx.commit()?;
        Ok(agreement)
    }
}

impl Store {
    /// The fingerprint recorded for `key` (what the replicas agreed on last).
    pub fn key_check(&self, key: SharedKey) -> Result<Option<u64>> {
        self.read()?.get(META, key.check_key())
    }

    /// Records a step of a user-CA rotation: `user_ca` and `next` (0: none)
    /// are the keys every replica is to hold from now on; audited as
    /// `actor`'s with `detail`.
    pub fn record_user_ca_rotation(
        &self,
        user_ca: u64,
        next: u64,
        actor: &Actor,
        detail: String,
    ) -> Result<()> {
        let mut tx = self.write()?;
        tx.insert(META, SharedKey::UserCa.check_key(), &user_ca)?;
        tx.insert(META, SharedKey::UserCaNext.check_key(), &next)?;
        audit::append(
            &mut tx,
            actor,
            AuditAction::CaRotate,
            "user CA",
            Outcome::Success,
            Some(detail),
        )?;
        tx.commit()
    }
}

/// The `meta` key counting account changes, for other replicas to notice.
const ACCOUNT_VERSION: &str = "account_version";

fn bump_account_version(tx: &mut WriteTx) -> Result<()> {
    let version = tx.get(META, ACCOUNT_VERSION)?.unwrap_or(0);
    tx.insert(META, ACCOUNT_VERSION, &(version + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;

    /// Two replicas of one store: a demotion through one reaches the
    /// long-lived connections of the other when it looks.
    #[test]
    fn an_account_change_through_another_handle_is_noticed() {
        let Some(postgres) = testing::postgres() else {
            return;
        };
        let (here, there) = (postgres.open(), postgres.open());
        for name in ["ada", "bob"] {
            here.create_user(name, Some(Role::Admin), "h", &Actor::Cli)
                .unwrap();
        }
        let mut changes = there.user_changes();
        let mut seen = None;
        there.notice_account_changes(&mut seen).unwrap();
        assert!(
            !changes.has_changed().unwrap(),
            "the first look sets the mark"
        );
        here.set_role("ada", Some(Role::Viewer), &Actor::Cli)
            .unwrap();
        there.notice_account_changes(&mut seen).unwrap();
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        there.notice_account_changes(&mut seen).unwrap();
        assert!(!changes.has_changed().unwrap(), "nothing new");
    }

    /// The first replica records its key; another key is refused while
    /// others are live, and replaces the recorded one when none is. Each
    /// shared key is agreed on apart from the others.
    #[test]
    fn replicas_agree_on_one_signing_key_and_one_user_ca() {
        let Some(postgres) = testing::postgres() else {
            return;
        };
        let store = postgres.open();
        // (the key, this replica's, no other live, what it finds), in order.
        let steps = [
            (SharedKey::TokenSigning, 1, true, Agreement::First),
            (SharedKey::TokenSigning, 1, false, Agreement::Same),
            (SharedKey::TokenSigning, 2, false, Agreement::Differs),
            // The refusal recorded nothing.
            (SharedKey::TokenSigning, 1, false, Agreement::Same),
            // The user CA is another key: its first check is its own.
            (SharedKey::UserCa, 1, false, Agreement::First),
            (SharedKey::UserCa, 7, false, Agreement::Differs),
            (SharedKey::TokenSigning, 2, true, Agreement::Changed),
            (SharedKey::TokenSigning, 1, false, Agreement::Differs),
            (SharedKey::UserCa, 1, false, Agreement::Same),
            // No rotation under way (0), then one begun elsewhere: a replica
            // without the next key is refused.
            (SharedKey::UserCaNext, 0, false, Agreement::First),
        ];
        for (step, (key, check, alone, found)) in steps.into_iter().enumerate() {
            let agreement = store.agree_on_key(key, check, alone).unwrap();
            assert_eq!(agreement, found, "step {step}: {key:?}");
        }
        store
            .record_user_ca_rotation(1, 9, &Actor::user("ada"), "began".into())
            .unwrap();
        assert_eq!(store.key_check(SharedKey::UserCaNext).unwrap(), Some(9));
        let refused = store.agree_on_key(SharedKey::UserCaNext, 0, false);
        assert_eq!(refused.unwrap(), Agreement::Differs);
        assert_eq!(
            store.agree_on_key(SharedKey::UserCaNext, 9, false).unwrap(),
            Agreement::Same
        );
    }

    #[test]
    fn first_user_is_created_only_once() {
        for backing in testing::backings() {
            let store = backing.open();
            assert!(
                store
                    .create_first_user("admin", Some(Role::Admin), "h1")
                    .unwrap()
                    .is_some()
            );
            assert!(
                store
                    .create_first_user("admin2", Some(Role::Admin), "h2")
                    .unwrap()
                    .is_none()
            );
            assert_eq!(store.users().unwrap().len(), 1);
        }
    }

    #[test]
    fn every_account_change_is_audited_in_its_own_transaction() {
        for backing in testing::backings() {
            let store = backing.open();
            let ada = Actor::user("ada");
            store
                .create_first_user("ada", Some(Role::Admin), "h")
                .unwrap();
            store
                .create_user("bob", Some(Role::Viewer), "h", &ada)
                .unwrap();
            store.set_password("bob", "h2", &ada).unwrap();
            store.set_role("bob", Some(Role::Operator), &ada).unwrap();
            store.delete_user("bob", &ada).unwrap();
            // A refusal changes nothing and writes nothing.
            store.delete_user("ada", &ada).unwrap_err();
            let audited: Vec<(String, String, Option<String>)> = store
                .audit_entries(0, 10)
                .unwrap()
                .into_iter()
                .map(|e| (e.actor, e.action, e.detail))
                .collect();
            let entry = |actor: &str, action: &str, detail: Option<&str>| {
                (
                    actor.to_owned(),
                    action.to_owned(),
                    detail.map(str::to_owned),
                )
            };
            assert_eq!(
                audited,
                [
                    entry(
                        "system",
                        "user.create",
                        Some("first admin, generated password")
                    ),
                    entry("ada", "user.create", Some("role viewer")),
                    entry("ada", "user.passwd", None),
                    entry("ada", "user.role", Some("viewer -> operator")),
                    entry(
                        "ada",
                        "user.delete",
                        Some(
                            "was operator; 0 terminal workspace(s) and 0 API token(s) deleted; the name is retired"
                        )
                    ),
                ]
            );
        }
    }

    #[test]
    fn duplicate_user_is_refused() {
        for backing in testing::backings() {
            let store = backing.open();
            store
                .create_user("ada", Some(Role::Viewer), "h", &Actor::Cli)
                .unwrap();
            let err = store
                .create_user("ada", Some(Role::Admin), "h", &Actor::Cli)
                .unwrap_err();
            assert!(matches!(err, Error::UserExists(name) if name == "ada"));
        }
    }

    #[test]
    fn new_password_clears_failures() {
        for backing in testing::backings() {
            let store = backing.open();
            store
                .create_user("ada", Some(Role::Viewer), "h", &Actor::Cli)
                .unwrap();
            store
                .update_login_failures(
                    "ada",
                    |_| {
                        Some(LoginFailures {
                            count: 3,
                            last_failure_ms: 1,
                            locked_until_ms: None,
                        })
                    },
                    |_| Audit {
                        actor: Actor::user("ada"),
                        action: AuditAction::AuthLogin,
                        target: "ada".into(),
                        outcome: Outcome::Failure,
                        detail: None,
                    },
                )
                .unwrap();
            let user = store.set_password("ada", "h2", &Actor::Cli).unwrap();
            assert_eq!(user.password_hash, "h2");
            assert_eq!(store.login_failures("ada").unwrap(), None);
        }
    }

    #[test]
    fn the_last_admin_is_neither_demoted_nor_deleted() {
        for backing in testing::backings() {
            let store = backing.open();
            store
                .create_user("root", Some(Role::Admin), "h", &Actor::Cli)
                .unwrap();
            store
                .create_user("ada", Some(Role::Operator), "h", &Actor::Cli)
                .unwrap();
            let refused = store
                .set_role("root", Some(Role::Operator), &Actor::Cli)
                .unwrap_err();
            assert!(matches!(refused, Error::LastAdmin(name) if name == "root"));
            assert!(matches!(
                store.delete_user("root", &Actor::Cli).unwrap_err(),
                Error::LastAdmin(_)
            ));
            // With a second admin, either can go.
            store
                .set_role("ada", Some(Role::Admin), &Actor::Cli)
                .unwrap();
            let (before, root) = store
                .set_role("root", Some(Role::Viewer), &Actor::Cli)
                .unwrap();
            assert_eq!((before, root.role), (Some(Role::Admin), Some(Role::Viewer)));
            assert!(matches!(
                store.delete_user("ada", &Actor::Cli).unwrap_err(),
                Error::LastAdmin(_)
            ));
            store.delete_user("root", &Actor::Cli).unwrap();
            assert_eq!(store.user("root").unwrap(), None);
            // The name is retired: a new account cannot inherit what it owned.
            assert!(matches!(
                store.create_user("root", Some(Role::Admin), "h", &Actor::Cli).unwrap_err(),
                Error::NameRetired(name) if name == "root"
            ));
            assert!(matches!(
                store.delete_user("root", &Actor::Cli).unwrap_err(),
                Error::NoSuchUser(_)
            ));
        }
    }

    #[test]
    fn roles_are_ordered_by_power() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        assert_eq!("operator".parse::<Role>().unwrap(), Role::Operator);
        assert!(
            "root"
                .parse::<Role>()
                .unwrap_err()
                .contains("viewer, operator or admin")
        );
    }
}
