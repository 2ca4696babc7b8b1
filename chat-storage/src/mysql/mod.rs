//! The MySQL / MariaDB store (being written).
