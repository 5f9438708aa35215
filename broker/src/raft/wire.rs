//! openraft's types to and from protobuf, for peer RPCs and for the log on disk. Decoding
//! checks that required fields are present; a missing one is a typed error, never a panic.

use std::collections::{BTreeMap, BTreeSet};

use chorus_protocol::pb;
use openraft::{CommittedLeaderId, EntryPayload, LeaderId};

use super::pre_vote::PreVote;
use super::{
    BrokerNode, Entry, EntryBytes, LogId, Membership, NodeId, SnapshotMeta, StoredMembership, TypeConfig, Vote,
};

/// A peer message that does not carry what it must.
#[derive(Debug, thiserror::Error)]
#[error("malformed peer message: missing {0}")]
pub struct WireError(pub &'static str);

type Wire<T> = Result<T, WireError>;

fn required<T>(field: Option<T>, name: &'static str) -> Wire<T> {
    field.ok_or(WireError(name))
}

pub fn log_id_to_pb(log_id: &LogId) -> pb::LogId {
    pb::LogId {
        leader_id: Some(pb::LeaderId { term: log_id.leader_id.term, node_id: log_id.leader_id.node_id }),
        index: log_id.index,
    }
}

pub fn log_id_from_pb(log_id: pb::LogId) -> Wire<LogId> {
    let leader = required(log_id.leader_id, "log id leader")?;
    Ok(LogId::new(CommittedLeaderId::new(leader.term, leader.node_id), log_id.index))
}

pub fn opt_log_id_from_pb(log_id: Option<pb::LogId>) -> Wire<Option<LogId>> {
    log_id.map(log_id_from_pb).transpose()
}

pub fn pre_vote_to_pb(request: &PreVote) -> pb::PreVoteRequest {
    pb::PreVoteRequest {
        candidate: request.candidate,
        next_term: request.next_term,
        last_log_id: request.last_log_id.as_ref().map(log_id_to_pb),
    }
}

pub fn pre_vote_from_pb(request: pb::PreVoteRequest) -> Wire<PreVote> {
    Ok(PreVote {
        candidate: request.candidate,
        next_term: request.next_term,
        last_log_id: opt_log_id_from_pb(request.last_log_id)?,
    })
}

pub fn vote_to_pb(vote: &Vote) -> pb::Vote {
    pb::Vote {
        leader_id: Some(pb::LeaderId { term: vote.leader_id.term, node_id: vote.leader_id.node_id }),
        committed: vote.committed,
    }
}

pub fn vote_from_pb(vote: Option<pb::Vote>) -> Wire<Vote> {
    let vote = required(vote, "vote")?;
    let leader = required(vote.leader_id, "vote leader")?;
    Ok(Vote { leader_id: LeaderId::new(leader.term, leader.node_id), committed: vote.committed })
}

pub fn membership_to_pb(membership: &Membership) -> pb::Membership {
    pb::Membership {
        configs: membership
            .get_joint_config()
            .iter()
            .map(|voters| pb::VoterSet { ids: voters.iter().copied().collect() })
            .collect(),
        nodes: membership
            .nodes()
            .map(|(id, node)| pb::BrokerAddr {
                id: *id,
                peer_addr: node.peer_addr.clone(),
                client_addr: node.client_addr.clone(),
            })
            .collect(),
    }
}

pub fn membership_from_pb(membership: Option<pb::Membership>) -> Wire<Membership> {
    let membership = required(membership, "membership")?;
    let configs: Vec<BTreeSet<NodeId>> =
        membership.configs.into_iter().map(|set| set.ids.into_iter().collect()).collect();
    let nodes: BTreeMap<NodeId, BrokerNode> = membership
        .nodes
        .into_iter()
        .map(|n| (n.id, BrokerNode { peer_addr: n.peer_addr, client_addr: n.client_addr }))
        .collect();
    Ok(Membership::new(configs, nodes))
}

pub fn stored_membership_to_pb(stored: &StoredMembership) -> pb::StoredMembership {
    pb::StoredMembership {
        log_id: stored.log_id().as_ref().map(log_id_to_pb),
        membership: Some(membership_to_pb(stored.membership())),
    }
}

pub fn stored_membership_from_pb(stored: Option<pb::StoredMembership>) -> Wire<StoredMembership> {
    let stored = required(stored, "stored membership")?;
    Ok(StoredMembership::new(opt_log_id_from_pb(stored.log_id)?, membership_from_pb(stored.membership)?))
}

pub fn entry_to_pb(entry: &Entry) -> pb::RaftEntry {
    use pb::raft_entry::Payload;
    let payload = match &entry.payload {
        EntryPayload::Blank => Payload::Blank(pb::Empty {}),
        EntryPayload::Normal(data) => Payload::Normal(data.0.clone()),
        EntryPayload::Membership(membership) => Payload::Membership(membership_to_pb(membership)),
    };
    pb::RaftEntry { log_id: Some(log_id_to_pb(&entry.log_id)), payload: Some(payload) }
}

pub fn entry_from_pb(entry: pb::RaftEntry) -> Wire<Entry> {
    use pb::raft_entry::Payload;
    let payload = match required(entry.payload, "entry payload")? {
        Payload::Blank(_) => EntryPayload::Blank,
        Payload::Normal(bytes) => EntryPayload::Normal(EntryBytes(bytes)),
        Payload::Membership(membership) => EntryPayload::Membership(membership_from_pb(Some(membership))?),
    };
    Ok(Entry { log_id: log_id_from_pb(required(entry.log_id, "entry log id")?)?, payload })
}

pub fn snapshot_meta_to_pb(meta: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_log_id: meta.last_log_id.as_ref().map(log_id_to_pb),
        last_membership: Some(stored_membership_to_pb(&meta.last_membership)),
        snapshot_id: meta.snapshot_id.clone(),
    }
}

