#!/usr/bin/env python3
"""Independent checker for the history of a Jepsen-style fault run of the chat server.

The fault harness records what its clients saw as JSON Lines (one object per line): send
attempts, subscriber deliveries and (re)subscriptions, member additions and removals, injected
faults and heals, and finally each chat's full history read after every fault healed. This
script reads that file and checks the guarantees the server promises, without sharing any code
with the server (Python 3.10 or newer, standard library only).

Usage (from the repository root):

    python3 tools/faults/check_history.py HISTORY.jsonl [--summary-json OUT]

Exit status: 0 when there are no violations, 1 when there is at least one, 2 when the input is
unreadable or malformed (the message names the offending line).

Checks, each reported under its kind name with the chat and the evidence:

1. history_not_dense        a chat's final history is not exactly seqs 1..N in order.
2. duplicate_message        a client_msg_id appears more than once in a chat's final history.
3. lost_ack                 an acknowledged send (outcome ok) is missing from the final history,
                            or is there under another seq or with another text. Texts are
                            compared exactly; the server trims message texts, so the harness
                            should send texts without surrounding whitespace.
4. phantom_message          a history message whose client_msg_id no send in that chat attempted
                            (a message without client_msg_id counts as phantom too).
5. failed_but_stored        every attempt of a client_msg_id failed, yet the message is stored.
6. stream_out_of_order      a subscriber's stream skipped, repeated or went back a seq, including
                            across re-subscriptions (at most a few reported per subscriber).
   stream_mismatch          a delivered message differs from the final history at that seq, or
                            the seq is not in the final history.
7. delivered_after_removal  a user removed from a chat (removal acknowledged at t1) was delivered
                            a message whose send started after t1. The removal counts as in force
                            until the start of any member_add of that user that may have taken
                            effect after it (outcome ok or unknown, not finished before the removal
                            started); this keeps the check free of false alarms.
8. stream_incomplete        a subscriber of a never-removed user (no member_remove with outcome
                            ok or unknown) did not reach the last seq of the final history. Only
                            checked when the history contains the line
                            {"type":"note","what":"streams_drained"}.

Input rules: unknown fields are ignored, blank lines skipped, lines of unknown type counted and
ignored with a warning. Invalid JSON or UTF-8, a missing or mistyped field, t1 before t0, a
second history line for a chat, a reused fault id, a subscriber seen with two different
chat/user pairs, or no history line at all (when anything was sent) make the input malformed.

The report also gives operation counts by type and outcome, faults by kind, subscribers and
deliveries checked, and the latency of acknowledged sends (p50, p99, max, and p99 of sends that
overlap a fault window: from a fault to the heal with the same id, or to the end of the run).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

EXIT_OK = 0
EXIT_VIOLATIONS = 1
EXIT_MALFORMED = 2

OUTCOMES = ("ok", "failed", "unknown")
REPORT_LIMIT_PER_KIND = 50
ORDER_VIOLATIONS_PER_SUBSCRIBER = 5
STREAMS_DRAINED_NOTE = "streams_drained"
KNOWN_TYPES = frozenset(
    {"send", "deliver", "subscribe", "member_add", "member_remove", "fault", "heal", "history",
     "note"})

VIOLATION_KINDS = (
    "history_not_dense",
    "duplicate_message",
    "lost_ack",
    "phantom_message",
    "failed_but_stored",
    "stream_out_of_order",
    "stream_mismatch",
    "delivered_after_removal",
    "stream_incomplete",
)


class MalformedInput(Exception):
    """The history cannot be checked; `line` is the 1-based line number when one is to blame."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line

    def __str__(self) -> str:
        text = super().__str__()
        return f"line {self.line}: {text}" if self.line is not None else text


# --------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True, slots=True)
class Send:
    line: int
    client: str | None
    user: int | None
    chat: int
    client_msg_id: str
    text: str | None
    t0: int
    t1: int
    outcome: str
    seq: int | None


@dataclass(frozen=True, slots=True)
class Deliver:
    line: int
    subscriber: str
    user: int
    chat: int
    seq: int
    client_msg_id: str | None
    text: str | None
    t: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    line: int
    subscriber: str
    user: int
    chat: int
    after_seq: int
    t: int


@dataclass(frozen=True, slots=True)
class MemberChange:
    line: int
    op: str  # "member_add" or "member_remove"
    chat: int
    user: int
    t0: int
    t1: int
    outcome: str


@dataclass(frozen=True, slots=True)
class Fault:
    line: int
    id: str
    kind: str
    target: str | None
    t: int


@dataclass(frozen=True, slots=True)
class Heal:
    line: int
    id: str
    t: int


@dataclass(frozen=True, slots=True)
class HistoryMessage:
    seq: int
    client_msg_id: str | None
    text: str | None
    sender: int | None


