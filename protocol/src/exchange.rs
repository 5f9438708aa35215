//! Each request and its answer, paired by type, once. A client sends a request `R` and gets an
//! `R::Answer` back, or the broker's `Error`; a broker serves an `R` and answers an `R::Answer`.
//! Neither side matches answer variants by hand: an answer of another kind than the request's is
//! an [`AnswerError::Mismatch`], a typed protocol error, never a panic. Peers pair their RPCs the
//! same way ([`PeerExchange`]).

use crate::pb::{self, client_frame::Body as Request, peer_frame::Body as Peer, server_frame::Body as Answer};

/// Why an answer is not the one a request expects.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnswerError {
    /// The broker answered with an error.
    #[error("{code:?}: {message}", code = .0.code(), message = .0.message)]
    Refused(pb::Error),
    /// The broker answered with another kind of answer: a broker or client bug.
    #[error("the broker answered {got} to {request}")]
    Mismatch { request: &'static str, got: &'static str },
}

/// A client request and the answer it gets.
pub trait Exchange: Sized {
    type Answer;
    /// The request's name, for errors and logs.
    const NAME: &'static str;
    fn into_request(self) -> Request;
    fn into_answer(answer: Self::Answer) -> Answer;
    fn from_answer(answer: Answer) -> Result<Self::Answer, AnswerError>;
}

/// Why a peer's answer is not the one an RPC expects.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PeerAnswerError {
    #[error("the peer refused: {}", .0.message)]
    Refused(pb::PeerError),
    #[error("the peer answered {got} to {request}")]
    Mismatch { request: &'static str, got: &'static str },
}

/// A peer RPC and its answer.
pub trait PeerExchange: Sized {
    type Answer;
    const NAME: &'static str;
    fn into_request(self) -> Peer;
    fn into_answer(answer: Self::Answer) -> Peer;
    fn from_answer(answer: Peer) -> Result<Self::Answer, PeerAnswerError>;
}

macro_rules! exchanges {
    ($($request:ident($request_type:ty) => $answer:ident($answer_type:ty);)*) => {
        $(impl Exchange for $request_type {
            type Answer = $answer_type;
            const NAME: &'static str = stringify!($request);

            fn into_request(self) -> Request {
                Request::$request(self)
            }

            fn into_answer(answer: $answer_type) -> Answer {
                Answer::$answer(answer)
            }

            fn from_answer(answer: Answer) -> Result<$answer_type, AnswerError> {
                match answer {
                    Answer::$answer(answer) => Ok(answer),
                    Answer::Error(error) => Err(AnswerError::Refused(error)),
                    other => Err(AnswerError::Mismatch { request: Self::NAME, got: answer_name(&other) }),
                }
            }
        })*
    };
}

