//! The check every submission passes before its command runs: may this actor do this? A user's
//! permissions are read from the replicated state at the submission's log position, so a grant or
//! a revocation takes effect at the entry that made it, on every broker alike.

use crate::access::{self, Action, Actor};
use crate::command::Command;
use crate::ctx::{Ctx, Res};
use crate::outcome::MachineError;
use crate::store::Store;

/// What a command asks of its actor.
#[derive(Debug, PartialEq, Eq)]
enum Needs {
    /// Only a broker submits it (pulses, the first admin, applied membership).
    Broker,
    /// Each of these actions on its resource.
    All(Vec<(Action, String)>),
    /// Admin, or the user itself when it changes nothing but its own password.
    AdminOrSelf(String),
}

/// Refuses the submission unless `actor` may run `command`.
pub(crate) fn check<S: Store>(ctx: &mut Ctx<'_, S>, actor: &Actor, command: &Command) -> Res<()> {
    if *actor == Actor::Broker {
        return Ok(());
    }
    if let Some(topic) = reserved_target(command) {
        return Err(forbidden(format!("topic {topic:?} is reserved for the broker")));
    }
    let needs = needs(command);
    let name = match actor {
        Actor::Broker => return Ok(()),
        Actor::Anonymous if needs == Needs::Broker => return Err(forbidden("only a broker submits this".into())),
        Actor::Anonymous => return Ok(()),
        Actor::User(name) => name,
    };
    let user = ctx.user(name)?.ok_or_else(|| forbidden(format!("user {name:?} does not exist")))?;
    let allowed = |action, resource: &str| access::allows(&user.permissions, action, resource);
    match needs {
        Needs::Broker => Err(forbidden("only a broker submits this".into())),
        Needs::All(wanted) => match wanted.into_iter().find(|(action, resource)| !allowed(*action, resource)) {
            Some((action, resource)) => Err(forbidden(format!("user {name:?} may not {} {resource:?}", verb(action)))),
            None => Ok(()),
        },
        Needs::AdminOrSelf(target) if target == *name || allowed(Action::Admin, "") => Ok(()),
        Needs::AdminOrSelf(_) => Err(forbidden(format!("user {name:?} is not an admin"))),
    }
}

fn forbidden(why: String) -> crate::ctx::Fail {
    MachineError::Forbidden(why).into()
}

fn verb(action: Action) -> &'static str {
    match action {
        Action::Publish => "publish to",
        Action::Subscribe => "subscribe to",
        Action::Consume => "consume from",
        Action::Manage => "manage",
        Action::Admin => "administer",
    }
}

/// A reserved topic the command would write to as a client; reading one is a matter of
/// permissions like any other topic.
fn reserved_target(command: &Command) -> Option<&str> {
    let topic = match command {
        Command::CreateTopic { name, .. } | Command::DeleteTopic { name } | Command::UpdateTopic { name, .. } => name,
        Command::Publish(publish) => &publish.topic,
        _ => return None,
    };
    access::is_reserved(topic).then_some(topic.as_str())
}