@dataclass(frozen=True, slots=True)
class ChatHistory:
    line: int
    chat: int
    messages: tuple[HistoryMessage, ...]


StreamEvent = Subscribe | Deliver


@dataclass
class RunHistory:
    """Everything read from one history file."""

    sends: list[Send] = field(default_factory=list)
    streams: dict[str, list[StreamEvent]] = field(default_factory=dict)
    member_changes: list[MemberChange] = field(default_factory=list)
    faults: dict[str, Fault] = field(default_factory=dict)
    heals: dict[str, Heal] = field(default_factory=dict)
    histories: dict[int, ChatHistory] = field(default_factory=dict)
    line_counts: Counter[str] = field(default_factory=Counter)
    streams_drained: bool = False
    end_time: int = 0
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Parsing


class _Fields:
    """Typed access to one JSON object's fields, raising MalformedInput naming the line."""

    def __init__(self, obj: dict[str, Any], line: int, where: str | None = None) -> None:
        self.obj = obj
        self.line = line
        self.where = where if where is not None else f"{obj.get('type')!r} record"

    def fail(self, message: str) -> MalformedInput:
        return MalformedInput(f"{self.where}: {message}", self.line)

    def maybe_int(self, name: str, *, minimum: int | None = None) -> int | None:
        value = self.obj.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"field {name!r} must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(f"field {name!r} must be at least {minimum}, got {value}")
        return value

    def req_int(self, name: str, *, minimum: int | None = None) -> int:
        value = self.maybe_int(name, minimum=minimum)
        if value is None:
            raise self.fail(f"missing integer field {name!r}")
        return value

    def maybe_str(self, name: str) -> str | None:
        value = self.obj.get(name)
        if value is not None and not isinstance(value, str):
            raise self.fail(f"field {name!r} must be a string, got {value!r}")
        return value

    def req_str(self, name: str) -> str:
        value = self.maybe_str(name)
        if value is None:
            raise self.fail(f"missing string field {name!r}")
        return value

    def outcome(self) -> str:
        value = self.req_str("outcome")
        if value not in OUTCOMES:
            raise self.fail(f"outcome must be one of {', '.join(OUTCOMES)}, got {value!r}")
        return value

    def interval(self) -> tuple[int, int]:
        t0, t1 = self.req_int("t0", minimum=0), self.req_int("t1", minimum=0)
        if t1 < t0:
            raise self.fail(f"t1 ({t1}) is before t0 ({t0})")
        return t0, t1


def _parse_send(f: _Fields) -> Send:
    t0, t1 = f.interval()
    outcome = f.outcome()
    seq = f.req_int("seq", minimum=1) if outcome == "ok" else f.maybe_int("seq", minimum=1)
    return Send(
        line=f.line,
        client=f.maybe_str("client"),
        user=f.maybe_int("user"),
        chat=f.req_int("chat"),
        client_msg_id=f.req_str("client_msg_id"),
        text=f.maybe_str("text"),
        t0=t0,
        t1=t1,
        outcome=outcome,
        seq=seq,
    )


def _parse_deliver(f: _Fields) -> Deliver:
    return Deliver(
        line=f.line,
        subscriber=f.req_str("subscriber"),
        user=f.req_int("user"),
        chat=f.req_int("chat"),
        seq=f.req_int("seq"),
        client_msg_id=f.maybe_str("client_msg_id"),
        text=f.maybe_str("text"),
        t=f.req_int("t", minimum=0),
    )


def _parse_subscribe(f: _Fields) -> Subscribe:
    return Subscribe(
        line=f.line,
        subscriber=f.req_str("subscriber"),
        user=f.req_int("user"),
        chat=f.req_int("chat"),
        after_seq=f.req_int("after_seq", minimum=0),
        t=f.req_int("t", minimum=0),
    )


def _parse_member_change(f: _Fields) -> MemberChange:
    t0, t1 = f.interval()
    return MemberChange(
        line=f.line,
        op=f.req_str("type"),
        chat=f.req_int("chat"),
        user=f.req_int("user"),
        t0=t0,
        t1=t1,
        outcome=f.outcome(),
    )


def _parse_history_message(raw: Any, f: _Fields, index: int) -> HistoryMessage:
    if not isinstance(raw, dict):
        raise f.fail(f"messages[{index}] must be an object, got {raw!r}")
    m = _Fields(raw, f.line, where=f"{f.where} messages[{index}]")
    return HistoryMessage(
        seq=m.req_int("seq"),
        client_msg_id=m.maybe_str("client_msg_id"),
        text=m.maybe_str("text"),
        sender=m.maybe_int("sender"),
    )