exchanges! {
    Hello(pb::Hello) => HelloOk(pb::HelloOk);
    Ping(pb::Ping) => Pong(pb::Pong);
    Publish(pb::PublishRequest) => PublishOk(pb::PublishOk);
    Subscribe(pb::SubscribeRequest) => SubscribeOk(pb::SubscribeOk);
    Commit(pb::CommitRequest) => CommitOk(pb::CommitOk);
    Unsubscribe(pb::UnsubscribeRequest) => Done(pb::Empty);
    Lease(pb::LeaseRequest) => LeaseOk(pb::LeaseOk);
    Ack(pb::AckRequest) => SettleOk(pb::SettleOk);
    Nack(pb::NackRequest) => SettleOk(pb::SettleOk);
    Extend(pb::ExtendRequest) => SettleOk(pb::SettleOk);
    CreateTopic(pb::CreateTopic) => Topic(pb::TopicInfo);
    DescribeTopic(pb::DescribeTopic) => Topic(pb::TopicInfo);
    ListTopics(pb::ListTopics) => Topics(pb::TopicList);
    DeleteTopic(pb::DeleteTopic) => Done(pb::Empty);
    CreateGroup(pb::CreateGroup) => Group(pb::GroupInfo);
    DescribeGroup(pb::DescribeGroup) => Group(pb::GroupInfo);
    ListGroups(pb::ListGroups) => Groups(pb::GroupList);
    DeleteGroup(pb::DeleteGroup) => Done(pb::Empty);
    CreateSubscription(pb::CreateSubscription) => Subscription(pb::SubscriptionInfo);
    DeleteSubscription(pb::DeleteSubscription) => Done(pb::Empty);
    ClusterStatus(pb::ClusterStatusRequest) => ClusterStatus(pb::ClusterStatus);
    ChangeMembership(pb::ChangeMembership) => Done(pb::Empty);
    CreateUser(pb::CreateUser) => Done(pb::Empty);
    UpdateUser(pb::UpdateUser) => Done(pb::Empty);
    DeleteUser(pb::DeleteUser) => Done(pb::Empty);
    DescribeUser(pb::DescribeUser) => User(pb::UserInfo);
    ListUsers(pb::ListUsers) => Users(pb::UserList);
    MarkStateCheck(pb::MarkStateCheckRequest) => StateMark(pb::StateMark);
    StateDigest(pb::StateDigestRequest) => StateDigest(pb::StateDigest);
    UpdateTopic(pb::UpdateTopic) => Topic(pb::TopicInfo);
    UpdateGroup(pb::UpdateGroup) => Group(pb::GroupInfo);
    SeekSubscription(pb::SeekSubscription) => Subscription(pb::SubscriptionInfo);
    Redrive(pb::RedriveRequest) => RedriveOk(pb::RedriveOk);
    PeekGroup(pb::PeekGroup) => GroupPeek(pb::GroupPeek);
    TransferLeader(pb::TransferLeader) => LeaderTransferred(pb::LeaderTransferred);
}

macro_rules! peer_exchanges {
    ($($request:ident($request_type:ty) => $answer:ident($answer_type:ty);)*) => {
        $(impl PeerExchange for $request_type {
            type Answer = $answer_type;
            const NAME: &'static str = stringify!($request);

            fn into_request(self) -> Peer {
                Peer::$request(self)
            }

            fn into_answer(answer: $answer_type) -> Peer {
                Peer::$answer(answer)
            }

            fn from_answer(answer: Peer) -> Result<$answer_type, PeerAnswerError> {
                match answer {
                    Peer::$answer(answer) => Ok(answer),
                    Peer::Error(error) => Err(PeerAnswerError::Refused(error)),
                    other => Err(PeerAnswerError::Mismatch { request: Self::NAME, got: peer_name(&other) }),
                }
            }
        })*
    };
}

peer_exchanges! {
    AppendEntries(pb::AppendEntriesRequest) => AppendEntriesOk(pb::AppendEntriesResponse);
    Vote(pb::VoteRequest) => VoteOk(pb::VoteResponse);
    SnapshotChunk(pb::SnapshotChunk) => SnapshotChunkOk(pb::SnapshotChunkOk);
    Forward(pb::Forwarded) => ForwardOk(pb::ForwardedAnswer);
    PreVote(pb::PreVoteRequest) => PreVoteOk(pb::PreVoteAnswer);
    TimeoutNow(pb::TimeoutNow) => TimeoutNowOk(pb::Empty);
}

/// PeerHello is answered in kind, so its pairing is written out.
impl PeerExchange for pb::PeerHello {
    type Answer = pb::PeerHello;
    const NAME: &'static str = "Hello";

    fn into_request(self) -> Peer {
        Peer::Hello(self)
    }

    fn into_answer(answer: pb::PeerHello) -> Peer {
        Peer::Hello(answer)
    }

    fn from_answer(answer: Peer) -> Result<pb::PeerHello, PeerAnswerError> {
        match answer {
            Peer::Hello(hello) => Ok(hello),
            Peer::Error(error) => Err(PeerAnswerError::Refused(error)),
            other => Err(PeerAnswerError::Mismatch { request: Self::NAME, got: peer_name(&other) }),
        }
    }
}

