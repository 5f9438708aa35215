//! The lease index of work groups. Each lease command's grants are one [`LeaseBatchRecord`] under
//! (group id, last token), so a token finds its message with one range read, and one deadlines
//! entry per batch drives expiry. A batch holds its fresh leases (first deliveries without a key)
//! itself; any other token is live while its message's pending record says so. A batch counts its
//! live tokens, to know when it can go, and sits in `fresh_batches` while it holds fresh leases.
//!
//! A batch leased by an authenticated user is also indexed under its holder (`holder_leases`),
//! so that a revocation finds the batches of the user who lost the right to hold them.
//!
//! The deadlines entry of a batch is a lower bound: at or before the earliest deadline among its
//! live tokens. An extend that moves a deadline later leaves it in place, and the pulse that finds
//! nothing due yet moves it on; an extend that moves a deadline earlier moves it at once.

use std::collections::BTreeMap;

use crate::ctx::{Ctx, Res};
use crate::keys;
use crate::records::{LeaseBatchRecord, PendingRecord, decode, load};
use crate::store::{Store, StoreError, StoreRead, Table, prefix_end};

/// Stores a new batch and its index entries.
pub(crate) fn open<S: Store>(ctx: &mut Ctx<'_, S>, group_id: u64, batch: &LeaseBatchRecord) -> Res<()> {
    assert!(!batch.seqs.is_empty() && batch.live as usize == batch.seqs.len(), "a new batch is all live: {batch:?}");
    let last_token = batch.last_token();
    ctx.save(Table::Leases, &keys::pair(group_id, last_token), batch)?;
    if let Some(holder) = &batch.holder {
        ctx.mark(Table::HolderLeases, &keys::holder_lease(holder, group_id, last_token))?;
    }
    if batch.fresh_count() > 0 {
        ctx.mark(Table::FreshBatches, &keys::pair(group_id, last_token))?;
    }
    ctx.mark(Table::Deadlines, &keys::deadline(batch.deadline_ms, group_id, last_token))
}

/// What of a batch decides its index entries, as it was read: where it sits in the deadlines
/// index, and its fresh leases (it sits in `fresh_batches` while it has any).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Indexed {
    pub deadline_ms: u64,
    pub fresh: u32,
}

impl Indexed {
    pub(crate) fn of(batch: &LeaseBatchRecord) -> Indexed {
        Indexed { deadline_ms: batch.deadline_ms, fresh: batch.fresh_count() }
    }
}

/// Writes a changed batch back and moves its index entries from `indexed` to where it now
/// belongs, or drops the batch and its entries when nothing in it is live.
pub(crate) fn store<S: Store>(
    ctx: &mut Ctx<'_, S>,
    group_id: u64,
    batch: &LeaseBatchRecord,
    indexed: Indexed,
) -> Res<()> {
    let last_token = batch.last_token();
    let key = keys::pair(group_id, last_token);
    let fresh = batch.fresh_count();
    assert!(fresh <= indexed.fresh, "a batch gained fresh leases: {batch:?}");
    if indexed.fresh > 0 && fresh == 0 {
        ctx.remove(Table::FreshBatches, &key)?;
    }
    if batch.live == 0 {
        ctx.remove(Table::Leases, &key)?;
        if let Some(holder) = &batch.holder {
            ctx.remove(Table::HolderLeases, &keys::holder_lease(holder, group_id, last_token))?;
        }
        return ctx.remove(Table::Deadlines, &keys::deadline(indexed.deadline_ms, group_id, last_token));
    }
    ctx.save(Table::Leases, &key, batch)?;
    if batch.deadline_ms != indexed.deadline_ms {
        ctx.remove(Table::Deadlines, &keys::deadline(indexed.deadline_ms, group_id, last_token))?;
        ctx.mark(Table::Deadlines, &keys::deadline(batch.deadline_ms, group_id, last_token))?;
    }
    Ok(())
}

