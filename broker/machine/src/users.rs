//! Users: create, update, delete, the first admin, and the membership records. Passwords arrive
//! hashed (the broker that took the request hashed them with a random salt; the machine has no
//! randomness), so a hash is opaque here. Every change is also an audit record, and a change of
//! permissions starts a revocation (`revocation`).

use crate::access::{self, Actor, Permission};
use crate::audit::{self, Field};
use crate::command::{MembershipChange, NewUser, UserUpdate};
use crate::ctx::{Ctx, Res};
use crate::limits::{PASSWORD_HASH_BYTES_MAX, PERMISSIONS_PER_USER_MAX, USERS_MAX};
use crate::outcome::{MachineError, Output};
use crate::records::UserRecord;
use crate::store::Store;
use crate::{revocation, validate};

pub(crate) fn create<S: Store>(ctx: &mut Ctx<'_, S>, actor: &Actor, new: &NewUser) -> Res<Output> {
    check_user(&new.name, new.password_hash.as_deref(), &new.permissions)?;
    if ctx.user(&new.name)?.is_some() {
        return Err(MachineError::Conflict(format!("user {:?} already exists", new.name)).into());
    }
    if ctx.meta.users >= USERS_MAX {
        return Err(MachineError::LimitReached(format!("at most {USERS_MAX} users")).into());
    }
    let user = UserRecord {
        id: ctx.meta.next_user_id + 1,
        name: new.name.clone(),
        password_hash: new.password_hash.clone(),
        permissions: new.permissions.clone(),
        quotas: new.quotas,
        created_ms: ctx.now_ms,
        topics_owned: 0,
        groups_owned: 0,
    };
    insert(ctx, &user)?;
    let fields = [("user", Field::Text(user.name.clone())), ("permissions", permission_list(&user.permissions))];
    audit::record(ctx, actor, "user.created", &fields)?;
    Ok(Output::UserCreated { created: true })
}

/// The first admin, with every permission and no quota, if the cluster has no user yet.
pub(crate) fn bootstrap_admin<S: Store>(ctx: &mut Ctx<'_, S>, name: &str, password_hash: &str) -> Res<Output> {
    if ctx.meta.users > 0 {
        return Ok(Output::UserCreated { created: false });
    }
    let permissions = vec![Permission::admin()];
    check_user(name, Some(password_hash), &permissions)?;
    let user = UserRecord {
        id: ctx.meta.next_user_id + 1,
        name: name.to_owned(),
        password_hash: Some(password_hash.to_owned()),
        permissions,
        quotas: access::Quotas::UNLIMITED,
        created_ms: ctx.now_ms,
        topics_owned: 0,
        groups_owned: 0,
    };
    insert(ctx, &user)?;
    audit::record(ctx, &Actor::Broker, "user.bootstrapped", &[("user", Field::Text(user.name))])?;
    Ok(Output::UserCreated { created: true })
}

pub(crate) fn update<S: Store>(ctx: &mut Ctx<'_, S>, actor: &Actor, update: &UserUpdate) -> Res<Output> {
    let mut user = ctx.user(&update.name)?.cloned().ok_or_else(|| MachineError::UnknownUser(update.name.clone()))?;
    let was_admin = access::is_admin(&user.permissions);
    if let Some(hash) = &update.password_hash {
        user.password_hash = Some(hash.clone());
    }
    if let Some(permissions) = &update.permissions {
        user.permissions = permissions.clone();
    }
    if let Some(quotas) = update.quotas {
        user.quotas = quotas;
    }
    check_user(&user.name, user.password_hash.as_deref(), &user.permissions)?;
    let is_admin = access::is_admin(&user.permissions);
    if was_admin && !is_admin {
        keep_an_admin(ctx)?;
        ctx.meta.admins -= 1;
    } else if !was_admin && is_admin {
        ctx.meta.admins += 1;
    }
    ctx.save_user(&user)?;
    let mut fields = vec![("user", Field::Text(user.name.clone()))];
    if update.password_hash.is_some() {
        fields.push(("password", Field::Text("changed".into())));
    }
    if update.permissions.is_some() {
        fields.push(("permissions", permission_list(&user.permissions)));
        revocation::start(ctx, &user)?;
    }
    if update.quotas.is_some() {
        fields.push(("quotas", quota_list(&user.quotas)));
    }
    audit::record(ctx, actor, "user.updated", &fields)?;
    Ok(Output::UserUpdated)
}

