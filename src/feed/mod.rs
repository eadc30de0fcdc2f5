//! Trusted sources of versions besides the upstream's header: the publish
//! API ([`publish`]) and the Redis feed ([`redis`]: channels and streams).

pub mod publish;
pub mod redis;
