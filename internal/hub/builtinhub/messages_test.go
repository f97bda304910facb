package builtinhub

import "testing"

func TestMessageBufferKeepsTheNewestInOrder(t *testing.T) {
	b := newMessageBuffer(3)
	for i := range 7 {
		dev := "a"
		if i%2 == 1 {
			dev = "b"
		}
		b.add(Message{DeviceID: dev, Body: string(rune('0' + i))})
	}
	got := b.list("", 0, 0)
	if len(got) != 3 || got[0].SequenceNumber != 5 || got[1].SequenceNumber != 6 || got[2].SequenceNumber != 7 {
		t.Fatalf("list = %+v; want sequence numbers 5, 6, 7", got)
	}
	if got := b.list("A", 5, 0); len(got) != 1 || got[0].SequenceNumber != 7 {
		t.Fatalf("device a after 5 = %+v", got)
	}
	if got := b.list("", 0, 2); len(got) != 2 || got[1].SequenceNumber != 6 {
		t.Fatalf("limit 2 = %+v", got)
	}
}