pub(crate) fn delete<S: Store>(ctx: &mut Ctx<'_, S>, actor: &Actor, name: &str) -> Res<Output> {
    let user = ctx.user(name)?.cloned().ok_or_else(|| MachineError::UnknownUser(name.to_owned()))?;
    if access::is_admin(&user.permissions) {
        keep_an_admin(ctx)?;
        ctx.meta.admins -= 1;
    }
    ctx.remove_user(name)?;
    ctx.meta.users -= 1;
    revocation::start(ctx, &user)?;
    audit::record(ctx, actor, "user.deleted", &[("user", Field::Text(name.to_owned()))])?;
    Ok(Output::UserDeleted)
}

pub(crate) fn record_membership_change<S: Store>(
    ctx: &mut Ctx<'_, S>,
    actor: &Actor,
    change: &MembershipChange,
) -> Res<Output> {
    let fields = match change {
        MembershipChange::Add { id, peer_addr, client_addr } => vec![
            ("change", Field::Text("add".into())),
            ("broker", Field::Text(id.to_string())),
            ("peer_addr", Field::Text(peer_addr.clone())),
            ("client_addr", Field::Text(client_addr.clone())),
        ],
        MembershipChange::Remove { id } => {
            vec![("change", Field::Text("remove".into())), ("broker", Field::Text(id.to_string()))]
        }
    };
    audit::record(ctx, actor, "membership.requested", &fields)?;
    Ok(Output::MembershipRecorded)
}

pub(crate) fn membership_applied<S: Store>(ctx: &mut Ctx<'_, S>, voters: &[u64], learners: &[u64]) -> Res<Output> {
    let ids = |ids: &[u64]| Field::List(ids.iter().map(u64::to_string).collect());
    let fields = [("voters", ids(voters)), ("learners", ids(learners))];
    audit::record(ctx, &Actor::Broker, "membership.applied", &fields)?;
    Ok(Output::MembershipRecorded)
}

fn check_user(name: &str, password_hash: Option<&str>, permissions: &[Permission]) -> Res<()> {
    validate::name("user", name)?;
    if password_hash.is_some_and(|hash| hash.is_empty() || hash.len() > PASSWORD_HASH_BYTES_MAX) {
        let why = format!("a password hash is 1 to {PASSWORD_HASH_BYTES_MAX} bytes");
        return Err(MachineError::InvalidArgument(why).into());
    }
    if permissions.len() > PERMISSIONS_PER_USER_MAX {
        let why = format!("at most {PERMISSIONS_PER_USER_MAX} permissions per user");
        return Err(MachineError::TooLarge(why).into());
    }
    Ok(())
}

fn insert<S: Store>(ctx: &mut Ctx<'_, S>, user: &UserRecord) -> Res<()> {
    ctx.meta.next_user_id = user.id;
    ctx.meta.users += 1;
    if access::is_admin(&user.permissions) {
        ctx.meta.admins += 1;
    }
    ctx.save_user(user)
}

/// Refuses to take away the last admin: nobody could manage users or membership after it.
fn keep_an_admin<S: Store>(ctx: &Ctx<'_, S>) -> Res<()> {
    if ctx.meta.admins <= 1 {
        return Err(MachineError::InvalidArgument("the last admin cannot be removed or demoted".into()).into());
    }
    Ok(())
}

/// `name=limit` for each quota, `unlimited` where there is none.
fn quota_list(quotas: &access::Quotas) -> Field {
    let limit = |value: Option<u64>| value.map_or("unlimited".to_owned(), |n| n.to_string());
    Field::List(vec![
        format!("topics_max={}", limit(quotas.topics_max)),
        format!("groups_max={}", limit(quotas.groups_max)),
        format!("connections_max={}", limit(quotas.connections_max.map(u64::from))),
        format!("in_flight_bytes_max={}", limit(quotas.in_flight_bytes_max)),
    ])
}