def _parse_history(f: _Fields) -> ChatHistory:
    raw = f.obj.get("messages")
    if not isinstance(raw, list):
        raise f.fail("field 'messages' must be a list")
    messages = tuple(_parse_history_message(m, f, i) for i, m in enumerate(raw))
    return ChatHistory(line=f.line, chat=f.req_int("chat"), messages=messages)


def _record_times(obj: dict[str, Any]) -> Iterator[int]:
    for name in ("t", "t0", "t1"):
        value = obj.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            yield value


def _add_record(run: RunHistory, obj: dict[str, Any], line: int) -> None:
    f = _Fields(obj, line)
    kind = obj["type"]
    if kind == "send":
        run.sends.append(_parse_send(f))
    elif kind in ("deliver", "subscribe"):
        event = _parse_deliver(f) if kind == "deliver" else _parse_subscribe(f)
        events = run.streams.setdefault(event.subscriber, [])
        if events and (events[0].chat, events[0].user) != (event.chat, event.user):
            raise MalformedInput(
                f"subscriber {event.subscriber!r} is for chat {event.chat} user {event.user} here "
                f"but for chat {events[0].chat} user {events[0].user} on line {events[0].line}",
                line,
            )
        events.append(event)
    elif kind in ("member_add", "member_remove"):
        run.member_changes.append(_parse_member_change(f))
    elif kind == "fault":
        fault = Fault(line, f.req_str("id"), f.req_str("kind"), f.maybe_str("target"),
                      f.req_int("t", minimum=0))
        if fault.id in run.faults:
            raise MalformedInput(
                f"fault id {fault.id!r} already used on line {run.faults[fault.id].line}", line)
        run.faults[fault.id] = fault
    elif kind == "heal":
        heal = Heal(line, f.req_str("id"), f.req_int("t", minimum=0))
        if heal.id in run.heals:
            run.warnings.append(
                f"line {line}: second heal of fault {heal.id!r} ignored "
                f"(first on line {run.heals[heal.id].line})")
        else:
            run.heals[heal.id] = heal
    elif kind == "history":
        history = _parse_history(f)
        if history.chat in run.histories:
            raise MalformedInput(
                f"second final history of chat {history.chat} "
                f"(first on line {run.histories[history.chat].line})", line)
        run.histories[history.chat] = history
    elif kind == "note":
        if obj.get("what") == STREAMS_DRAINED_NOTE:
            run.streams_drained = True


def parse_lines(lines: Iterable[bytes]) -> RunHistory:
    """Parse JSON Lines (as bytes, so undecodable lines can be named) into a RunHistory."""
    run = RunHistory()
    unknown_types: Counter[str] = Counter()
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise MalformedInput(f"not valid UTF-8 ({err.reason} at byte {err.start})", number)
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise MalformedInput(f"not valid JSON ({err.msg} at column {err.colno})", number)
        if not isinstance(obj, dict):
            raise MalformedInput(f"expected a JSON object, got {type(obj).__name__}", number)
        kind = obj.get("type")
        if not isinstance(kind, str):
            raise MalformedInput("missing string field 'type'", number)
        run.line_counts[kind] += 1
        if kind not in KNOWN_TYPES:
            unknown_types[kind] += 1
            continue
        _add_record(run, obj, number)
        run.end_time = max([run.end_time, *_record_times(obj)])
    for kind, count in sorted(unknown_types.items()):
        run.warnings.append(f"ignored {count} line(s) of unknown type {kind!r}")
    _validate_run(run)
    return run


def _validate_run(run: RunHistory) -> None:
    """Whole-file consistency that single lines cannot show."""
    if not run.line_counts:
        raise MalformedInput("the history is empty, nothing to check")
    has_activity = run.sends or run.streams
    if has_activity and not run.histories:
        raise MalformedInput(
            "no 'history' lines: the final chat histories were never recorded, nothing to check "
            "against")
    active_chats = {s.chat for s in run.sends} | {e[0].chat for e in run.streams.values()}
    for chat in sorted(active_chats - run.histories.keys()):
        run.warnings.append(
            f"chat {chat} has sends or deliveries but no final history line; it is checked "
            "as if its history were empty")
    for heal in run.heals.values():
        if heal.id not in run.faults:
            run.warnings.append(f"line {heal.line}: heal of unknown fault {heal.id!r} ignored")
        elif heal.t < run.faults[heal.id].t:
            raise MalformedInput(
                f"heal of fault {heal.id!r} at t={heal.t} is before the fault at "
                f"t={run.faults[heal.id].t}", heal.line)
    for subscriber, events in run.streams.items():
        if isinstance(events[0], Deliver):
            run.warnings.append(
                f"line {events[0].line}: subscriber {subscriber!r} delivered before any subscribe "
                "line; its first delivery is taken as the start of its stream")


def read_history(path: Path) -> RunHistory:
    try:
        with path.open("rb") as fh:
            return parse_lines(fh)
    except OSError as err:
        raise MalformedInput(f"cannot read {path}: {err.strerror or err}") from err


