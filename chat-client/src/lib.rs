//! Chat client SDK (placeholder).