fn permission_list(permissions: &[Permission]) -> Field {
    Field::List(permissions.iter().map(Permission::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{Actor, Quotas};
    use crate::command::{Command, GroupConfig, TopicConfig};
    use crate::keys;
    use crate::query;
    use crate::records::decode;
    use crate::revocation::REVOKE_PAGE;
    use crate::store::{StoreRead, Table};
    use crate::testkit::Harness;
    use proptest::prelude::*;

    fn root() -> Actor {
        Actor::User("root".into())
    }

    fn perms(texts: &[&str]) -> Vec<Permission> {
        texts.iter().map(|t| Permission::parse(t).unwrap()).collect()
    }

    fn new_user(name: &str, permissions: &[&str], quotas: Quotas) -> Command {
        Command::CreateUser(NewUser {
            name: name.into(),
            password_hash: Some(format!("$hash-of-{name}")),
            permissions: perms(permissions),
            quotas,
        })
    }

    fn set_permissions(name: &str, permissions: &[&str]) -> Command {
        Command::UpdateUser(UserUpdate {
            name: name.into(),
            permissions: Some(perms(permissions)),
            ..UserUpdate::default()
        })
    }

    /// A cluster with `root` (admin) bootstrapped.
    fn harness() -> Harness {
        let mut h = Harness::new();
        let bootstrap = Command::BootstrapAdmin { name: "root".into(), password_hash: "$root".into() };
        assert_eq!(h.run_as(&Actor::Broker, bootstrap), Ok(Output::UserCreated { created: true }));
        h
    }

    fn audit_events(h: &Harness) -> Vec<String> {
        let topic = h.topic(crate::audit::AUDIT_TOPIC);
        query::read(h.machine.store(), &topic, 1, 1000, u64::MAX)
            .unwrap()
            .into_iter()
            .map(|(_, m)| String::from_utf8(m.payload.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn the_first_admin_is_bootstrapped_once() {
        let mut h = harness();
        let again = Command::BootstrapAdmin { name: "other".into(), password_hash: "$x".into() };
        assert_eq!(h.run_as(&Actor::Broker, again), Ok(Output::UserCreated { created: false }));
        let root = query::user(h.machine.store(), "root").unwrap().unwrap();
        assert!(access::is_admin(&root.permissions));
        assert_eq!(root.quotas, Quotas::UNLIMITED);
        assert!(query::user(h.machine.store(), "other").unwrap().is_none());
    }

    #[test]
    fn users_are_created_updated_deleted_and_audited() {
        let mut h = harness();
        assert_eq!(
            h.run_as(&root(), new_user("alice", &["publish:t"], Quotas::USER_DEFAULT)),
            Ok(Output::UserCreated { created: true })
        );
        assert!(matches!(
            h.run_as(&root(), new_user("alice", &[], Quotas::USER_DEFAULT)),
            Err(MachineError::Conflict(_))
        ));
        assert!(matches!(
            h.run_as(&root(), new_user("bad name", &[], Quotas::USER_DEFAULT)),
            Err(MachineError::InvalidArgument(_))
        ));
        assert_eq!(h.run_as(&root(), set_permissions("alice", &["subscribe:t"])), Ok(Output::UserUpdated));
        let alice = query::user(h.machine.store(), "alice").unwrap().unwrap();
        assert_eq!(alice.permissions, perms(&["subscribe:t"]));
        assert_eq!(alice.password_hash.as_deref(), Some("$hash-of-alice"), "an update without a password keeps it");
        assert_eq!(h.run_as(&root(), Command::DeleteUser { name: "alice".into() }), Ok(Output::UserDeleted));
        assert!(matches!(
            h.run_as(&root(), Command::DeleteUser { name: "alice".into() }),
            Err(MachineError::UnknownUser(_))
        ));
        let events = audit_events(&h);
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(events[0].starts_with(r#"{"event":"user.bootstrapped","actor":"broker","user":"root"}"#), "{events:?}");
        assert!(
            events[1].contains(r#""event":"user.created","actor":"root","user":"alice","permissions":["publish:t"]"#)
        );
        assert!(events[2].contains(r#""event":"user.updated""#) && events[2].contains(r#"["subscribe:t"]"#));
        assert!(events[3].contains(r#""event":"user.deleted""#));
        assert!(!events.iter().any(|e| e.contains("$hash")), "password hashes never reach the audit trail");
    }

    #[test]
    fn the_last_admin_stays() {
        let mut h = harness();
        let delete_root = Command::DeleteUser { name: "root".into() };
        assert!(matches!(h.run_as(&root(), delete_root.clone()), Err(MachineError::InvalidArgument(_))));
        assert!(matches!(
            h.run_as(&root(), set_permissions("root", &["publish:*"])),
            Err(MachineError::InvalidArgument(_))
        ));
        h.run_as(&root(), new_user("second", &["admin"], Quotas::UNLIMITED)).unwrap();
        assert_eq!(h.run_as(&root(), delete_root), Ok(Output::UserDeleted), "another admin remains");
        let delete_second = Command::DeleteUser { name: "second".into() };
        assert!(matches!(
            h.run_as(&Actor::User("second".into()), delete_second),
            Err(MachineError::InvalidArgument(_))
        ));
    }

    #[test]
    fn quotas_bound_what_a_user_owns_and_deletes_give_back() {
        let mut h = harness();
        let quotas = Quotas { topics_max: Some(2), groups_max: Some(1), ..Quotas::UNLIMITED };
        h.run_as(&root(), new_user("alice", &["manage:*"], quotas)).unwrap();
        let alice = Actor::User("alice".into());
        let topic = |name: &str| Command::CreateTopic { name: name.into(), config: TopicConfig::default() };
        assert!(h.run_as(&alice, topic("a")).is_ok());
        assert!(h.run_as(&alice, topic("b")).is_ok());
        assert!(h.run_as(&alice, topic("a")).is_ok(), "re-creating an existing topic takes nothing");
        assert!(matches!(h.run_as(&alice, topic("c")), Err(MachineError::QuotaExceeded(_))));
        assert!(h.run_as(&root(), topic("c")).is_ok(), "the admin has no quota");
        let group =
            |name: &str| Command::CreateGroup { topic: "a".into(), name: name.into(), config: GroupConfig::default() };
        assert!(h.run_as(&alice, group("g1")).is_ok());
        assert!(matches!(h.run_as(&alice, group("g2")), Err(MachineError::QuotaExceeded(_))));
        // Deleting the topic deletes its group too: both come back to alice's quota.
        h.run_as(&root(), Command::DeleteTopic { name: "a".into() }).unwrap();
        let owned = query::user(h.machine.store(), "alice").unwrap().unwrap();
        assert_eq!((owned.topics_owned, owned.groups_owned), (1, 0));
        assert!(h.run_as(&alice, topic("d")).is_ok());
    }

    /// A user who loses the consume permission loses its leases at the next pulse: the messages
    /// go to other workers at once, not when the leases would have expired.
    #[test]
    fn revoking_consume_ends_the_users_leases() {
        let mut h = harness();
        h.create_topic("t", TopicConfig::default());
        h.create_group("t", "g", GroupConfig::default());
        h.create_group("t", "h", GroupConfig::default());
        h.run_as(&root(), new_user("alice", &["consume:t/*"], Quotas::UNLIMITED)).unwrap();
        h.publish("t", &["1", "2", "3", "4"]);
        let alice = Actor::User("alice".into());
        let lease = |group: &str, count_max| Command::Lease {
            topic: "t".into(),
            group: group.into(),
            consumer: "w".into(),
            count_max,
            lease_ms: Some(60_000),
            bytes_max: None,
        };
        let Ok(Output::Leased(on_g)) = h.run_as(&alice, lease("g", 3)) else { panic!() };
        let Ok(Output::Leased(on_h)) = h.run_as(&alice, lease("h", 2)) else { panic!() };
        assert_eq!((on_g.grants.len(), on_h.grants.len()), (3, 2));
        // Narrowed to group h: the leases on g end, those on h stay.
        h.run_as(&root(), set_permissions("alice", &["consume:t/h"])).unwrap();
        let report = h.pulse();
        assert_eq!(report.revoked, 3);
        assert_eq!(h.group("t", "g").counts.leased, 0);
        assert_eq!(h.group("t", "h").counts.leased, 2);
        let other = h.lease("t", "g", "w2", 10, 1_000);
        assert_eq!(other.grants.len(), 4, "the revoked messages are ready at once, with the untouched one");
        let tokens: Vec<u64> = on_g.grants.iter().map(|g| g.token).collect();
        assert!(matches!(
            h.run_as(&alice, Command::Ack { topic: "t".into(), group: "g".into(), tokens }),
            Err(MachineError::Forbidden(_))
        ));
        // Deleted: the rest go too, and the index is empty.
        h.run_as(&root(), Command::DeleteUser { name: "alice".into() }).unwrap();
        assert_eq!(h.pulse().revoked, 2);
        assert_eq!(h.machine.store().len(Table::HolderLeases), 0);
        assert_eq!(h.machine.store().len(Table::Chores), 0);
    }

    /// More batches than one page: the chore goes on across pulses, from where it stopped,
    /// until every lease is gone, and then removes itself.
    #[test]
    fn a_revocation_walks_many_batches_across_pulses() {
        let mut h = harness();
        h.create_topic("t", TopicConfig::default());
        h.create_group("t", "g", GroupConfig::default());
        h.run_as(&root(), new_user("alice", &["consume:t/g"], Quotas::UNLIMITED)).unwrap();
        let batches = REVOKE_PAGE * 2 + 5;
        h.publish("t", &vec!["m"; batches]);
        let alice = Actor::User("alice".into());
        for _ in 0..batches {
            let lease = Command::Lease {
                topic: "t".into(),
                group: "g".into(),
                consumer: "w".into(),
                count_max: 1,
                lease_ms: Some(60_000),
                bytes_max: None,
            };
            assert!(h.run_as(&alice, lease).is_ok());
        }
        assert_eq!(h.machine.store().len(Table::HolderLeases), batches);
        h.run_as(&root(), set_permissions("alice", &[])).unwrap();
        let mut pulses = 0;
        let mut revoked = 0;
        while h.machine.store().len(Table::Chores) > 0 {
            revoked += h.pulse().revoked;
            pulses += 1;
            assert!(pulses <= 10, "the chore never ends");
        }
        assert_eq!((revoked, h.group("t", "g").counts.leased), (batches as u64, 0));
        assert_eq!(pulses, 3, "one page of {REVOKE_PAGE} batches per pulse");
        assert_eq!(h.machine.store().len(Table::HolderLeases), 0);
    }

    #[test]
    fn a_revocation_forgets_batches_of_deleted_groups() {
        let mut h = harness();
        h.create_topic("t", TopicConfig::default());
        h.create_group("t", "g", GroupConfig::default());
        h.run_as(&root(), new_user("alice", &["consume:*"], Quotas::UNLIMITED)).unwrap();
        h.publish("t", &["1"]);
        let lease = Command::Lease {
            topic: "t".into(),
            group: "g".into(),
            consumer: "w".into(),
            count_max: 1,
            lease_ms: None,
            bytes_max: None,
        };
        h.run_as(&Actor::User("alice".into()), lease).unwrap();
        h.ok(Command::DeleteGroup { topic: "t".into(), name: "g".into() });
        h.pulse();
        assert_eq!(h.machine.store().len(Table::HolderLeases), 1, "purging a group leaves the holder index");
        h.run_as(&root(), set_permissions("alice", &[])).unwrap();
        h.pulse();
        assert_eq!(h.machine.store().len(Table::HolderLeases), 0);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Lease { user: usize, group: usize },
        Ack { user: usize, pick: usize },
        Grant { user: usize, group: usize },
        Revoke { user: usize, group: usize },
        Publish,
        Pulse,
    }

    fn step() -> impl Strategy<Value = Step> {
        let (user, group) = (0usize..2, 0usize..2);
        prop_oneof![
            3 => (user.clone(), group.clone()).prop_map(|(user, group)| Step::Lease { user, group }),
            2 => (user.clone(), any::<usize>()).prop_map(|(user, pick)| Step::Ack { user, pick }),
            1 => (user.clone(), group.clone()).prop_map(|(user, group)| Step::Grant { user, group }),
            1 => (user, group).prop_map(|(user, group)| Step::Revoke { user, group }),
            2 => Just(Step::Publish),
            2 => Just(Step::Pulse),
        ]
    }

    proptest! {
        /// Whatever users lease, ack, gain and lose, once a pulse has run after the last change,
        /// no user holds a live lease in a group it may not consume from, and every lease batch
        /// of a user is in the holder index.
        #[test]
        fn no_lease_outlives_its_permission(steps in prop::collection::vec(step(), 1..60)) {
            const USERS: [&str; 2] = ["u0", "u1"];
            const GROUPS: [&str; 2] = ["g0", "g1"];
            let mut h = harness();
            h.create_topic("t", TopicConfig::default());
            for group in GROUPS {
                h.create_group("t", group, GroupConfig::default());
            }
            let mut granted = [[true; 2]; 2];
            let mut tokens: Vec<(usize, usize, u64)> = Vec::new();
            for user in USERS {
                h.run_as(&root(), new_user(user, &["consume:t/*"], Quotas::UNLIMITED)).unwrap();
            }
            let permissions = |granted: &[bool; 2]| -> Vec<String> {
                GROUPS.iter().zip(granted).filter(|(_, g)| **g).map(|(g, _)| format!("consume:t/{g}")).collect()
            };
            for step in steps {
                h.advance(100);
                match step {
                    Step::Lease { user, group } => {
                        let command = Command::Lease { topic: "t".into(), group: GROUPS[group].into(), consumer: "w".into(), count_max: 2, lease_ms: Some(60_000), bytes_max: None };
                        if let Ok(Output::Leased(leased)) = h.run_as(&Actor::User(USERS[user].into()), command) {
                            prop_assert!(granted[user][group], "a user without the permission was granted a lease");
                            tokens.extend(leased.grants.iter().map(|g| (user, group, g.token)));
                        }
                    }
                    Step::Ack { user, pick } if !tokens.is_empty() => {
                        let (_, group, token) = tokens.remove(pick % tokens.len());
                        let command = Command::Ack { topic: "t".into(), group: GROUPS[group].into(), tokens: vec![token] };
                        let _ = h.run_as(&Actor::User(USERS[user].into()), command);
                    }
                    Step::Ack { .. } => {}
                    Step::Grant { user, group } | Step::Revoke { user, group } => {
                        granted[user][group] = matches!(step, Step::Grant { .. });
                        let texts = permissions(&granted[user]);
                        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
                        h.run_as(&root(), set_permissions(USERS[user], &texts)).unwrap();
                    }
                    Step::Publish => { h.publish("t", &["m"]); }
                    Step::Pulse => { h.pulse(); }
                }
            }
            h.pulse();
            let store = h.machine.store();
            for (key, value) in store.range(Table::Leases, &[], None, usize::MAX).unwrap() {
                let batch: crate::records::LeaseBatchRecord = decode(&value).unwrap();
                let (group_id, _) = keys::parse_pair(&key).unwrap();
                let group_index = GROUPS.iter().position(|g| h.group("t", g).id == group_id).unwrap();
                let holder = batch.holder.clone().expect("every lease here was a user's");
                let user = USERS.iter().position(|u| *u == holder).unwrap();
                let indexed = keys::holder_lease(&holder, group_id, batch.last_token());
                prop_assert!(store.get(Table::HolderLeases, &indexed).unwrap().is_some(), "batch missing from the index");
                let live = query::leases(store, group_id, usize::MAX).unwrap();
                let batch_live = live.iter().any(|(token, _)| (batch.first_token..=batch.last_token()).contains(token));
                prop_assert!(!batch_live || granted[user][group_index], "{holder} holds a live lease on {}", GROUPS[group_index]);
            }
        }
    }
}
