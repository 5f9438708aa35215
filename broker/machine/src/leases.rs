//! The lease index of work groups. Each lease command's grants are one [`LeaseBatchRecord`] under
//! (group id, last token), so a token finds its message with one range read, and one deadlines
//! entry per batch drives expiry. Whether a token is still live is its message's pending record's
//! say, never the batch's: a batch only counts its live tokens, to know when it can go.
//!
//! The deadlines entry of a batch is a lower bound: at or before the earliest deadline among its
//! live tokens. An extend that moves a deadline later leaves it in place, and the pulse that finds
//! nothing due yet moves it on; an extend that moves a deadline earlier moves it at once.

use std::collections::BTreeMap;

use crate::keys;
use crate::machine::{Ctx, Res};
use crate::records::{LeaseBatchRecord, PendingRecord, decode, load};
use crate::store::{Store, StoreError, StoreRead, Table, prefix_end};

/// Stores a new batch and its deadlines entry.
pub(crate) fn open<S: Store>(ctx: &mut Ctx<'_, S>, group_id: u64, batch: &LeaseBatchRecord) -> Res<()> {
    assert!(!batch.seqs.is_empty() && batch.live as usize == batch.seqs.len(), "a new batch is all live: {batch:?}");
    let last_token = batch.last_token();
    ctx.save(Table::Leases, &keys::pair(group_id, last_token), batch)?;
    ctx.mark(Table::Deadlines, &keys::deadline(batch.deadline_ms, group_id, last_token))
}

/// Replaces a batch's deadlines entry at `indexed_ms` with one at its `deadline_ms`, or drops the
/// batch and its entry when nothing in it is live.
pub(crate) fn store<S: Store>(
    ctx: &mut Ctx<'_, S>,
    group_id: u64,
    batch: &LeaseBatchRecord,
    indexed_ms: u64,
) -> Res<()> {
    let last_token = batch.last_token();
    let key = keys::pair(group_id, last_token);
    if batch.live == 0 {
        ctx.remove(Table::Leases, &key)?;
        return ctx.remove(Table::Deadlines, &keys::deadline(indexed_ms, group_id, last_token));
    }
    ctx.save(Table::Leases, &key, batch)?;
    if batch.deadline_ms != indexed_ms {
        ctx.remove(Table::Deadlines, &keys::deadline(indexed_ms, group_id, last_token))?;
        ctx.mark(Table::Deadlines, &keys::deadline(batch.deadline_ms, group_id, last_token))?;
    }
    Ok(())
}

/// The batches one settle command touches: each read once, changed in memory, and written back
/// once by [`Touched::store`].
#[derive(Debug)]
pub(crate) struct Touched {
    group_id: u64,
    /// By last token. Only `live` and `deadline_ms` ever change, so their values as read tell
    /// whether the batch needs writing back.
    batches: BTreeMap<u64, TouchedBatch>,
}

#[derive(Debug)]
struct TouchedBatch {
    batch: LeaseBatchRecord,
    live_read: u32,
    indexed_ms: u64,
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
                let last_token = keys::read_u64(&key, 8)?;
                assert_eq!(batch.last_token(), last_token, "lease batch stored under the wrong key");
                if batch.first_token > token {
                    return Ok(None);
                }
                let (live_read, indexed_ms) = (batch.live, batch.deadline_ms);
                self.batches.entry(last_token).or_insert(TouchedBatch { batch, live_read, indexed_ms });
                last_token
            }
        };
        Ok(self.batches.get_mut(&last_token).map(|touched| &mut touched.batch))
    }

    /// Writes back every batch that changed.
    pub(crate) fn store<S: Store>(self, ctx: &mut Ctx<'_, S>) -> Res<()> {
        for TouchedBatch { batch, live_read, indexed_ms } in self.batches.into_values() {
            if batch.live != live_read || batch.deadline_ms != indexed_ms {
                store(ctx, self.group_id, &batch, indexed_ms)?;
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
                let pending: Option<PendingRecord> = load(store, Table::Pending, &keys::pair(group_id, seq))?;
                if pending.and_then(|p| p.deadline_under(token)).is_none() {
                    continue;
                }
                if found.len() == limit {
                    return Ok(found);
                }
                found.push((token, seq));
            }
        }
        match page.last() {
            Some((key, _)) if page.len() == PAGE => start = keys::pair(group_id, keys::read_u64(key, 8)? + 1),
            _ => return Ok(found),
        }
    }
}