# --------------------------------------------------------------------------------------------
# Checks


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    chat: int
    message: str
    evidence: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "chat": self.chat, "message": self.message,
                "evidence": self.evidence}


@dataclass
class ChatIndex:
    """A chat's final history, indexed by seq (first occurrence wins) and by client_msg_id."""

    by_seq: dict[int, HistoryMessage]
    by_client_msg_id: dict[str, list[HistoryMessage]]
    last_seq: int  # the highest seq, 0 for an empty history

    @classmethod
    def build(cls, history: ChatHistory | None) -> ChatIndex:
        by_seq: dict[int, HistoryMessage] = {}
        by_id: dict[str, list[HistoryMessage]] = defaultdict(list)
        messages = history.messages if history else ()
        for message in messages:
            by_seq.setdefault(message.seq, message)
            if message.client_msg_id is not None:
                by_id[message.client_msg_id].append(message)
        return cls(by_seq, dict(by_id), max(by_seq, default=0))


SendKey = tuple[int, str]  # (chat, client_msg_id)
Member = tuple[int, int]  # (chat, user)
Span = tuple[int, float]  # [start, end) in ms; end may be math.inf


@dataclass
class Context:
    run: RunHistory
    chats: dict[int, ChatIndex]
    sends_by_key: dict[SendKey, list[Send]]

    @classmethod
    def build(cls, run: RunHistory) -> Context:
        chat_ids = set(run.histories) | {s.chat for s in run.sends} | {
            events[0].chat for events in run.streams.values()}
        chats = {chat: ChatIndex.build(run.histories.get(chat)) for chat in chat_ids}
        sends: dict[SendKey, list[Send]] = defaultdict(list)
        for send in run.sends:
            sends[(send.chat, send.client_msg_id)].append(send)
        return cls(run, chats, dict(sends))

    def stored_client_msg_id(self, chat: int, seq: int) -> str | None:
        stored = self.chats[chat].by_seq.get(seq)
        return stored.client_msg_id if stored else None

    def first_attempt_t0(self, chat: int, client_msg_id: str | None) -> int | None:
        if client_msg_id is None:
            return None
        attempts = self.sends_by_key.get((chat, client_msg_id))
        return min(s.t0 for s in attempts) if attempts else None


def _preview(values: Sequence[int], limit: int = 20) -> str:
    shown = ", ".join(map(str, values[:limit]))
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _same_text(seen: str | None, stored: str | None) -> bool:
    """Texts agree unless both are known and differ (a line may leave the text out)."""
    return seen is None or stored is None or seen == stored


def check_history_dense(ctx: Context) -> Iterator[Violation]:
    for chat, history in sorted(ctx.run.histories.items()):
        seqs = [m.seq for m in history.messages]
        if seqs == list(range(1, len(seqs) + 1)):
            continue
        counts = Counter(seqs)
        duplicates = sorted(s for s, n in counts.items() if n > 1)
        missing = sorted(set(range(1, max(seqs) + 1)) - counts.keys())
        out_of_range = sorted(s for s in counts if s < 1)
        first_bad = next(i for i, s in enumerate(seqs) if s != i + 1)
        problems = []
        if missing:
            problems.append(f"missing seqs [{_preview(missing)}]")
        if duplicates:
            problems.append(f"duplicate seqs [{_preview(duplicates)}]")
        if out_of_range:
            problems.append(f"seqs below 1 [{_preview(out_of_range)}]")
        if not problems:
            problems.append("seqs out of order")
        yield Violation(
            "history_not_dense", chat,
            f"final history (line {history.line}) is not seqs 1..{len(seqs)}: "
            f"{'; '.join(problems)}; first wrong entry is #{first_bad + 1} with seq "
            f"{seqs[first_bad]}",
            {"line": history.line, "messages": len(seqs), "missing": missing[:100],
             "duplicates": duplicates[:100], "first_bad_index": first_bad,
             "first_bad_seq": seqs[first_bad]})


def check_duplicates(ctx: Context) -> Iterator[Violation]:
    for chat, index in sorted(ctx.chats.items()):
        for client_msg_id, messages in sorted(index.by_client_msg_id.items()):
            if len(messages) > 1:
                seqs = [m.seq for m in messages]
                yield Violation(
                    "duplicate_message", chat,
                    f"client_msg_id {client_msg_id!r} is stored {len(seqs)} times, at seqs {seqs}",
                    {"client_msg_id": client_msg_id, "seqs": seqs})


