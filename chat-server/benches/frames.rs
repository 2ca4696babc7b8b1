//! Criterion bench of frame encoding: what the server pays per message and per delivery.
//!
//! Run with: `cargo bench -p chat-server --bench frames`
//!
//! - `encode_message`: `serde_json` of one `ServerFrame::Message` with a 100-byte text (the hub
//!   serializes each message once, however many members receive it).
//! - `encode_ack`: the `ack` frame the sender gets.
//! - `decode_send`: parsing one client `send` frame (done once per send).

#![allow(missing_docs)]

use chat_core::protocol::{ClientFrame, ServerFrame};
use chat_core::{ChatId, Message, Seq, UserId};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

/// A 100-byte message body, the seed's average message size.
const TEXT: &str = "the quick brown fox jumps over the lazy dog; the quick brown fox jumps over the lazy dog! 0123456789";

fn message() -> Message {
    let mut m = Message::new(
        ChatId(123_456),
        Seq(987_654),
        UserId(42_424_242),
        TEXT,
        1_767_225_600_123,
    );
    m.timestamp = Some(1_767_225_600_100);
    m.client_msg_id = Some("0f3c9a4e-6d2b-4c1e-9a57-3b8e2d1f4c6a".to_owned());
    m
}

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frames");
    group.throughput(Throughput::Elements(1));

    let frame = ServerFrame::Message { message: message() };
    group.bench_function("encode_message", |b| {
        b.iter(|| serde_json::to_string(black_box(&frame)))
    });

    let ack = ServerFrame::Ack {
        client_msg_id: "0f3c9a4e-6d2b-4c1e-9a57-3b8e2d1f4c6a".to_owned(),
        message: message(),
    };
    group.bench_function("encode_ack", |b| {
        b.iter(|| serde_json::to_string(black_box(&ack)))
    });

    let send = serde_json::to_string(&ClientFrame::Send {
        reply_to_seq: None,
        chat_id: ChatId(123_456),
        msg_text: TEXT.to_owned(),
        timestamp: Some(1_767_225_600_100),
        client_msg_id: "0f3c9a4e-6d2b-4c1e-9a57-3b8e2d1f4c6a".to_owned(),
    })
    .expect("encode send");
    group.bench_function("decode_send", |b| {
        b.iter(|| serde_json::from_str::<ClientFrame>(black_box(&send)))
    });
    group.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
