//! Which runs need approval, and what each vote does.

use super::*;
use crate::fixtures::{machine, script};
use crate::grant::Grant;

fn rule(name: &str, tags: &[&str], scripts: &[&str], approvers: u32) -> Rule {
    Rule {
        name: name.into(),
        scope: Scope {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            machines: vec![],
            scripts: scripts.iter().map(|s| s.to_string()).collect(),
        },
        approvers,
        role: Role::Operator,
        expires: Duration::from_secs(3600),
    }
}

fn content() -> Content {
    Content {
        script: "apt-upgrade".into(),
        params: BTreeMap::new(),
        machines: vec!["db1".into()],
        rollout: None,
        concurrency: None,
        script_digest: script_digest(&script("apt-upgrade", "apt-get -y upgrade")),
    }
}

fn request(approvers: u32) -> Request {
    let needed = Needed {
        rules: vec!["prod".into()],
        approvers,
        role: Role::Operator,
        expires: Duration::from_secs(3600),
    };
    let by = Requester::User { name: "ada".into() };
    Request {
        id: 7,
        ..Request::new(needed, content(), by, 1_000)
    }
}

fn operator_on(tags: &[&str]) -> Held {
    Held::grants(vec![Grant {
        role: Role::Operator,
        scope: Scope {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..Scope::default()
        },
    }])
}

#[test]
fn a_run_on_prod_needs_the_strictest_of_the_rules_it_falls_under() {
    let (db1, web1) = (machine("db1", &["prod", "db"]), machine("web1", &["web"]));
    let rules = [
        rule("prod", &["prod"], &[], 2),
        rule("upgrades", &[], &["apt-upgrade"], 1),
    ];
    let (db1, web1) = (Place::from(&db1), Place::from(&web1));
    assert_eq!(needed(&rules, "uptime", &[web1]), None);
    let prod = needed(&rules, "uptime", &[web1, db1]).unwrap();
    assert_eq!(
        (prod.rules.as_slice(), prod.approvers),
        (&["prod".to_owned()][..], 2)
    );
    let both = needed(&rules, "apt-upgrade", &[db1]).unwrap();
    assert_eq!(both.rules, ["prod", "upgrades"]);
    assert_eq!(both.approvers, 2);
    assert_eq!(needed(&rules, "apt-upgrade", &[web1]).unwrap().approvers, 1);
}

#[test]
fn two_approvers_other_than_the_requester_start_it_and_nobody_votes_twice() {
    let db1 = machine("db1", &["prod"]);
    let machines = [Place::from(&db1)];
    let mut asked = request(2);
    let prod = operator_on(&["prod"]);
    // The requester's own approval is refused, whatever they hold.
    assert_eq!(
        vote(&mut asked, "ada", &prod, &machines, true, "", 2_000),
        Err(Refusal::OwnRequest { by: "ada".into() })
    );
    // Someone without the role over the machine may not.
    assert!(matches!(
        vote(
            &mut asked,
            "eve",
            &operator_on(&["web"]),
            &machines,
            true,
            "",
            2_000
        ),
        Err(Refusal::NotAnApprover { .. })
    ));
    assert_eq!(
        vote(
            &mut asked,
            "bob",
            &prod,
            &machines,
            true,
            "looks right",
            2_000
        ),
        Ok(Tally::Counted { have: 1, need: 2 })
    );
    assert!(matches!(
        vote(&mut asked, "bob", &prod, &machines, true, "", 2_100),
        Err(Refusal::AlreadyVoted { .. })
    ));
    assert_eq!(
        vote(&mut asked, "cy", &prod, &machines, true, "", 2_200),
        Ok(Tally::Approved)
    );
    assert_eq!(asked.approvals(), 2);
    assert_eq!(asked.votes[0].comment, "looks right");
}

#[test]
fn a_rejection_closes_it_and_an_expired_request_takes_no_vote() {
    let db1 = machine("db1", &["prod"]);
    let machines = [Place::from(&db1)];
    let prod = operator_on(&["prod"]);
    let mut rejected = request(2);
    assert_eq!(
        vote(
            &mut rejected,
            "bob",
            &prod,
            &machines,
            false,
            "not today",
            2_000
        ),
        Ok(Tally::Rejected)
    );
    assert_eq!(rejected.state, RequestState::Rejected { by: "bob".into() });
    assert!(matches!(
        vote(&mut rejected, "cy", &prod, &machines, true, "", 2_000),
        Err(Refusal::Closed {
            state: "rejected",
            ..
        })
    ));
    let mut late = request(1);
    let expiry = late.expires_at_ms;
    assert_eq!(late.state_at(expiry - 1), RequestState::AwaitingApproval);
    assert_eq!(late.state_at(expiry), RequestState::Expired);
    assert_eq!(
        vote(&mut late, "bob", &prod, &machines, true, "", expiry),
        Err(Refusal::Expired { id: 7 })
    );
    assert!(late.votes.is_empty());
}

#[test]
fn an_approval_covers_exactly_its_content() {
    let asked = content();
    let mut other_params = content();
    other_params
        .params
        .insert("package".into(), ParamValue::String("openssl".into()));
    let mut other_script = content();
    other_script.script_digest = script_digest(&script("apt-upgrade", "apt-get -y dist-upgrade"));
    assert_eq!(asked.digest(), content().digest());
    assert_ne!(asked.digest(), other_params.digest());
    assert_ne!(asked.digest(), other_script.digest());
}

#[test]
fn a_run_request_asks_once_waits_and_starts_only_on_an_approval_of_its_content() {
    let mut asked = request(1);
    asked.requested_by = Requester::RunRequest {
        id: "upgrade".into(),
        revision: "r1".into(),
    };
    let digest = asked.digest.clone();
    assert_eq!(gate(&[], &digest, 2_000), Gate::Ask);
    assert!(matches!(
        gate(std::slice::from_ref(&asked), &digest, 2_000),
        Gate::Wait { until_ms: Some(at), .. } if at == asked.expires_at_ms
    ));
    // An approval of other content does not count: this content asks anew.
    assert_eq!(
        gate(std::slice::from_ref(&asked), "other", 2_000),
        Gate::Ask
    );
    let expired = gate(std::slice::from_ref(&asked), &digest, asked.expires_at_ms);
    assert!(
        matches!(&expired, Gate::Wait { reason, until_ms: None } if reason.contains("expired"))
    );
    asked.state = RequestState::Approved;
    assert_eq!(
        gate(std::slice::from_ref(&asked), &digest, 2_000),
        Gate::Start { approved: 7 }
    );
    asked.state = RequestState::Rejected { by: "bob".into() };
    assert!(matches!(
        gate(&[asked], &digest, 2_000),
        Gate::Wait { until_ms: None, .. }
    ));
}