def check_acked_sends(ctx: Context) -> Iterator[Violation]:
    for send in ctx.run.sends:
        if send.outcome != "ok":
            continue
        stored = ctx.chats[send.chat].by_client_msg_id.get(send.client_msg_id, [])
        at_seq = [m for m in stored if m.seq == send.seq]
        evidence = {"line": send.line, "client": send.client, "client_msg_id": send.client_msg_id,
                    "acked_seq": send.seq, "t0": send.t0, "t1": send.t1,
                    "stored_seqs": [m.seq for m in stored]}
        where = f"send on line {send.line} ({send.client_msg_id!r}, acked seq {send.seq})"
        if not stored:
            yield Violation("lost_ack", send.chat, f"{where} is not in the final history",
                            evidence)
        elif not at_seq:
            yield Violation(
                "lost_ack", send.chat,
                f"{where} is stored at seq {[m.seq for m in stored]} instead", evidence)
        elif not _same_text(send.text, at_seq[0].text):
            yield Violation(
                "lost_ack", send.chat,
                f"{where} is stored with text {at_seq[0].text!r}, sent {send.text!r}",
                {**evidence, "sent_text": send.text, "stored_text": at_seq[0].text})


def check_phantoms(ctx: Context) -> Iterator[Violation]:
    for chat, history in sorted(ctx.run.histories.items()):
        for message in history.messages:
            if message.client_msg_id is None:
                reason = "has no client_msg_id"
            elif (chat, message.client_msg_id) not in ctx.sends_by_key:
                reason = f"has client_msg_id {message.client_msg_id!r} that no send attempted"
            else:
                continue
            yield Violation(
                "phantom_message", chat, f"history message at seq {message.seq} {reason}",
                {"line": history.line, "seq": message.seq,
                 "client_msg_id": message.client_msg_id, "sender": message.sender})


def check_failed_but_stored(ctx: Context) -> Iterator[Violation]:
    for (chat, client_msg_id), attempts in sorted(ctx.sends_by_key.items()):
        if any(s.outcome != "failed" for s in attempts):
            continue
        stored = ctx.chats[chat].by_client_msg_id.get(client_msg_id)
        if stored:
            lines = [s.line for s in attempts]
            yield Violation(
                "failed_but_stored", chat,
                f"client_msg_id {client_msg_id!r} failed on every attempt (lines {lines}) but is "
                f"stored at seq {[m.seq for m in stored]}",
                {"client_msg_id": client_msg_id, "attempt_lines": lines,
                 "stored_seqs": [m.seq for m in stored]})


@dataclass
class StreamCheck:
    """Walks one subscriber's events in order, tracking the seq its stream stands at."""

    ctx: Context
    subscriber: str
    position: int | None = None  # last delivered seq, or the after_seq asked for before any
    delivered: int = 0
    order_reported: int = 0
    order_suppressed: int = 0
    violations: list[Violation] = field(default_factory=list)

    def run(self, events: list[StreamEvent]) -> None:
        for event in events:
            if isinstance(event, Subscribe):
                self.on_subscribe(event)
            else:
                self.on_deliver(event)

    def on_subscribe(self, event: Subscribe) -> None:
        if self.position is not None and event.after_seq != self.position:
            what = "last delivered" if self.delivered else "earlier subscribe asked after"
            self.out_of_order(
                event.chat,
                f"subscriber {self.subscriber!r} re-subscribed on line {event.line} after seq "
                f"{event.after_seq} but its stream stood at seq {self.position} ({what})",
                {"line": event.line, "after_seq": event.after_seq, "stream_at": self.position})
        self.position = event.after_seq

    def on_deliver(self, event: Deliver) -> None:
        self.delivered += 1
        if self.position is not None and event.seq != self.position + 1:
            expected = self.position + 1
            how = ("a gap" if event.seq > expected else
                   "a repeat" if event.seq == self.position else "a step back")
            self.out_of_order(
                event.chat,
                f"subscriber {self.subscriber!r} delivered seq {event.seq} on line {event.line}, "
                f"expected {expected} ({how})",
                {"line": event.line, "seq": event.seq, "expected": expected})
        self.position = event.seq
        self.compare_with_history(event)

    def compare_with_history(self, event: Deliver) -> None:
        stored = self.ctx.chats[event.chat].by_seq.get(event.seq)
        evidence = {"subscriber": self.subscriber, "line": event.line, "seq": event.seq,
                    "delivered_client_msg_id": event.client_msg_id, "delivered_text": event.text}
        where = f"subscriber {self.subscriber!r} delivered seq {event.seq} on line {event.line}"
        if stored is None:
            self.violations.append(Violation(
                "stream_mismatch", event.chat, f"{where}, which is not in the final history",
                evidence))
            return
        differs = []
        if event.client_msg_id != stored.client_msg_id:
            differs.append("client_msg_id")
        if not _same_text(event.text, stored.text):
            differs.append("text")
        if differs:
            self.violations.append(Violation(
                "stream_mismatch", event.chat,
                f"{where} with {', '.join(differs)} differing from the final history "
                f"(delivered {event.client_msg_id!r}/{event.text!r}, "
                f"stored {stored.client_msg_id!r}/{stored.text!r})",
                {**evidence, "stored_client_msg_id": stored.client_msg_id,
                 "stored_text": stored.text}))

    def out_of_order(self, chat: int, message: str, evidence: dict[str, Any]) -> None:
        if self.order_reported >= ORDER_VIOLATIONS_PER_SUBSCRIBER:
            self.order_suppressed += 1
            return
        self.order_reported += 1
        self.violations.append(Violation(
            "stream_out_of_order", chat, message, {"subscriber": self.subscriber, **evidence}))