pub fn snapshot_meta_from_pb(meta: Option<pb::SnapshotMeta>) -> Wire<SnapshotMeta> {
    let meta = required(meta, "snapshot meta")?;
    Ok(SnapshotMeta {
        last_log_id: opt_log_id_from_pb(meta.last_log_id)?,
        last_membership: stored_membership_from_pb(meta.last_membership)?,
        snapshot_id: meta.snapshot_id,
    })
}

pub fn append_request_to_pb(request: &openraft::raft::AppendEntriesRequest<TypeConfig>) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        vote: Some(vote_to_pb(&request.vote)),
        prev_log_id: request.prev_log_id.as_ref().map(log_id_to_pb),
        entries: request.entries.iter().map(entry_to_pb).collect(),
        leader_commit: request.leader_commit.as_ref().map(log_id_to_pb),
    }
}

pub fn append_request_from_pb(
    request: pb::AppendEntriesRequest,
) -> Wire<openraft::raft::AppendEntriesRequest<TypeConfig>> {
    Ok(openraft::raft::AppendEntriesRequest {
        vote: vote_from_pb(request.vote)?,
        prev_log_id: opt_log_id_from_pb(request.prev_log_id)?,
        entries: request.entries.into_iter().map(entry_from_pb).collect::<Wire<_>>()?,
        leader_commit: opt_log_id_from_pb(request.leader_commit)?,
    })
}

pub fn append_response_to_pb(response: &openraft::raft::AppendEntriesResponse<NodeId>) -> pb::AppendEntriesResponse {
    use openraft::raft::AppendEntriesResponse as R;
    use pb::append_entries_response::Result as P;
    let result = match response {
        R::Success => P::Success(pb::Empty {}),
        R::PartialSuccess(matching) => {
            P::PartialSuccess(pb::PartialSuccess { matching: matching.as_ref().map(log_id_to_pb) })
        }
        R::Conflict => P::Conflict(pb::Empty {}),
        R::HigherVote(vote) => P::HigherVote(vote_to_pb(vote)),
    };
    pb::AppendEntriesResponse { result: Some(result) }
}

pub fn append_response_from_pb(
    response: pb::AppendEntriesResponse,
) -> Wire<openraft::raft::AppendEntriesResponse<NodeId>> {
    use openraft::raft::AppendEntriesResponse as R;
    use pb::append_entries_response::Result as P;
    Ok(match required(response.result, "append result")? {
        P::Success(_) => R::Success,
        P::PartialSuccess(partial) => R::PartialSuccess(opt_log_id_from_pb(partial.matching)?),
        P::Conflict(_) => R::Conflict,
        P::HigherVote(vote) => R::HigherVote(vote_from_pb(Some(vote))?),
    })
}

pub fn vote_request_to_pb(request: &openraft::raft::VoteRequest<NodeId>) -> pb::VoteRequest {
    pb::VoteRequest {
        vote: Some(vote_to_pb(&request.vote)),
        last_log_id: request.last_log_id.as_ref().map(log_id_to_pb),
    }
}

pub fn vote_request_from_pb(request: pb::VoteRequest) -> Wire<openraft::raft::VoteRequest<NodeId>> {
    Ok(openraft::raft::VoteRequest {
        vote: vote_from_pb(request.vote)?,
        last_log_id: opt_log_id_from_pb(request.last_log_id)?,
    })
}

pub fn vote_response_to_pb(response: &openraft::raft::VoteResponse<NodeId>) -> pb::VoteResponse {
    pb::VoteResponse {
        vote: Some(vote_to_pb(&response.vote)),
        vote_granted: response.vote_granted,
        last_log_id: response.last_log_id.as_ref().map(log_id_to_pb),
    }
}

