//! The hit path: a poll whose client is not behind a fresh entry is answered
//! from memory; everything else is handed to the upstream.
