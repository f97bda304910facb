package builtinhub

import (
	"strings"
	"testing"
	"time"
)

func TestMessageBufferKeepsTheNewestInOrder(t *testing.T) {
	b := newMessageBuffer(3, 0, 0, nil)
	for i := range 7 {
		dev := "a"
		if i%2 == 1 {
			dev = "b"
		}
		b.add(Message{DeviceID: dev, Body: string(rune('0' + i))})
	}
	got := b.list("", 0, 0, 0)
	if len(got) != 3 || got[0].SequenceNumber != 5 || got[1].SequenceNumber != 6 || got[2].SequenceNumber != 7 {
		t.Fatalf("list = %+v; want sequence numbers 5, 6, 7", got)
	}
	if got := b.list("A", 5, 0, 0); len(got) != 1 || got[0].SequenceNumber != 7 {
		t.Fatalf("device a after 5 = %+v", got)
	}
	if got := b.list("", 0, 2, 0); len(got) != 2 || got[1].SequenceNumber != 6 {
		t.Fatalf("limit 2 = %+v", got)
	}
}

// TestMessageBufferBoundedByBytes checks that the buffer holds at most its
// bytes however few the messages (the newest always kept), and that a
// listing page holds at most its bytes too, paging on by sequence number.
func TestMessageBufferBoundedByBytes(t *testing.T) {
	body := strings.Repeat("x", 1000)
	b := newMessageBuffer(1000, 4600, 0, nil)
	for range 20 {
		b.add(Message{DeviceID: "a", Body: body})
	}
	got := b.list("", 0, 0, 0)
	if len(got) != 4 || got[3].SequenceNumber != 20 || b.bytes > 4600 {
		t.Fatalf("kept %d messages (%d bytes), last %d; want the newest 4 within 4600 bytes", len(got), b.bytes, got[len(got)-1].SequenceNumber)
	}
	huge := newMessageBuffer(10, 100, 0, nil)
	huge.add(Message{DeviceID: "a", Body: body})
	if len(huge.list("", 0, 0, 0)) != 1 {
		t.Fatal("a message larger than the buffer is not kept alone")
	}

	page := b.list("", 0, 0, 2500)
	if len(page) != 2 || page[0].SequenceNumber != 17 {
		t.Fatalf("first page %d messages from %d; want 2 from 17", len(page), page[0].SequenceNumber)
	}
	next := b.list("", page[len(page)-1].SequenceNumber, 0, 2500)
	if len(next) != 2 || next[0].SequenceNumber != 19 {
		t.Fatalf("second page %d messages from %d; want 2 from 19", len(next), next[0].SequenceNumber)
	}
}

func TestMessageBufferBoundedByAge(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	b := newMessageBuffer(100, 0, time.Hour, func() time.Time { return now })
	for i := range 3 {
		b.add(Message{DeviceID: "a", EnqueuedTime: now.Add(time.Duration(i-3) * 30 * time.Minute)}) // -90, -60, -30 min
	}
	if got := b.list("", 0, 0, 0); len(got) != 2 || got[0].SequenceNumber != 2 {
		t.Fatalf("kept %+v; want messages 2 and 3 (not older than an hour)", got)
	}
	now = now.Add(31 * time.Minute) // message 2 is 91 min old, 3 is 61
	if got := b.list("", 0, 0, 0); len(got) != 0 || b.bytes != 0 {
		t.Fatalf("kept %+v (%d bytes) after they aged out", got, b.bytes)
	}
}