pub fn vote_response_from_pb(response: pb::VoteResponse) -> Wire<openraft::raft::VoteResponse<NodeId>> {
    Ok(openraft::raft::VoteResponse {
        vote: vote_from_pb(response.vote)?,
        vote_granted: response.vote_granted,
        last_log_id: opt_log_id_from_pb(response.last_log_id)?,
    })
}

pub fn snapshot_chunk_to_pb(request: &openraft::raft::InstallSnapshotRequest<TypeConfig>) -> pb::SnapshotChunk {
    pb::SnapshotChunk {
        vote: Some(vote_to_pb(&request.vote)),
        meta: Some(snapshot_meta_to_pb(&request.meta)),
        offset: request.offset,
        data: request.data.clone().into(),
        done: request.done,
    }
}

pub fn snapshot_chunk_from_pb(chunk: pb::SnapshotChunk) -> Wire<openraft::raft::InstallSnapshotRequest<TypeConfig>> {
    Ok(openraft::raft::InstallSnapshotRequest {
        vote: vote_from_pb(chunk.vote)?,
        meta: snapshot_meta_from_pb(chunk.meta)?,
        offset: chunk.offset,
        data: chunk.data.to_vec(),
        done: chunk.done,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    fn membership() -> Membership {
        let node = |p: &str| BrokerNode { peer_addr: p.into(), client_addr: format!("c{p}") };
        Membership::new(
            vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([1, 2, 3, 4])],
            BTreeMap::from([(1, node("a")), (2, node("b")), (3, node("c")), (4, node("d"))]),
        )
    }

    #[test]
    fn entries_round_trip() {
        let entries = [
            Entry { log_id: log_id(1, 1, 1), payload: EntryPayload::Blank },
            Entry { log_id: log_id(2, 3, 2), payload: EntryPayload::Normal(EntryBytes(Bytes::from_static(b"xyz"))) },
            Entry { log_id: log_id(2, 3, 3), payload: EntryPayload::Membership(membership()) },
        ];
        for entry in entries {
            let back = entry_from_pb(entry_to_pb(&entry)).unwrap();
            assert_eq!(back.log_id, entry.log_id);
            assert_eq!(format!("{:?}", back.payload), format!("{:?}", entry.payload));
        }
    }

    #[test]
    fn rpcs_round_trip() {
        let vote = Vote::new_committed(4, 2);
        let append = openraft::raft::AppendEntriesRequest::<TypeConfig> {
            vote,
            prev_log_id: Some(log_id(3, 1, 9)),
            entries: vec![Entry { log_id: log_id(4, 2, 10), payload: EntryPayload::Blank }],
            leader_commit: None,
        };
        let back = append_request_from_pb(append_request_to_pb(&append)).unwrap();
        assert_eq!(
            (back.vote, back.prev_log_id, back.leader_commit, back.entries.len()),
            (vote, append.prev_log_id, None, 1)
        );
        use openraft::raft::AppendEntriesResponse as R;
        for response in [
            R::Success,
            R::PartialSuccess(Some(log_id(1, 1, 1))),
            R::PartialSuccess(None),
            R::Conflict,
            R::HigherVote(vote),
        ] {
            assert_eq!(append_response_from_pb(append_response_to_pb(&response)).unwrap(), response);
        }
        let request = openraft::raft::VoteRequest { vote, last_log_id: Some(log_id(1, 1, 5)) };
        assert_eq!(vote_request_from_pb(vote_request_to_pb(&request)).unwrap(), request);
        let response = openraft::raft::VoteResponse { vote, vote_granted: true, last_log_id: None };
        assert_eq!(vote_response_from_pb(vote_response_to_pb(&response)).unwrap(), response);
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(4, 2, 100)),
            last_membership: StoredMembership::new(Some(log_id(1, 1, 1)), membership()),
            snapshot_id: "snap".into(),
        };
        let chunk = openraft::raft::InstallSnapshotRequest::<TypeConfig> {
            vote,
            meta: meta.clone(),
            offset: 7,
            data: vec![1, 2],
            done: true,
        };
        let back = snapshot_chunk_from_pb(snapshot_chunk_to_pb(&chunk)).unwrap();
        assert_eq!((back.meta, back.offset, back.data, back.done), (meta, 7, vec![1, 2], true));
    }

    #[test]
    fn missing_fields_are_errors() {
        assert!(vote_from_pb(None).is_err());
        assert!(
            entry_from_pb(pb::RaftEntry { log_id: None, payload: Some(pb::raft_entry::Payload::Blank(pb::Empty {})) })
                .is_err()
        );
        assert!(append_response_from_pb(pb::AppendEntriesResponse { result: None }).is_err());
        assert!(log_id_from_pb(pb::LogId { leader_id: None, index: 1 }).is_err());
    }
}