@dataclass
class StreamResults:
    violations: list[Violation]
    positions: dict[str, int | None]
    deliveries: int
    order_suppressed: int


def check_streams(ctx: Context) -> StreamResults:
    violations: list[Violation] = []
    positions: dict[str, int | None] = {}
    deliveries = suppressed = 0
    for subscriber, events in sorted(ctx.run.streams.items()):
        walk = StreamCheck(ctx, subscriber)
        walk.run(events)
        violations += walk.violations
        positions[subscriber] = walk.position
        deliveries += walk.delivered
        suppressed += walk.order_suppressed
    return StreamResults(violations, positions, deliveries, suppressed)


def removal_windows(changes: list[MemberChange]) -> dict[Member, list[Span]]:
    """For each (chat, user): the (start, end) spans in which the user was surely not a member.

    A span starts when an ok member_remove was acknowledged (t1) and ends at the start (t0) of
    the first member_add with outcome ok or unknown that may have taken effect after that
    removal, i.e. that did not finish before the removal started.
    """
    by_member: dict[Member, list[MemberChange]] = defaultdict(list)
    for change in changes:
        by_member[(change.chat, change.user)].append(change)
    windows: dict[Member, list[Span]] = {}
    for member, member_changes in by_member.items():
        adds = [c for c in member_changes if c.op == "member_add" and c.outcome != "failed"]
        spans: list[Span] = []
        for removal in member_changes:
            if removal.op != "member_remove" or removal.outcome != "ok":
                continue
            later_adds = [a.t0 for a in adds if not (a.outcome == "ok" and a.t1 < removal.t0)]
            end = min(later_adds, default=math.inf)
            if end > removal.t1:
                spans.append((removal.t1, end))
        if spans:
            windows[member] = spans
    return windows


def check_removals(ctx: Context) -> Iterator[Violation]:
    windows = removal_windows(ctx.run.member_changes)
    for subscriber, events in sorted(ctx.run.streams.items()):
        spans = windows.get((events[0].chat, events[0].user))
        if not spans:
            continue
        for event in events:
            if not isinstance(event, Deliver):
                continue
            client_msg_id = event.client_msg_id or ctx.stored_client_msg_id(event.chat, event.seq)
            sent_at = ctx.first_attempt_t0(event.chat, client_msg_id)
            if sent_at is None:
                continue
            removed_at = next((start for start, end in spans if start < sent_at < end), None)
            if removed_at is not None:
                yield Violation(
                    "delivered_after_removal", event.chat,
                    f"subscriber {subscriber!r} of user {event.user} delivered seq {event.seq} "
                    f"({client_msg_id!r}, first sent at t={sent_at}) on line {event.line}, but "
                    f"the user's removal was acknowledged at t={removed_at}",
                    {"subscriber": subscriber, "user": event.user, "line": event.line,
                     "seq": event.seq, "client_msg_id": client_msg_id, "send_t0": sent_at,
                     "removed_at": removed_at})


def check_completion(ctx: Context, positions: dict[str, int | None]) -> Iterator[Violation]:
    maybe_removed = {(c.chat, c.user) for c in ctx.run.member_changes
                     if c.op == "member_remove" and c.outcome != "failed"}
    for subscriber, events in sorted(ctx.run.streams.items()):
        chat, user = events[0].chat, events[0].user
        subscribes = [e for e in events if isinstance(e, Subscribe)]
        if not subscribes or (chat, user) in maybe_removed:
            continue
        reached = positions[subscriber] or 0
        last_seq = ctx.chats[chat].last_seq
        if reached < last_seq:
            yield Violation(
                "stream_incomplete", chat,
                f"subscriber {subscriber!r} of user {user} reached seq {reached} but the final "
                f"history ends at seq {last_seq} (last subscribed on line {subscribes[-1].line})",
                {"subscriber": subscriber, "user": user, "reached": reached,
                 "last_seq": last_seq, "last_subscribe_line": subscribes[-1].line})


# --------------------------------------------------------------------------------------------
# Statistics and the whole check