fn needs(command: &Command) -> Needs {
    let one = |action, resource: &str| Needs::All(vec![(action, resource.to_owned())]);
    let group = |action, topic: &str, group: &str| Needs::All(vec![(action, access::group_resource(topic, group))]);
    let admin = || Needs::All(vec![(Action::Admin, String::new())]);
    match command {
        Command::CreateTopic { name, .. } | Command::DeleteTopic { name } | Command::UpdateTopic { name, .. } => {
            one(Action::Manage, name)
        }
        // Redriving publishes to whichever topics the dead letters name, known only when it runs.
        Command::Redrive { .. } => admin(),
        Command::Publish(publish) => one(Action::Publish, &publish.topic),
        Command::CreateGroup { topic, name, config } | Command::UpdateGroup { topic, name, config } => {
            let mut wanted = vec![(Action::Manage, access::group_resource(topic, name))];
            // Dead-lettering publishes to the dead-letter topic on the group's behalf.
            wanted.extend(config.dead_letter_topic.iter().map(|dlq| (Action::Publish, dlq.clone())));
            Needs::All(wanted)
        }
        Command::DeleteGroup { topic, name } => group(Action::Manage, topic, name),
        Command::CreateSubscription { topic, .. }
        | Command::DeleteSubscription { topic, .. }
        | Command::SeekSubscription { topic, .. }
        | Command::Commit { topic, .. } => one(Action::Subscribe, topic),
        Command::Lease { topic, group: name, .. }
        | Command::Ack { topic, group: name, .. }
        | Command::Nack { topic, group: name, .. }
        | Command::Extend { topic, group: name, .. } => group(Action::Consume, topic, name),
        Command::Pulse | Command::BootstrapAdmin { .. } | Command::MembershipApplied { .. } => Needs::Broker,
        Command::CreateUser(_)
        | Command::DeleteUser { .. }
        | Command::RecordMembershipChange(_)
        | Command::MarkStateCheck { .. } => admin(),
        Command::UpdateUser(update) if update.permissions.is_none() && update.quotas.is_none() => {
            Needs::AdminOrSelf(update.name.clone())
        }
        Command::UpdateUser(_) => admin(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{Permission, Quotas};
    use crate::command::{GroupConfig, NewUser, Publish, TopicConfig, UserUpdate};
    use crate::outcome::Output;
    use crate::testkit::Harness;

    fn user(h: &mut Harness, name: &str, permissions: &[&str]) {
        let permissions = permissions.iter().map(|p| Permission::parse(p).unwrap()).collect();
        let new =
            NewUser { name: name.into(), password_hash: Some("$h".into()), permissions, quotas: Quotas::UNLIMITED };
        h.ok(Command::CreateUser(new));
    }

    fn publish(topic: &str) -> Command {
        Command::Publish(Publish { topic: topic.into(), producer: None, messages: vec![Default::default()] })
    }

    #[test]
    fn each_command_needs_its_permission() {
        let mut h = Harness::new();
        h.create_topic("orders", TopicConfig::default());
        h.create_topic("dlq", TopicConfig::default());
        user(&mut h, "alice", &["publish:orders", "manage:orders/*", "consume:orders/g"]);
        let alice = Actor::User("alice".into());
        assert!(h.run_as(&alice, publish("orders")).is_ok());
        assert!(matches!(h.run_as(&alice, publish("dlq")), Err(MachineError::Forbidden(_))));
        let group = |dead_letter: Option<&str>| Command::CreateGroup {
            topic: "orders".into(),
            name: "g".into(),
            config: GroupConfig { dead_letter_topic: dead_letter.map(Into::into), ..GroupConfig::default() },
        };
        assert!(
            matches!(h.run_as(&alice, group(Some("dlq"))), Err(MachineError::Forbidden(_))),
            "dead-lettering needs publish on the dead-letter topic"
        );
        assert!(h.run_as(&alice, group(None)).is_ok());
        let delete_topic = Command::DeleteTopic { name: "orders".into() };
        assert!(matches!(h.run_as(&alice, delete_topic), Err(MachineError::Forbidden(_))));
        let sub = Command::CreateSubscription { topic: "orders".into(), name: "s".into(), start: Default::default() };
        assert!(matches!(h.run_as(&alice, sub), Err(MachineError::Forbidden(_))));
        let lease = Command::Lease {
            topic: "orders".into(),
            group: "g".into(),
            consumer: "w".into(),
            count_max: 1,
            lease_ms: None,
            bytes_max: None,
        };
        assert!(h.run_as(&alice, lease).is_ok());
        assert!(matches!(h.run_as(&alice, Command::Pulse), Err(MachineError::Forbidden(_))));
        assert!(matches!(
            h.run_as(&alice, Command::DeleteUser { name: "alice".into() }),
            Err(MachineError::Forbidden(_))
        ));
        let ghost = Actor::User("ghost".into());
        assert!(
            matches!(h.run_as(&ghost, publish("orders")), Err(MachineError::Forbidden(_))),
            "unknown users hold nothing"
        );
    }

    #[test]
    fn a_user_may_change_only_its_own_password_without_admin() {
        let mut h = Harness::new();
        user(&mut h, "root", &["admin"]);
        user(&mut h, "alice", &[]);
        user(&mut h, "bob", &[]);
        let alice = Actor::User("alice".into());
        let password = |name: &str| {
            Command::UpdateUser(UserUpdate {
                name: name.into(),
                password_hash: Some("$new".into()),
                ..UserUpdate::default()
            })
        };
        assert_eq!(h.run_as(&alice, password("alice")), Ok(Output::UserUpdated));
        assert!(matches!(h.run_as(&alice, password("bob")), Err(MachineError::Forbidden(_))));
        let promote = Command::UpdateUser(UserUpdate {
            name: "alice".into(),
            permissions: Some(vec![Permission::admin()]),
            ..UserUpdate::default()
        });
        assert!(matches!(h.run_as(&alice, promote.clone()), Err(MachineError::Forbidden(_))));
        assert_eq!(h.run_as(&Actor::User("root".into()), promote), Ok(Output::UserUpdated));
    }

    #[test]
    fn reserved_topics_refuse_clients_and_anonymous_cannot_act_as_a_broker() {
        let mut h = Harness::new();
        user(&mut h, "root", &["admin"]);
        for actor in [Actor::Anonymous, Actor::User("root".into())] {
            assert!(matches!(h.run_as(&actor, publish(".audit")), Err(MachineError::Forbidden(_))));
            let delete = Command::DeleteTopic { name: ".audit".into() };
            assert!(matches!(h.run_as(&actor, delete), Err(MachineError::Forbidden(_))));
        }
        let bootstrap = Command::BootstrapAdmin { name: "x".into(), password_hash: "$h".into() };
        assert!(matches!(h.run_as(&Actor::Anonymous, bootstrap), Err(MachineError::Forbidden(_))));
    }
}
