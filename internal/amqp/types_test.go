package amqp

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestTypesRoundTrip(t *testing.T) {
	ts := time.UnixMilli(1700000000123).UTC()
	m := &Map{Pairs: []Pair{{Symbol("k"), "v"}, {uint64(1), []any{true, nil}}}}
	for _, v := range []any{
		nil, true, false, uint8(7), uint16(300), uint32(0), uint32(9), uint32(70000),
		uint64(0), uint64(200), uint64(1 << 40), int8(-3), int16(-300), int32(-5), int32(1 << 20),
		int64(-7), int64(-1 << 40), float32(1.5), 2.25, Char('é'), ts, UUID{1, 2, 3},
		[]byte("bin"), "string", Symbol("sym"), string(bytes.Repeat([]byte("x"), 300)),
		[]any{}, []any{"a", uint32(1), []any{Symbol("b")}}, m,
		Array{Symbol("PLAIN"), Symbol("EXTERNAL")}, Array{uint64(1), uint64(2)},
		Described{uint64(0x24), []any{}}, Described{Symbol("x:y"), "v"},
	} {
		b, err := Marshal(nil, v)
		if err != nil {
			t.Fatalf("Marshal(%#v): %v", v, err)
		}
		got, rest, err := Unmarshal(b)
		if err != nil || len(rest) != 0 {
			t.Fatalf("Unmarshal(% x) of %#v: %v, %d bytes left", b, v, err, len(rest))
		}
		if !reflect.DeepEqual(got, v) {
			t.Errorf("round trip of %#v gave %#v", v, got)
		}
	}
}

// Fixed encodings as other implementations write them.
func TestDecodeFixtures(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want any
	}{
		{"smalluint", []byte{0x52, 0x05}, uint32(5)},
		{"uint0", []byte{0x43}, uint32(0)},
		{"str8", []byte{0xa1, 2, 'h', 'i'}, "hi"},
		{"sym32", []byte{0xb3, 0, 0, 0, 1, 'x'}, Symbol("x")},
		{"list8", []byte{0xc0, 3, 2, 0x41, 0x40}, []any{true, nil}},
		{"map8", []byte{0xc1, 5, 2, 0xa1, 1, 'k', 0x41}, &Map{Pairs: []Pair{{"k", true}}}},
		{"array8 of sym8", []byte{0xe0, 6, 2, 0xa3, 1, 'a', 1, 'b'}, Array{Symbol("a"), Symbol("b")}},
		{"described accepted", []byte{0x00, 0x53, 0x24, 0x45}, Described{uint64(0x24), []any{}}},
		{"timestamp", []byte{0x83, 0, 0, 0, 0, 0, 0, 0x03, 0xe8}, time.UnixMilli(1000).UTC()},
	} {
		got, _, err := Unmarshal(tc.in)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %#v, want %#v", tc.name, got, tc.want)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"unknown code", []byte{0x01}},
		{"truncated uint", []byte{0x70, 0, 0}},
		{"str8 too long", []byte{0xa1, 5, 'a'}},
		{"str32 huge", []byte{0xb1, 0xff, 0xff, 0xff, 0xff}},
		{"invalid utf-8", []byte{0xa1, 1, 0xff}},
		{"list32 huge count", []byte{0xd0, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff}},
		{"list count beyond bytes", []byte{0xc0, 2, 9, 0x40}},
		{"map odd count", []byte{0xc1, 2, 1, 0x40}},
		{"bad bool", []byte{0x56, 2}},
		{"array of nulls too many", []byte{0xf0, 0, 0, 0, 5, 0x7f, 0xff, 0xff, 0xff, 0x40}},
		{"descriptor of wrong type", []byte{0x00, 0xa1, 1, 'x', 0x40}},
		{"deep nesting", bytes.Repeat([]byte{0x00, 0x53, 0x01}, 100)},
	} {
		if _, _, err := Unmarshal(tc.in); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", tc.name, err)
		}
	}
}

func TestReadFrameBounds(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"size below header", []byte{0, 0, 0, 4, 2, 0, 0, 0}},
		{"doff below 2", []byte{0, 0, 0, 8, 1, 0, 0, 0}},
		{"doff beyond size", []byte{0, 0, 0, 8, 3, 0, 0, 0}},
		{"too large", []byte{0, 1, 0, 0, 2, 0, 0, 0}},
		{"body not a performative", []byte{0, 0, 0, 9, 2, 0, 0, 0, 0x40}},
	} {
		if _, err := readFrame(bytes.NewReader(tc.in), 4096); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", tc.name, err)
		}
	}
	f, err := readFrame(bytes.NewReader([]byte{0, 0, 0, 8, 2, 0, 0, 0}), 4096)
	if err != nil || f.Performative != nil {
		t.Fatalf("heartbeat: %+v %v", f, err)
	}
}

// Message annotations and the properties an Event Hubs event carries go
// out in the order of part 3 and come back (annotations are not read).
func TestMarshalMessageAnnotationsAndProperties(t *testing.T) {
	m := &Message{
		MessageAnnotations: map[Symbol]any{"x-opt-sequence-number": int64(7), "x-opt-offset": "42"},
		Properties:         Properties{MessageID: "m-1", UserID: []byte("u"), ContentType: "application/json", ContentEncoding: "utf-8"},
		Data:               [][]byte{[]byte("{}")},
	}
	b, err := MarshalMessage(m)
	if err != nil {
		t.Fatal(err)
	}
	v, _, err := Unmarshal(b)
	if code, _ := descriptorCode(v); err != nil || code != descMessageAnnotations {
		t.Fatalf("first section %v (%v), want message annotations", v, err)
	}
	got, err := UnmarshalMessage(b)
	if err != nil {
		t.Fatal(err)
	}
	p := got.Properties
	if p.MessageID != "m-1" || string(p.UserID) != "u" || p.ContentType != "application/json" || p.ContentEncoding != "utf-8" || string(got.Body()) != "{}" {
		t.Errorf("round trip: %+v %q", p, got.Body())
	}
}

func TestText(t *testing.T) {
	for _, tc := range []struct {
		in   any
		want string
	}{
		{nil, ""},
		{"abc", "abc"},
		{Symbol("amqp:not-found"), "amqp:not-found"},
		{[]byte("bin"), "bin"},
		{int64(42), "42"},
		{uint32(7), "7"},
	} {
		if got := Text(tc.in); got != tc.want {
			t.Errorf("Text(%#v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