/// The name of an answer's kind.
pub fn answer_name(answer: &Answer) -> &'static str {
    match answer {
        Answer::HelloOk(_) => "HelloOk",
        Answer::Pong(_) => "Pong",
        Answer::PublishOk(_) => "PublishOk",
        Answer::SubscribeOk(_) => "SubscribeOk",
        Answer::Delivery(_) => "Delivery",
        Answer::CommitOk(_) => "CommitOk",
        Answer::LeaseOk(_) => "LeaseOk",
        Answer::SettleOk(_) => "SettleOk",
        Answer::Topic(_) => "Topic",
        Answer::Topics(_) => "Topics",
        Answer::Group(_) => "Group",
        Answer::Groups(_) => "Groups",
        Answer::ClusterStatus(_) => "ClusterStatus",
        Answer::Done(_) => "Done",
        Answer::Error(_) => "Error",
        Answer::Subscription(_) => "Subscription",
        Answer::User(_) => "User",
        Answer::Users(_) => "Users",
        Answer::StateMark(_) => "StateMark",
        Answer::StateDigest(_) => "StateDigest",
        Answer::RedriveOk(_) => "RedriveOk",
        Answer::GroupPeek(_) => "GroupPeek",
        Answer::LeaderTransferred(_) => "LeaderTransferred",
    }
}

/// The name of a peer message's kind.
pub fn peer_name(body: &Peer) -> &'static str {
    match body {
        Peer::Hello(_) => "Hello",
        Peer::AppendEntries(_) => "AppendEntries",
        Peer::AppendEntriesOk(_) => "AppendEntriesOk",
        Peer::Vote(_) => "Vote",
        Peer::VoteOk(_) => "VoteOk",
        Peer::SnapshotChunk(_) => "SnapshotChunk",
        Peer::SnapshotChunkOk(_) => "SnapshotChunkOk",
        Peer::Forward(_) => "Forward",
        Peer::ForwardOk(_) => "ForwardOk",
        Peer::PreVote(_) => "PreVote",
        Peer::PreVoteOk(_) => "PreVoteOk",
        Peer::TimeoutNow(_) => "TimeoutNow",
        Peer::TimeoutNowOk(_) => "TimeoutNowOk",
        Peer::Error(_) => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_pair_with_their_requests() {
        let ok = pb::PublishOk { first_seq: 3, ..Default::default() };
        let answer = pb::PublishRequest::into_answer(ok);
        assert_eq!(pb::PublishRequest::from_answer(answer), Ok(ok));
        let refused = pb::Error::new(pb::ErrorCode::UnknownTopic, "no");
        assert_eq!(pb::PublishRequest::from_answer(Answer::Error(refused.clone())), Err(AnswerError::Refused(refused)));
        assert_eq!(
            pb::PublishRequest::from_answer(Answer::Pong(pb::Pong {})),
            Err(AnswerError::Mismatch { request: "Publish", got: "Pong" }),
            "another kind of answer is a typed error"
        );
        assert!(matches!(pb::Ping {}.into_request(), Request::Ping(_)));
    }

    #[test]
    fn peer_answers_pair_with_their_rpcs() {
        let ok = pb::VoteResponse { vote_granted: true, ..Default::default() };
        assert_eq!(pb::VoteRequest::from_answer(pb::VoteRequest::into_answer(ok)), Ok(ok));
        let hello = pb::PeerHello { from_id: 2, ..Default::default() };
        assert_eq!(pb::PeerHello::from_answer(Peer::Hello(hello)), Ok(hello));
        assert!(matches!(
            pb::AppendEntriesRequest::from_answer(Peer::SnapshotChunkOk(pb::SnapshotChunkOk::default())),
            Err(PeerAnswerError::Mismatch { request: "AppendEntries", got: "SnapshotChunkOk" })
        ));
    }
}