def percentile(values: Sequence[int], p: float) -> int | None:
    """Nearest-rank percentile of already sorted values; None when there are none."""
    if not values:
        return None
    rank = max(1, math.ceil(p / 100 * len(values)))
    return values[rank - 1]


def fault_windows(run: RunHistory) -> list[tuple[str, int, int]]:
    """(kind, start, end) of every fault; an unhealed one lasts to the end of the run."""
    windows = []
    for fault in run.faults.values():
        heal = run.heals.get(fault.id)
        windows.append((fault.kind, fault.t, heal.t if heal else run.end_time))
    return windows


def latency_summary(run: RunHistory) -> dict[str, Any]:
    windows = fault_windows(run)
    acked = [s for s in run.sends if s.outcome == "ok"]
    overall = sorted(s.t1 - s.t0 for s in acked)

    def overlapping(kinds: set[str] | None) -> list[int]:
        return sorted(s.t1 - s.t0 for s in acked
                      if any((kinds is None or kind in kinds) and s.t0 <= end and s.t1 >= start
                             for kind, start, end in windows))

    during = overlapping(None)
    by_kind = {}
    for kind in sorted({kind for kind, _, _ in windows}):
        values = overlapping({kind})
        by_kind[kind] = {"count": len(values), "p99": percentile(values, 99)}
    return {
        "count": len(overall),
        "p50": percentile(overall, 50),
        "p99": percentile(overall, 99),
        "max": overall[-1] if overall else None,
        "during_faults": {"count": len(during), "p99": percentile(during, 99),
                          "by_kind": by_kind},
    }


def unknown_resolution(run: RunHistory) -> dict[str, int]:
    """Of the client_msg_ids that had an unknown outcome: how many were stored in the end."""
    stored = {(h.chat, m.client_msg_id) for h in run.histories.values() for m in h.messages}
    unknown = {(s.chat, s.client_msg_id) for s in run.sends if s.outcome == "unknown"}
    settled = {(s.chat, s.client_msg_id) for s in run.sends if s.outcome != "unknown"}
    return {
        "ids_with_an_unknown_outcome": len(unknown),
        "later_settled_by_a_resend": len(unknown & settled),
        "stored": len(unknown & stored),
        "not_stored": len(unknown - stored),
    }


@dataclass
class CheckResult:
    run: RunHistory
    violations: list[Violation]
    subscribers: int
    deliveries: int
    order_suppressed: int
    latency: dict[str, Any]

    @property
    def counts(self) -> Counter[str]:
        return Counter(v.kind for v in self.violations)

    def operations(self) -> dict[str, dict[str, int]]:
        ops: dict[str, Counter[str]] = {"send": Counter(), "member_add": Counter(),
                                        "member_remove": Counter()}
        for send in self.run.sends:
            ops["send"][send.outcome] += 1
        for change in self.run.member_changes:
            ops[change.op][change.outcome] += 1
        return {op: {o: counter[o] for o in OUTCOMES} for op, counter in ops.items()}

    def faults(self) -> dict[str, Any]:
        by_kind = Counter(f.kind for f in self.run.faults.values())
        never_healed = sorted(i for i in self.run.faults if i not in self.run.heals)
        return {"total": len(self.run.faults), "by_kind": dict(sorted(by_kind.items())),
                "never_healed": never_healed}

    def summary(self) -> dict[str, Any]:
        return {
            "ok": not self.violations,
            "lines_by_type": dict(sorted(self.run.line_counts.items())),
            "operations": self.operations(),
            "faults": self.faults(),
            "chats_checked": len(self.run.histories),
            "history_messages": sum(len(h.messages) for h in self.run.histories.values()),
            "subscribers_checked": self.subscribers,
            "deliveries_checked": self.deliveries,
            "stream_completeness_checked": self.run.streams_drained,
            "latency_ms": self.latency,
            "unknown_outcomes": unknown_resolution(self.run),
            "violation_counts": {k: self.counts[k] for k in VIOLATION_KINDS},
            "stream_out_of_order_suppressed": self.order_suppressed,
            "violations": [v.to_json() for v in self.shown_violations()],
            "warnings": self.run.warnings,
        }

    def shown_violations(self) -> list[Violation]:
        shown: list[Violation] = []
        for kind in VIOLATION_KINDS:
            shown += [v for v in self.violations if v.kind == kind][:REPORT_LIMIT_PER_KIND]
        return shown


def check(run: RunHistory) -> CheckResult:
    ctx = Context.build(run)
    streams = check_streams(ctx)
    violations = [
        *check_history_dense(ctx),
        *check_duplicates(ctx),
        *check_acked_sends(ctx),
        *check_phantoms(ctx),
        *check_failed_but_stored(ctx),
        *streams.violations,
        *check_removals(ctx),
    ]
    if run.streams_drained:
        violations += check_completion(ctx, streams.positions)
    return CheckResult(run, violations, len(run.streams), streams.deliveries,
                       streams.order_suppressed, latency_summary(run))


