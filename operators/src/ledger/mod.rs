//! The traceability ledger (SPEC §8): an append-only chain of lot events, each entry
//! hash-linked to the previous one and signed with Ed25519, kept under `data/ledger/`, one
//! chain per Kafka partition (`local` without Kafka).

pub mod certificate;
pub mod chain;
pub mod desk;
pub mod entry;
mod events;
pub mod keys;
pub mod verify;

#[cfg(test)]
mod tests;
