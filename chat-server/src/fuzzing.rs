//! Entry points for the fuzz targets in `fuzz/` (and for tests): the server's own handling of
//! one WebSocket text frame, without a socket. Not part of the stable API.

use crate::server::Server;
use crate::ws::connection::Connection;
use chat_core::UserId;

/// One pretend WebSocket connection of `user` on a server: feed it client text frames and read
/// back the frames the server queued for it, exactly as the connection's task would produce them.
pub struct FrameHarness {
    server: Server,
    conn: std::sync::Arc<Connection>,
}

impl FrameHarness {
    /// A connection of `user` (who should exist and hold a session for sends to succeed; any
    /// id works for exercising the parser and the error paths).
    pub fn new(server: &Server, user: UserId) -> FrameHarness {
        let st = server.state();
        let conn = Connection::new(st.hub.next_id(), user, chat_core::TokenHash([0; 32]), 1024);
        FrameHarness {
            server: server.clone(),
            conn,
        }
    }

    /// Handles one client text frame as the connection's task would and returns the frames
    /// the server answered with (as JSON text).
    pub async fn handle(&mut self, text: &str) -> Vec<String> {
        let st = self.server.state();
        crate::ws::frames::handle_text(&st, &self.conn, text, None).await;
        let mut out = Vec::new();
        while let Some(frame) = self.conn.pop() {
            out.push(frame.as_str().to_owned());
        }
        out
    }
}
