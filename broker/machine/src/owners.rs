//! What users own: topics and groups each user created, counted against the user's quotas. The
//! owners table records the creating user's id, so deleting a topic or group gives the quota back
//! to that same user, not to a later user who took the name.

use serde::{Deserialize, Serialize};

use crate::access::Actor;
use crate::ctx::{Ctx, Res};
use crate::keys;
use crate::outcome::MachineError;
use crate::store::{Store, Table};

/// What an owned thing is, for the owners table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owned {
    Topic = 1,
    Group = 2,
}

/// Who created a topic or group: the user's id tells a user from a later one of the same name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct OwnerRecord {
    user_id: u64,
    name: String,
}

/// Whether `actor` may create one more thing of `kind`: an error once its quota is used up.
pub(crate) fn check_quota<S: Store>(ctx: &mut Ctx<'_, S>, actor: &Actor, kind: Owned) -> Res<()> {
    let Actor::User(name) = actor else { return Ok(()) };
    let Some(user) = ctx.user(name)?.cloned() else { return Ok(()) };
    let (owned, quota, what) = match kind {
        Owned::Topic => (user.topics_owned, user.quotas.topics_max, "topics"),
        Owned::Group => (user.groups_owned, user.quotas.groups_max, "work groups"),
    };
    match quota {
        Some(max) if owned >= max => {
            Err(MachineError::QuotaExceeded(format!("user {name:?} may own at most {max} {what}")).into())
        }
        _ => Ok(()),
    }
}

/// Records that `actor` created the `kind` with `id`.
pub(crate) fn take<S: Store>(ctx: &mut Ctx<'_, S>, actor: &Actor, kind: Owned, id: u64) -> Res<()> {
    let Actor::User(name) = actor else { return Ok(()) };
    let Some(mut user) = ctx.user(name)?.cloned() else { return Ok(()) };
    match kind {
        Owned::Topic => user.topics_owned += 1,
        Owned::Group => user.groups_owned += 1,
    }
    ctx.save_user(&user)?;
    ctx.save(Table::Owners, &keys::owned(kind as u8, id), &OwnerRecord { user_id: user.id, name: user.name })
}

/// The `kind` with `id` is gone: its creator, if still the same user, owns one fewer.
pub(crate) fn disown<S: Store>(ctx: &mut Ctx<'_, S>, kind: Owned, id: u64) -> Res<()> {
    let key = keys::owned(kind as u8, id);
    let Some(owner) = ctx.load::<OwnerRecord>(Table::Owners, &key)? else { return Ok(()) };
    ctx.remove(Table::Owners, &key)?;
    let Some(mut user) = ctx.user(&owner.name)?.filter(|user| user.id == owner.user_id).cloned() else {
        return Ok(());
    };
    match kind {
        Owned::Topic => user.topics_owned -= 1,
        Owned::Group => user.groups_owned -= 1,
    }
    ctx.save_user(&user)
}
