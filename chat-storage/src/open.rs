//! Opening the configured stores from URLs (being written).
