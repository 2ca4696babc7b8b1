#!/usr/bin/env python3
"""Unit tests for tools/faults/check_history.py, the fault-run history checker.

Each test writes a small synthetic JSON Lines history to a temporary file and runs the checker
on it: a clean run passes, each kind of violation is reported on its own, and malformed input
exits with status 2. Run from the repository root with either of:

    python3 -m unittest tools/faults/test_check_history.py
    python3 tools/faults/test_check_history.py
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import check_history  # noqa: E402

CHECKER = HERE / "check_history.py"
Line = dict[str, Any]

TEXTS = {"c-1": "hello", "c-2": "second", "c-3": "rejected", "c-4": "after removal"}


def send(cmid: str, t0: int, t1: int, outcome: str, seq: int | None = None, *,
         text: str | None = None, chat: int = 1) -> Line:
    line: Line = {"type": "send", "client": "w1", "user": 1, "chat": chat,
                  "client_msg_id": cmid,
                  "text": text if text is not None else TEXTS.get(cmid, cmid),
                  "t0": t0, "t1": t1, "outcome": outcome}
    if seq is not None:
        line["seq"] = seq
    return line


def subscribe(subscriber: str, user: int, after_seq: int, t: int, chat: int = 1) -> Line:
    return {"type": "subscribe", "subscriber": subscriber, "user": user, "chat": chat,
            "after_seq": after_seq, "t": t}


def deliver(subscriber: str, user: int, seq: int, cmid: str | None, t: int, *,
            text: str | None = None, chat: int = 1) -> Line:
    return {"type": "deliver", "subscriber": subscriber, "user": user, "chat": chat, "seq": seq,
            "client_msg_id": cmid,
            "text": text if text is not None else TEXTS.get(cmid or "", cmid), "t": t}


def member(op: str, user: int, t0: int, t1: int, outcome: str = "ok", chat: int = 1) -> Line:
    return {"type": op, "chat": chat, "user": user, "t0": t0, "t1": t1, "outcome": outcome}


def history(chat: int, *messages: tuple[int, str | None]) -> Line:
    return {"type": "history", "chat": chat, "messages": [
        {"seq": seq, "client_msg_id": cmid, "text": TEXTS.get(cmid or "", cmid), "sender": 1}
        for seq, cmid in messages]}


def clean_run() -> list[Line]:
    """A run with no violation: a retried send after an unknown outcome, a failed send, a
    subscriber (s1, user 2) that re-subscribes mid-stream, a subscriber (s2, user 3) whose user
    is removed and gets nothing sent afterwards, one healed and one never-healed fault."""
    return [
        {"type": "note", "what": "run_started", "seed": 7},
        subscribe("s1", 2, 0, 5),
        subscribe("s2", 3, 0, 5),
        send("c-1", 10, 20, "ok", 1) | {"extra": "ignored"},
        deliver("s1", 2, 1, "c-1", 25),
        deliver("s2", 3, 1, "c-1", 26),
        {"type": "fault", "id": "f1", "kind": "kill_node", "target": "node2", "t": 100},
        send("c-2", 110, 400, "unknown"),
        send("c-3", 120, 130, "failed"),
        subscribe("s1", 2, 1, 300),
        send("c-2", 410, 450, "ok", 2),
        deliver("s1", 2, 2, "c-2", 455),
        deliver("s2", 3, 2, "c-2", 456),
        {"type": "heal", "id": "f1", "t": 500},
        member("member_remove", 3, 600, 650),
        send("c-4", 700, 720, "ok", 3),
        {"type": "fault", "id": "f2", "kind": "pause_redis", "t": 710},
        deliver("s1", 2, 3, "c-4", 725),
        {"type": "note", "what": "streams_drained"},
        history(1, (1, "c-1"), (2, "c-2"), (3, "c-4")),
    ]


def without(lines: list[Line], drop: Line) -> list[Line]:
    assert drop in lines, drop
    return [line for line in lines if line != drop]


def replaced(lines: list[Line], old: Line, new: Line) -> list[Line]:
    assert old in lines, old
    return [new if line == old else line for line in lines]


class Outcome:
    """What one checker run produced."""

    def __init__(self, code: int, stdout: str, stderr: str, summary: dict[str, Any] | None):
        self.code = code
        self.stdout = stdout
        self.stderr = stderr
        self.summary = summary

    @property
    def counts(self) -> dict[str, int]:
        assert self.summary is not None, self.stderr
        return {kind: n for kind, n in self.summary["violation_counts"].items() if n}


def run_checker(lines: list[Line] | str) -> Outcome:
    """Write `lines` (dicts, or raw text) to a temporary file and run the checker's main()."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.jsonl"
        summary_path = Path(tmp) / "summary.json"
        text = lines if isinstance(lines, str) else "".join(json.dumps(x) + "\n" for x in lines)
        path.write_text(text, encoding="utf-8")
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = check_history.main([str(path), "--summary-json", str(summary_path)])
        summary = (json.loads(summary_path.read_text(encoding="utf-8"))
                   if summary_path.exists() else None)
        return Outcome(code, stdout.getvalue(), stderr.getvalue(), summary)


