//! Listeners, the connection loop (HTTP/1.1 keep-alive + h2c) and graceful shutdown.
