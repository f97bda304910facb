package eventhub

import (
	"strings"
	"testing"
)

func TestParseSelector(t *testing.T) {
	tests := []struct {
		in   string
		want Position
	}{
		// As @azure/event-hubs writes them (eventPosition.ts).
		{"amqp.annotation.x-opt-offset > '-1'", Position{Field: FieldOffset, Value: -1}},
		{"amqp.annotation.x-opt-offset > '@latest'", Position{Field: FieldOffset, Latest: true}},
		{"amqp.annotation.x-opt-offset >= '4096'", Position{Field: FieldOffset, Inclusive: true, Value: 4096}},
		{"amqp.annotation.x-opt-sequence-number > '41'", Position{Field: FieldSequenceNumber, Value: 41}},
		{"amqp.annotation.x-opt-sequence-number >= '0'", Position{Field: FieldSequenceNumber, Inclusive: true}},
		{"amqp.annotation.x-opt-enqueued-time > '1700000000000'", Position{Field: FieldEnqueuedTime, Value: 1700000000000}},
		// Other writers: no blanks, other case, no quotes.
		{"amqp.annotation.X-OPT-OFFSET>'7'", Position{Field: FieldOffset, Value: 7}},
		{"  amqp.annotation.x-opt-sequence-number>=12  ", Position{Field: FieldSequenceNumber, Inclusive: true, Value: 12}},
	}
	for _, tt := range tests {
		got, err := ParseSelector(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseSelector(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseSelectorRefuses(t *testing.T) {
	tests := []struct{ in, errPart string }{
		{"", "want ANNOTATION"},
		{"> '1'", "want ANNOTATION"},
		{"amqp.annotation.x-opt-partition-key > '1'", "is not x-opt-offset"},
		{"amqp.annotation.x-opt-offset < '1'", "operator must be"},
		{"amqp.annotation.x-opt-offset = '1'", "operator must be"},
		{"amqp.annotation.x-opt-offset > 'abc'", "not a number"},
		{"amqp.annotation.x-opt-offset > '1' OR 1=1", "one quoted token"},
		{"amqp.annotation.x-opt-offset > '99999999999999999999'", "out of range"},
		{"amqp.annotation.x-opt-sequence-number > '-5'", "negative"},
		{"amqp.annotation.x-opt-sequence-number > '@latest'", "not a number"},
		{"amqp.annotation.x-opt-offset >= '@latest'", "takes >"},
		{"amqp.annotation.x-opt-offset > '" + strings.Repeat("1", 2000) + "'", "longer than"},
	}
	for _, tt := range tests {
		_, err := ParseSelector(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.errPart) {
			t.Errorf("ParseSelector(%.60q) = %v; want an error with %q", tt.in, err, tt.errPart)
		}
	}
}

func TestPartitionOfIsStableAndInRange(t *testing.T) {
	seen := map[int]bool{}
	for i := range 200 {
		id := "device-" + strings.Repeat("x", i%7) + string(rune('a'+i%26))
		p := PartitionOf(id, 4)
		if p < 0 || p >= 4 || p != PartitionOf(id, 4) {
			t.Fatalf("PartitionOf(%q, 4) = %d", id, p)
		}
		seen[p] = true
	}
	if len(seen) != 4 {
		t.Errorf("200 device ids fell in %d of 4 partitions", len(seen))
	}
	if PartitionOf("x", 1) != 0 || PartitionOf("x", 0) != 0 {
		t.Error("one partition: not 0")
	}
}

func FuzzParseSelector(f *testing.F) {
	for _, s := range []string{
		"amqp.annotation.x-opt-offset > '-1'",
		"amqp.annotation.x-opt-offset > '@latest'",
		"amqp.annotation.x-opt-sequence-number >= '5'",
		"amqp.annotation.x-opt-enqueued-time > '1700000000000'",
		"amqp.annotation.x-opt-offset>=",
		"'",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseSelector(s)
		if err != nil {
			return
		}
		if p.Value < -1 || (p.Latest && (p.Field != FieldOffset || p.Inclusive)) {
			t.Fatalf("ParseSelector(%q) = %+v", s, p)
		}
	})
}