# --------------------------------------------------------------------------------------------
# Report


def _ms(value: int | None) -> str:
    return "n/a" if value is None else f"{value} ms"


def render_report(result: CheckResult, source: str) -> str:
    summary = result.summary()
    out = [f"History check of {source}"]
    lines = summary["lines_by_type"]
    out.append(f"Lines: {sum(lines.values())} ("
               + ", ".join(f"{k} {n}" for k, n in lines.items()) + ")")
    out.append("Operations by outcome:")
    for op, outcomes in summary["operations"].items():
        out.append(f"  {op:<14} " + "  ".join(f"{o} {n}" for o, n in outcomes.items()))
    faults = summary["faults"]
    kinds = ", ".join(f"{k} {n}" for k, n in faults["by_kind"].items()) or "none"
    out.append(f"Faults injected: {faults['total']} ({kinds})"
               + (f"; never healed: {', '.join(faults['never_healed'])}"
                  if faults["never_healed"] else ""))
    out.append(f"Chats checked: {summary['chats_checked']} "
               f"({summary['history_messages']} messages in final histories)")
    out.append(f"Subscribers checked: {summary['subscribers_checked']}; "
               f"deliveries checked: {summary['deliveries_checked']}")
    if result.run.streams_drained:
        out.append("Stream completeness (check 8): checked")
    else:
        out.append('Stream completeness (check 8): SKIPPED, no {"type":"note","what":'
                   '"streams_drained"} line in the history')
    latency = summary["latency_ms"]
    during = latency["during_faults"]
    out.append(f"Send latency (ok sends, n={latency['count']}): p50 {_ms(latency['p50'])}, "
               f"p99 {_ms(latency['p99'])}, max {_ms(latency['max'])}")
    out.append(f"  during fault windows (n={during['count']}): p99 {_ms(during['p99'])}")
    for kind, numbers in during["by_kind"].items():
        out.append(f"    {kind} (n={numbers['count']}): p99 {_ms(numbers['p99'])}")
    unknown = summary["unknown_outcomes"]
    out.append(f"Unknown outcomes: {unknown['ids_with_an_unknown_outcome']} ids "
               f"({unknown['later_settled_by_a_resend']} settled by a resend; in the end "
               f"{unknown['stored']} stored once, {unknown['not_stored']} not stored)")
    for warning in result.run.warnings:
        out.append(f"Warning: {warning}")
    out += _render_violations(result)
    return "\n".join(out) + "\n"


def _render_violations(result: CheckResult) -> list[str]:
    counts = result.counts
    if not result.violations:
        return ["Violations: none", "RESULT: PASS"]
    total = sum(counts.values())
    out = [f"Violations: {total} ("
           + ", ".join(f"{k} {counts[k]}" for k in VIOLATION_KINDS if counts[k]) + ")"]
    for kind in VIOLATION_KINDS:
        of_kind = [v for v in result.violations if v.kind == kind]
        if not of_kind:
            continue
        out.append(f"  {kind}: {len(of_kind)}")
        for violation in of_kind[:REPORT_LIMIT_PER_KIND]:
            out.append(f"    [{kind}] chat {violation.chat}: {violation.message}")
        if len(of_kind) > REPORT_LIMIT_PER_KIND:
            out.append(f"    ... and {len(of_kind) - REPORT_LIMIT_PER_KIND} more {kind}")
        if kind == "stream_out_of_order" and result.order_suppressed:
            out.append(f"    ... plus {result.order_suppressed} further out-of-order steps not "
                       f"reported (at most {ORDER_VIOLATIONS_PER_SUBSCRIBER} per subscriber)")
    out.append("RESULT: FAIL")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check the JSON Lines history of a chat-server fault run.")
    parser.add_argument("history", type=Path, help="the history file (JSON Lines)")
    parser.add_argument("--summary-json", type=Path, metavar="OUT",
                        help="also write the summary numbers and the violations (the first "
                        f"{REPORT_LIMIT_PER_KIND} of each kind) as JSON to OUT")
    args = parser.parse_args(argv)
    try:
        run = read_history(args.history)
    except MalformedInput as err:
        print(f"{args.history}: malformed history: {err}", file=sys.stderr)
        return EXIT_MALFORMED
    result = check(run)
    sys.stdout.write(render_report(result, str(args.history)))
    if args.summary_json is not None:
        try:
            args.summary_json.write_text(json.dumps(result.summary(), indent=2) + "\n",
                                         encoding="utf-8")
        except OSError as err:
            print(f"cannot write {args.summary_json}: {err.strerror or err}", file=sys.stderr)
            return EXIT_MALFORMED
    return EXIT_VIOLATIONS if result.violations else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
