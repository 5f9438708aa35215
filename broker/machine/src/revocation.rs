//! Revocation: when a user's permissions change or the user goes, a chore walks the lease batches
//! the user holds (the `holder_leases` index) and ends, at that pulse, the leases of every group
//! the user may no longer consume from. Their messages become ready for other workers at once.
//! The chore keeps where it is in its value, and looks at one page of batches per pulse.

use serde::{Deserialize, Serialize};

use crate::access::{self, Action, Permission};
use crate::chore::Chore;
use crate::ctx::{Ctx, Res};
use crate::outcome::PulseReport;
use crate::records::{GroupRecord, UserRecord, decode};
use crate::store::{Store, Table, prefix_end};
use crate::{group, keys, retention};

/// Lease batches one revocation chore looks at per page.
pub(crate) const REVOKE_PAGE: usize = 64;

/// Where a revocation chore goes on from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RevokeCursor {
    user: String,
    /// The last index key looked at; empty to start.
    after: Vec<u8>,
}

/// Queues the revocation chore for `user`: from the start of its lease batches, even if a scan
/// was under way, since what it may hold changed again.
pub(crate) fn start<S: Store>(ctx: &mut Ctx<'_, S>, user: &UserRecord) -> Res<()> {
    let cursor = RevokeCursor { user: user.name.clone(), after: Vec::new() };
    ctx.save(Table::Chores, &Chore::RevokeLeases.key(user.id), &cursor)
}

/// One slice of a revocation chore, within `budget` lease tokens. True when it is done.
pub(crate) fn revoke_slice<S: Store>(
    ctx: &mut Ctx<'_, S>,
    chore: &[u8],
    cursor: &[u8],
    budget: &mut usize,
    report: &mut PulseReport,
) -> Res<bool> {
    let RevokeCursor { user, mut after } = decode(cursor)?;
    let prefix = keys::holder_prefix(&user);
    let end = prefix_end(&prefix);
    let start = if after.is_empty() { prefix } else { [after.as_slice(), &[0]].concat() };
    let permissions = ctx.user(&user)?.map(|user| user.permissions.clone()).unwrap_or_default();
    let page = ctx.keys(Table::HolderLeases, &start, end.as_deref(), REVOKE_PAGE)?;
    let mut looked_at = 0;
    for key in &page {
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        revoke_holder_batch(ctx, key, &permissions, budget, report)?;
        after = key.clone();
        looked_at += 1;
    }
    // A short page looked at whole was the last one.
    if looked_at == page.len() && page.len() < REVOKE_PAGE {
        return Ok(true);
    }
    ctx.save(Table::Chores, chore, &RevokeCursor { user, after })?;
    Ok(false)
}

/// Ends the live leases of the batch behind the index entry `key` if its holder, with
/// `permissions`, may no longer consume from its group.
fn revoke_holder_batch<S: Store>(
    ctx: &mut Ctx<'_, S>,
    key: &[u8],
    permissions: &[Permission],
    budget: &mut usize,
    report: &mut PulseReport,
) -> Res<()> {
    let (_, group_id, last_token) = keys::parse_holder_lease(key)?;
    let Some(mut group) = ctx.load::<GroupRecord>(Table::Groups, &keys::id(group_id))? else {
        // The group was deleted and its batches purged: the index entry is all that is left.
        return ctx.remove(Table::HolderLeases, key);
    };
    let Some(topic) = ctx.topic_by_id(group.topic_id)? else { return Ok(()) };
    if access::allows(permissions, Action::Consume, &access::group_resource(&topic.name, &group.name)) {
        return Ok(());
    }
    let expiry = group::revoke_batch(ctx, &mut group, last_token)?;
    *budget = budget.saturating_sub(expiry.examined);
    report.revoked += expiry.expired;
    ctx.save_group(&group)?;
    report.trimmed += retention::after_consume(ctx, topic)?;
    Ok(())
}
