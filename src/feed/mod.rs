//! Trusted sources of versions besides the upstream's header: today the
//! publish API ([`publish`]); optional feeds (Redis) would sit beside it.

pub mod publish;
