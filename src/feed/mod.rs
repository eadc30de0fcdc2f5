//! Trusted sources of versions besides the upstream's header.

pub mod publish;
