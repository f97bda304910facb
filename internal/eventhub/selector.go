package eventhub

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// SelectorFilter is the name (and the descriptor's symbol) of the filter
// Event Hubs receivers put on their source to say where to start.
const SelectorFilter = "apache.org:selector-filter:string"

// SelectorFilterCode is the selector filter's numeric descriptor
// (0x0000468C:0x00000004), which the Azure SDKs send.
const SelectorFilterCode uint64 = 0x0000468C00000004

// Field is what a start position compares.
type Field int

// The annotations a selector filter may compare.
const (
	FieldOffset Field = iota
	FieldSequenceNumber
	FieldEnqueuedTime
)

var fieldNames = map[string]Field{
	"amqp.annotation.x-opt-offset":          FieldOffset,
	"amqp.annotation.x-opt-sequence-number": FieldSequenceNumber,
	"amqp.annotation.x-opt-enqueued-time":   FieldEnqueuedTime,
}

// Position is where a receiver starts: after (or at, when Inclusive) an
// offset, a sequence number or an enqueued time.
type Position struct {
	Field     Field
	Inclusive bool
	// Latest is the offset "@latest": only events enqueued after the
	// receiver attached.
	Latest bool
	// Value is the offset, the sequence number, or the enqueued time in
	// milliseconds since the Unix epoch. An offset or sequence number of
	// -1 stands for the start of the partition.
	Value int64
}

// Earliest is the position of a receiver without a filter: the oldest
// event the partition keeps.
var Earliest = Position{Field: FieldOffset, Value: -1}

// Time returns the enqueued time of a FieldEnqueuedTime position.
func (p Position) Time() time.Time { return time.UnixMilli(p.Value).UTC() }

// maxSelector bounds a selector: the SDKs' are under 100 bytes.
const maxSelector = 1024

// ParseSelector parses the selector filter of an Event Hubs receiver, as
// the Azure SDKs write it:
//
//	amqp.annotation.x-opt-offset > '-1'
//	amqp.annotation.x-opt-offset >= '4096'
//	amqp.annotation.x-opt-offset > '@latest'
//	amqp.annotation.x-opt-sequence-number > '41'
//	amqp.annotation.x-opt-enqueued-time > '1700000000000'
//
// The annotation name is matched without regard to case, blanks around
// the operator are optional, and the value may go without quotes.
func ParseSelector(s string) (Position, error) {
	if len(s) > maxSelector {
		return Position{}, fmt.Errorf("selector filter longer than %d bytes", maxSelector)
	}
	s = strings.TrimSpace(s)
	i := strings.IndexAny(s, "<>=! \t")
	if i <= 0 {
		return Position{}, fmt.Errorf("selector filter %q: want ANNOTATION > 'VALUE'", s)
	}
	name := strings.ToLower(s[:i])
	field, ok := fieldNames[name]
	if !ok {
		return Position{}, fmt.Errorf("selector filter %q: %q is not x-opt-offset, x-opt-sequence-number or x-opt-enqueued-time", s, s[:i])
	}
	rest := strings.TrimLeft(s[i:], " \t")
	var p Position
	p.Field = field
	switch {
	case strings.HasPrefix(rest, ">="):
		p.Inclusive = true
		rest = rest[2:]
	case strings.HasPrefix(rest, ">"):
		rest = rest[1:]
	default:
		return Position{}, fmt.Errorf("selector filter %q: the operator must be > or >=", s)
	}
	v := strings.TrimSpace(rest)
	if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
		v = v[1 : len(v)-1]
	} else if strings.ContainsAny(v, "' \t") {
		return Position{}, fmt.Errorf("selector filter %q: the value must be one quoted token", s)
	}
	if field == FieldOffset && v == "@latest" {
		if p.Inclusive {
			return Position{}, fmt.Errorf("selector filter %q: '@latest' takes >, not >=", s)
		}
		p.Latest = true
		return p, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		var ne *strconv.NumError
		if errors.As(err, &ne) && errors.Is(ne.Err, strconv.ErrRange) {
			return Position{}, fmt.Errorf("selector filter %q: %q is out of range", s, v)
		}
		return Position{}, fmt.Errorf("selector filter %q: %q is not a number", s, v)
	}
	if n < -1 {
		return Position{}, fmt.Errorf("selector filter %q: %d is negative", s, n)
	}
	p.Value = n
	return p, nil
}