/// The lowest message under a live fresh lease of the group, if any.
pub(crate) fn first_fresh<S: Store>(ctx: &Ctx<'_, S>, group_id: u64) -> Res<Option<u64>> {
    let prefix = keys::id(group_id);
    let end = prefix_end(&prefix);
    let Some((key, _)) = ctx.range(Table::FreshBatches, &prefix, end.as_deref(), 1)?.pop() else {
        return Ok(None);
    };
    let batch: LeaseBatchRecord = ctx
        .load(Table::Leases, &key)?
        .ok_or_else(|| StoreError::new(format!("group {group_id} indexes a lease batch it lost")))?;
    let first = batch.first_fresh_seq();
    assert!(first.is_some(), "a batch without fresh leases is indexed as fresh: {batch:?}");
    Ok(first)
}

/// The batches one settle command touches: each read once, changed in memory, and written back
/// once by [`Touched::store`].
#[derive(Debug)]
pub(crate) struct Touched {
    group_id: u64,
    /// By last token. Only `live`, `deadline_ms` and `fresh` ever change, so their values as read
    /// tell whether the batch needs writing back.
    batches: BTreeMap<u64, TouchedBatch>,
}

#[derive(Debug)]
struct TouchedBatch {
    batch: LeaseBatchRecord,
    live_read: u32,
    indexed: Indexed,
}

impl Touched {
    pub(crate) fn new(group_id: u64) -> Touched {
        Touched { group_id, batches: BTreeMap::new() }
    }

    /// The batch that issued `token`, if it is still stored.
    pub(crate) fn find<S: Store>(&mut self, ctx: &Ctx<'_, S>, token: u64) -> Res<Option<&mut LeaseBatchRecord>> {
        let cached = self.batches.range(token..).next().filter(|(_, touched)| touched.batch.first_token <= token);
        let last_token = match cached {
            Some((&last_token, _)) => last_token,
            None => {
                let start = keys::pair(self.group_id, token);
                let end = prefix_end(&keys::id(self.group_id));
                let Some((key, value)) = ctx.range(Table::Leases, &start, end.as_deref(), 1)?.pop() else {
                    return Ok(None);
                };
                let batch: LeaseBatchRecord = decode(&value)?;
                let (_, last_token) = keys::parse_pair(&key)?;
                assert_eq!(batch.last_token(), last_token, "lease batch stored under the wrong key");
                if batch.first_token > token {
                    return Ok(None);
                }
                let touched = TouchedBatch { live_read: batch.live, indexed: Indexed::of(&batch), batch };
                self.batches.entry(last_token).or_insert(touched);
                last_token
            }
        };
        Ok(self.batches.get_mut(&last_token).map(|touched| &mut touched.batch))
    }

    /// Writes back every batch that changed.
    pub(crate) fn store<S: Store>(self, ctx: &mut Ctx<'_, S>) -> Res<()> {
        for TouchedBatch { batch, live_read, indexed } in self.batches.into_values() {
            let changed = batch.live != live_read
                || batch.fresh_count() != indexed.fresh
                || batch.deadline_ms != indexed.deadline_ms;
            if changed {
                store(ctx, self.group_id, &batch, indexed)?;
            }
        }
        Ok(())
    }
}

/// The live leases of a group as (token, seq), in token order, up to `limit`.
pub(crate) fn live(store: &impl StoreRead, group_id: u64, limit: usize) -> Result<Vec<(u64, u64)>, StoreError> {
    const PAGE: usize = 64;
    let end = prefix_end(&keys::id(group_id));
    let mut start = keys::pair(group_id, 0);
    let mut found = Vec::new();
    loop {
        let page = store.range(Table::Leases, &start, end.as_deref(), PAGE)?;
        for (_, value) in &page {
            let batch: LeaseBatchRecord = decode(value)?;
            for (token, seq) in batch.slots() {
                let live = batch.is_fresh(token) || {
                    let pending: Option<PendingRecord> = load(store, Table::Pending, &keys::pair(group_id, seq))?;
                    pending.and_then(|p| p.deadline_under(token)).is_some()
                };
                if !live {
                    continue;
                }
                if found.len() == limit {
                    return Ok(found);
                }
                found.push((token, seq));
            }
        }
        match page.last() {
            Some((key, _)) if page.len() == PAGE => start = keys::pair(group_id, keys::parse_pair(key)?.1 + 1),
            _ => return Ok(found),
        }
    }
}