class CheckerTestCase(unittest.TestCase):
    def assert_only(self, lines: list[Line], kind: str) -> Outcome:
        """The run fails with violations of exactly `kind` and no other."""
        outcome = run_checker(lines)
        self.assertEqual(outcome.code, 1, outcome.stdout + outcome.stderr)
        self.assertEqual(list(outcome.counts), [kind], outcome.stdout)
        self.assertIn(f"[{kind}] chat ", outcome.stdout)
        self.assertIn("RESULT: FAIL", outcome.stdout)
        return outcome


class CleanRunTest(CheckerTestCase):
    def test_clean_run_passes(self) -> None:
        outcome = run_checker(clean_run())
        self.assertEqual(outcome.code, 0, outcome.stdout + outcome.stderr)
        self.assertEqual(outcome.counts, {})
        self.assertEqual(outcome.summary["violations"], [])
        self.assertIn("Violations: none", outcome.stdout)
        self.assertIn("RESULT: PASS", outcome.stdout)
        self.assertIn("Stream completeness (check 8): checked", outcome.stdout)

    def test_summary_numbers(self) -> None:
        summary = run_checker(clean_run()).summary
        self.assertEqual(summary["operations"]["send"], {"ok": 3, "failed": 1, "unknown": 1})
        self.assertEqual(summary["operations"]["member_remove"],
                         {"ok": 1, "failed": 0, "unknown": 0})
        self.assertEqual(summary["faults"], {"total": 2,
                                             "by_kind": {"kill_node": 1, "pause_redis": 1},
                                             "never_healed": ["f2"]})
        self.assertEqual(summary["subscribers_checked"], 2)
        self.assertEqual(summary["deliveries_checked"], 5)
        self.assertTrue(summary["stream_completeness_checked"])
        # ok latencies 10, 40, 20; the fault windows [100, 500] and [710, end of run] overlap
        # the sends taking 40 ms (410..450) and 20 ms (700..720).
        self.assertEqual(summary["latency_ms"], {
            "count": 3, "p50": 20, "p99": 40, "max": 40,
            "during_faults": {"count": 2, "p99": 40, "by_kind": {
                "kill_node": {"count": 1, "p99": 40}, "pause_redis": {"count": 1, "p99": 20}}}})
        self.assertEqual(summary["unknown_outcomes"]["not_stored"], 0)

    def test_re_added_member_may_receive_again(self) -> None:
        lines = clean_run()
        lines.insert(-1, member("member_add", 3, 660, 680))
        lines.insert(-1, deliver("s2", 3, 3, "c-4", 730))
        self.assertEqual(run_checker(lines).code, 0)

    def test_member_add_with_unknown_outcome_ends_the_removal(self) -> None:
        lines = clean_run()
        lines.insert(-1, member("member_add", 3, 660, 690, "unknown"))
        lines.insert(-1, deliver("s2", 3, 3, "c-4", 730))
        self.assertEqual(run_checker(lines).code, 0)

    def test_without_drained_note_completeness_is_skipped(self) -> None:
        lines = without(clean_run(), {"type": "note", "what": "streams_drained"})
        lines = without(lines, deliver("s1", 2, 3, "c-4", 725))
        outcome = run_checker(lines)
        self.assertEqual(outcome.code, 0, outcome.stdout)
        self.assertIn("Stream completeness (check 8): SKIPPED", outcome.stdout)
        self.assertFalse(outcome.summary["stream_completeness_checked"])

    def test_command_line(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "history.jsonl"
            out = Path(tmp) / "summary.json"
            path.write_text("".join(json.dumps(x) + "\n" for x in clean_run()))
            done = subprocess.run(
                [sys.executable, str(CHECKER), str(path), "--summary-json", str(out)],
                capture_output=True, text=True, check=False)
            self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
            self.assertIn("RESULT: PASS", done.stdout)
            self.assertTrue(json.loads(out.read_text())["ok"])


class ViolationTest(CheckerTestCase):
    def test_history_with_a_hole(self) -> None:
        lines = clean_run() + [send("d-1", 10, 20, "ok", 1, chat=2),
                               send("d-3", 30, 40, "ok", 3, chat=2),
                               history(2, (1, "d-1"), (3, "d-3"))]
        outcome = self.assert_only(lines, "history_not_dense")
        self.assertIn("missing seqs [2]", outcome.stdout)

    def test_history_out_of_order(self) -> None:
        lines = replaced(clean_run(), history(1, (1, "c-1"), (2, "c-2"), (3, "c-4")),
                         history(1, (1, "c-1"), (3, "c-4"), (2, "c-2")))
        self.assert_only(lines, "history_not_dense")

    def test_retry_stored_twice(self) -> None:
        lines = replaced(clean_run(), history(1, (1, "c-1"), (2, "c-2"), (3, "c-4")),
                         history(1, (1, "c-1"), (2, "c-2"), (3, "c-4"), (4, "c-2")))
        lines.insert(-1, deliver("s1", 2, 4, "c-2", 800))
        outcome = self.assert_only(lines, "duplicate_message")
        self.assertIn("'c-2' is stored 2 times, at seqs [2, 4]", outcome.stdout)

    def test_acked_send_missing(self) -> None:
        lines = clean_run()
        lines.insert(-1, send("c-5", 800, 810, "ok", 4))
        self.assert_only(lines, "lost_ack")

    def test_acked_send_stored_under_another_seq(self) -> None:
        lines = replaced(clean_run(), send("c-4", 700, 720, "ok", 3),
                         send("c-4", 700, 720, "ok", 4))
        self.assert_only(lines, "lost_ack")

    def test_acked_send_stored_with_another_text(self) -> None:
        lines = replaced(clean_run(), send("c-4", 700, 720, "ok", 3),
                         send("c-4", 700, 720, "ok", 3, text="not what was stored"))
        self.assert_only(lines, "lost_ack")

    def test_message_nobody_sent(self) -> None:
        for cmid in ("ghost", None):
            with self.subTest(client_msg_id=cmid):
                lines = replaced(clean_run(), history(1, (1, "c-1"), (2, "c-2"), (3, "c-4")),
                                 history(1, (1, "c-1"), (2, "c-2"), (3, "c-4"), (4, cmid)))
                lines.insert(-1, deliver("s1", 2, 4, cmid, 800))
                self.assert_only(lines, "phantom_message")

    def test_failed_send_stored(self) -> None:
        lines = replaced(clean_run(), history(1, (1, "c-1"), (2, "c-2"), (3, "c-4")),
                         history(1, (1, "c-1"), (2, "c-2"), (3, "c-4"), (4, "c-3")))
        lines.insert(-1, deliver("s1", 2, 4, "c-3", 800))
        self.assert_only(lines, "failed_but_stored")

    def test_stream_gap(self) -> None:
        lines = without(clean_run(), deliver("s1", 2, 2, "c-2", 455))
        lines.insert(-1, subscribe("s3", 2, 0, 800))
        lines.insert(-1, deliver("s3", 2, 2, "c-2", 801))  # skips seq 1 it asked for
        lines.insert(-1, deliver("s3", 2, 3, "c-4", 802))
        outcome = self.assert_only(lines, "stream_out_of_order")
        self.assertEqual(outcome.counts["stream_out_of_order"], 2)
        self.assertIn("expected 2 (a gap)", outcome.stdout)
        self.assertIn("expected 1 (a gap)", outcome.stdout)

    def test_stream_repeat(self) -> None:
        lines = clean_run()
        lines.insert(lines.index(deliver("s1", 2, 1, "c-1", 25)) + 1,
                     deliver("s1", 2, 1, "c-1", 26))
        outcome = self.assert_only(lines, "stream_out_of_order")
        self.assertIn("(a repeat)", outcome.stdout)

    def test_resubscribe_from_the_wrong_place(self) -> None:
        lines = replaced(clean_run(), subscribe("s1", 2, 1, 300), subscribe("s1", 2, 0, 300))
        lines.insert(lines.index(subscribe("s1", 2, 0, 300)) + 1, deliver("s1", 2, 1, "c-1", 301))
        outcome = self.assert_only(lines, "stream_out_of_order")
        self.assertIn("re-subscribed on line", outcome.stdout)

    def test_out_of_order_reports_are_capped_per_subscriber(self) -> None:
        lines = clean_run()
        at = lines.index(deliver("s1", 2, 1, "c-1", 25)) + 1
        lines[at:at] = [deliver("s1", 2, 1, "c-1", 26) for _ in range(10)]
        outcome = self.assert_only(lines, "stream_out_of_order")
        self.assertEqual(outcome.counts["stream_out_of_order"],
                         check_history.ORDER_VIOLATIONS_PER_SUBSCRIBER)
        self.assertIn("further out-of-order steps not reported", outcome.stdout)

    def test_delivered_text_differs(self) -> None:
        lines = replaced(clean_run(), deliver("s1", 2, 2, "c-2", 455),
                         deliver("s1", 2, 2, "c-2", 455, text="garbled"))
        self.assert_only(lines, "stream_mismatch")

    def test_delivered_seq_beyond_history(self) -> None:
        lines = clean_run()
        lines.insert(-1, deliver("s1", 2, 4, "c-9", 800))
        outcome = self.assert_only(lines, "stream_mismatch")
        self.assertIn("not in the final history", outcome.stdout)

    def test_delivery_after_removal(self) -> None:
        lines = clean_run()
        lines.insert(-1, deliver("s2", 3, 3, "c-4", 730))
        outcome = self.assert_only(lines, "delivered_after_removal")
        self.assertIn("removal was acknowledged at t=650", outcome.stdout)

    def test_stream_that_stopped_early(self) -> None:
        lines = without(clean_run(), deliver("s1", 2, 3, "c-4", 725))
        outcome = self.assert_only(lines, "stream_incomplete")
        self.assertIn("reached seq 2 but the final history ends at seq 3", outcome.stdout)

    def test_report_shows_fifty_of_a_kind_then_a_count(self) -> None:
        lines = clean_run()
        lines += [send(f"lost-{i}", 800, 810, "ok", 4 + i) for i in range(60)]
        outcome = self.assert_only(lines, "lost_ack")
        self.assertEqual(outcome.counts["lost_ack"], 60)
        self.assertEqual(outcome.stdout.count("[lost_ack]"), 50)
        self.assertIn("... and 10 more lost_ack", outcome.stdout)
        self.assertEqual(len(outcome.summary["violations"]), 50)


class MalformedInputTest(unittest.TestCase):
    def assert_malformed(self, text: str, line: int) -> None:
        outcome = run_checker(text)
        self.assertEqual(outcome.code, 2, outcome.stdout + outcome.stderr)
        self.assertIn(f"line {line}:", outcome.stderr)
        self.assertIsNone(outcome.summary)

    def test_broken_json(self) -> None:
        good = "".join(json.dumps(x) + "\n" for x in clean_run()[:3])
        self.assert_malformed(good + '{"type": "send", "chat": 1,\n', 4)

    def test_bad_records(self) -> None:
        bad_lines = {
            "not an object": "[1, 2]",
            "no type": '{"chat": 1}',
            "missing field": json.dumps(send("c-1", 10, 20, "ok", 1) | {"chat": None}),
            "ok send without seq": json.dumps(send("c-1", 10, 20, "ok")),
            "bad outcome": json.dumps(send("c-1", 10, 20, "maybe")),
            "t1 before t0": json.dumps(send("c-1", 20, 10, "failed")),
            "string time": json.dumps(subscribe("s1", 2, 0, 5) | {"t": "5"}),
            "bad history message": json.dumps({"type": "history", "chat": 1,
                                               "messages": [{"seq": "1"}]}),
        }
        for name, bad in bad_lines.items():
            with self.subTest(name):
                self.assert_malformed(json.dumps(clean_run()[1]) + "\n" + bad + "\n", 2)

    def test_second_history_of_a_chat(self) -> None:
        lines = clean_run() + [history(1, (1, "c-1"))]
        self.assert_malformed("".join(json.dumps(x) + "\n" for x in lines), len(lines))

    def test_invalid_utf8(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "history.jsonl"
            path.write_bytes(b'{"type": "note"}\n{"type": "note", "x": "\xff"}\n')
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr):
                self.assertEqual(check_history.main([str(path)]), 2)
            self.assertIn("line 2:", stderr.getvalue())

    def test_missing_file(self) -> None:
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            self.assertEqual(check_history.main(["/nonexistent/history.jsonl"]), 2)
        self.assertIn("cannot read", stderr.getvalue())


if __name__ == "__main__":
    unittest.main()
