//! The Chorus client library: producers, worker pools and subscribers over the framed protocol
//! in `chorus-protocol`. Its modules mirror the protocol's requests.
