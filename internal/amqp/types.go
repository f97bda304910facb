package amqp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"
	"unicode/utf8"
)

// The AMQP 1.0 type system (OASIS AMQP 1.0 part 1) maps to Go values:
//
//	null                  nil
//	boolean               bool
//	ubyte ushort uint     uint8 uint16 uint32
//	ulong                 uint64
//	byte short int long   int8 int16 int32 int64
//	float double          float32 float64
//	char                  Char
//	timestamp             time.Time (UTC, millisecond precision)
//	uuid                  UUID
//	binary                []byte
//	string                string
//	symbol                Symbol
//	decimal32/64/128      Decimal (raw bytes; nothing here interprets them)
//	list                  []any
//	map                   *Map (keeps order and allows any key)
//	array                 Array
//	described             Described
//
// Decoding is bounded: every collection's element count is checked against
// the bytes that remain, so hostile sizes never cause large allocations, and
// nesting is limited to maxDepth.

// Symbol is an AMQP symbol: an ASCII name such as "amqp:not-found".
type Symbol string

// Text returns a decoded value as text, for the properties and
// annotations peers fill with whichever type their library picks:
// strings and symbols as they are, binary as its bytes, nothing as "",
// anything else as fmt prints it.
func Text(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case Symbol:
		return string(x)
	case []byte:
		return string(x)
	}
	return fmt.Sprint(v)
}

// Char is an AMQP char (a UTF-32 code point).
type Char rune

// UUID is an AMQP uuid.
type UUID [16]byte

// String formats u in the canonical 8-4-4-4-12 form.
func (u UUID) String() string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// Decimal is an AMQP decimal32, decimal64 or decimal128 kept as its bytes.
type Decimal []byte

// Array is an AMQP array: elements of one type.
type Array []any

// Described is a value with a descriptor (a ulong code or a symbol).
type Described struct {
	Descriptor any
	Value      any
}

// Map is an AMQP map. AMQP map keys may be any type, including ones Go
// cannot use as map keys, and their order is significant on the wire, so a
// Map is a list of pairs.
type Map struct {
	Pairs []Pair
}

// Pair is one key and value of a Map.
type Pair struct {
	Key, Value any
}

// Get returns the value of the first pair whose key equals k.
func (m *Map) Get(k any) (any, bool) {
	if m == nil {
		return nil, false
	}
	for _, p := range m.Pairs {
		if p.Key == k {
			return p.Value, true
		}
	}
	return nil, false
}

// Set replaces the value of k or appends it.
func (m *Map) Set(k, v any) {
	for i, p := range m.Pairs {
		if p.Key == k {
			m.Pairs[i].Value = v
			return
		}
	}
	m.Pairs = append(m.Pairs, Pair{k, v})
}

// Len is the number of pairs.
func (m *Map) Len() int {
	if m == nil {
		return 0
	}
	return len(m.Pairs)
}

// maxDepth bounds the nesting of lists, maps, arrays and described values.
const maxDepth = 32

// Type codes (part 1, section 1.6).
const (
	codeDescribed  = 0x00
	codeNull       = 0x40
	codeBool       = 0x56
	codeTrue       = 0x41
	codeFalse      = 0x42
	codeUbyte      = 0x50
	codeUshort     = 0x60
	codeUint       = 0x70
	codeSmallUint  = 0x52
	codeUint0      = 0x43
	codeUlong      = 0x80
	codeSmallUlong = 0x53
	codeUlong0     = 0x44
	codeByte       = 0x51
	codeShort      = 0x61
	codeInt        = 0x71
	codeSmallInt   = 0x54
	codeLong       = 0x81
	codeSmallLong  = 0x55
	codeFloat      = 0x72
	codeDouble     = 0x82
	codeDecimal32  = 0x74
	codeDecimal64  = 0x84
	codeDecimal128 = 0x94
	codeChar       = 0x73
	codeTimestamp  = 0x83
	codeUUID       = 0x98
	codeVbin8      = 0xa0
	codeVbin32     = 0xb0
	codeStr8       = 0xa1
	codeStr32      = 0xb1
	codeSym8       = 0xa3
	codeSym32      = 0xb3
	codeList0      = 0x45
	codeList8      = 0xc0
	codeList32     = 0xd0
	codeMap8       = 0xc1
	codeMap32      = 0xd1
	codeArray8     = 0xe0
	codeArray32    = 0xf0
)

// ErrMalformed wraps every decoding error.
var ErrMalformed = errors.New("amqp: malformed data")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// decoder reads AMQP values from a byte slice.
type decoder struct {
	b     []byte
	depth int
}

func (d *decoder) need(n int) ([]byte, error) {
	if n < 0 || len(d.b) < n {
		return nil, malformed("need %d bytes, have %d", n, len(d.b))
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p, nil
}

func (d *decoder) byte() (byte, error) {
	p, err := d.need(1)
	if err != nil {
		return 0, err
	}
	return p[0], nil
}

// Unmarshal decodes one AMQP value from b and returns it with the bytes
// that follow it.
func Unmarshal(b []byte) (v any, rest []byte, err error) {
	d := &decoder{b: b}
	v, err = d.value()
	return v, d.b, err
}

func (d *decoder) value() (any, error) {
	code, err := d.byte()
	if err != nil {
		return nil, err
	}
	return d.valueOf(code)
}

func (d *decoder) valueOf(code byte) (any, error) {
	if code == codeDescribed {
		if d.depth >= maxDepth {
			return nil, malformed("nesting deeper than %d", maxDepth)
		}
		d.depth++
		defer func() { d.depth-- }()
		desc, err := d.value()
		if err != nil {
			return nil, err
		}
		switch desc.(type) {
		case uint64, Symbol:
		default:
			return nil, malformed("descriptor of type %T", desc)
		}
		v, err := d.value()
		if err != nil {
			return nil, err
		}
		return Described{Descriptor: desc, Value: v}, nil
	}
	return d.primitive(code)
}

// width returns the size in bytes of the fixed-width encoding code, or -1
// for variable-width and compound encodings.
func fixedWidth(code byte) int {
	switch code & 0xf0 {
	case 0x40:
		return 0
	case 0x50:
		return 1
	case 0x60:
		return 2
	case 0x70:
		return 4
	case 0x80:
		return 8
	case 0x90:
		return 16
	}
	return -1
}

func (d *decoder) primitive(code byte) (any, error) {
	if w := fixedWidth(code); w >= 0 {
		p, err := d.need(w)
		if err != nil {
			return nil, err
		}
		return fixedValue(code, p)
	}
	switch code {
	case codeVbin8, codeStr8, codeSym8, codeVbin32, codeStr32, codeSym32:
		var n int
		if code&0xf0 == 0xa0 {
			b, err := d.byte()
			if err != nil {
				return nil, err
			}
			n = int(b)
		} else {
			p, err := d.need(4)
			if err != nil {
				return nil, err
			}
			n32 := binary.BigEndian.Uint32(p)
			if uint64(n32) > uint64(len(d.b)) {
				return nil, malformed("variable-width value of %d bytes, %d remain", n32, len(d.b))
			}
			n = int(n32)
		}
		p, err := d.need(n)
		if err != nil {
			return nil, err
		}
		switch code {
		case codeVbin8, codeVbin32:
			return append([]byte(nil), p...), nil
		case codeStr8, codeStr32:
			if !utf8.Valid(p) {
				return nil, malformed("string is not UTF-8")
			}
			return string(p), nil
		default:
			return Symbol(p), nil
		}
	case codeList8, codeList32, codeMap8, codeMap32, codeArray8, codeArray32:
		return d.compound(code)
	}
	return nil, malformed("unknown type code 0x%02x", code)
}

func fixedValue(code byte, p []byte) (any, error) {
	switch code {
	case codeNull:
		return nil, nil
	case codeTrue:
		return true, nil
	case codeFalse:
		return false, nil
	case codeUint0:
		return uint32(0), nil
	case codeUlong0:
		return uint64(0), nil
	case codeList0:
		return []any{}, nil
	case codeBool:
		switch p[0] {
		case 0:
			return false, nil
		case 1:
			return true, nil
		}
		return nil, malformed("boolean 0x%02x", p[0])
	case codeUbyte:
		return p[0], nil
	case codeByte:
		return int8(p[0]), nil
	case codeSmallUint:
		return uint32(p[0]), nil
	case codeSmallUlong:
		return uint64(p[0]), nil
	case codeSmallInt:
		return int32(int8(p[0])), nil
	case codeSmallLong:
		return int64(int8(p[0])), nil
	case codeUshort:
		return binary.BigEndian.Uint16(p), nil
	case codeShort:
		return int16(binary.BigEndian.Uint16(p)), nil
	case codeUint:
		return binary.BigEndian.Uint32(p), nil
	case codeInt:
		return int32(binary.BigEndian.Uint32(p)), nil
	case codeFloat:
		return math.Float32frombits(binary.BigEndian.Uint32(p)), nil
	case codeChar:
		return Char(binary.BigEndian.Uint32(p)), nil
	case codeDecimal32, codeDecimal64, codeDecimal128:
		return Decimal(append([]byte(nil), p...)), nil
	case codeUlong:
		return binary.BigEndian.Uint64(p), nil
	case codeLong:
		return int64(binary.BigEndian.Uint64(p)), nil
	case codeDouble:
		return math.Float64frombits(binary.BigEndian.Uint64(p)), nil
	case codeTimestamp:
		return time.UnixMilli(int64(binary.BigEndian.Uint64(p))).UTC(), nil
	case codeUUID:
		var u UUID
		copy(u[:], p)
		return u, nil
	}
	return nil, malformed("unknown type code 0x%02x", code)
}

// compound decodes a list, map or array. Its size and count come first,
// 1 byte each for the 8 variants and 4 bytes for the 32 ones.
func (d *decoder) compound(code byte) (any, error) {
	if d.depth >= maxDepth {
		return nil, malformed("nesting deeper than %d", maxDepth)
	}
	d.depth++
	defer func() { d.depth-- }()

	var size, count uint32
	small := code == codeList8 || code == codeMap8 || code == codeArray8
	if small {
		p, err := d.need(2)
		if err != nil {
			return nil, err
		}
		size, count = uint32(p[0]), uint32(p[1])
		if size < 1 {
			return nil, malformed("compound size %d", size)
		}
		size--
	} else {
		p, err := d.need(8)
		if err != nil {
			return nil, err
		}
		size, count = binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])
		if size < 4 {
			return nil, malformed("compound size %d", size)
		}
		size -= 4
	}
	if uint64(size) > uint64(len(d.b)) {
		return nil, malformed("compound value of %d bytes, %d remain", size, len(d.b))
	}
	body, _ := d.need(int(size))
	inner := &decoder{b: body, depth: d.depth}
	switch code {
	case codeList8, codeList32:
		// Each element takes at least one byte.
		if uint64(count) > uint64(len(body)) {
			return nil, malformed("list of %d elements in %d bytes", count, len(body))
		}
		l := make([]any, 0, count)
		for range count {
			v, err := inner.value()
			if err != nil {
				return nil, err
			}
			l = append(l, v)
		}
		return l, inner.empty()
	case codeMap8, codeMap32:
		if count%2 != 0 {
			return nil, malformed("map with %d elements", count)
		}
		if uint64(count) > uint64(len(body)) {
			return nil, malformed("map of %d elements in %d bytes", count, len(body))
		}
		m := &Map{Pairs: make([]Pair, 0, count/2)}
		for range count / 2 {
			k, err := inner.value()
			if err != nil {
				return nil, err
			}
			v, err := inner.value()
			if err != nil {
				return nil, err
			}
			m.Pairs = append(m.Pairs, Pair{k, v})
		}
		return m, inner.empty()
	default:
		return inner.array(count)
	}
}

func (d *decoder) empty() error {
	if len(d.b) != 0 {
		return malformed("%d bytes left in a compound value", len(d.b))
	}
	return nil
}

// array decodes count elements sharing one constructor.
func (d *decoder) array(count uint32) (any, error) {
	ctor, err := d.byte()
	if err != nil {
		return nil, err
	}
	var desc any
	if ctor == codeDescribed {
		if desc, err = d.value(); err != nil {
			return nil, err
		}
		if ctor, err = d.byte(); err != nil {
			return nil, err
		}
		if ctor == codeDescribed {
			return nil, malformed("array of doubly described values")
		}
	}
	// Zero-width elements (null, true, list0) may be many in few bytes;
	// bound them by an absolute limit instead.
	if w := fixedWidth(ctor); w == 0 && count > 1<<16 || w != 0 && uint64(count) > uint64(len(d.b)) {
		return nil, malformed("array of %d elements in %d bytes", count, len(d.b))
	}
	a := make(Array, 0, count)
	for range count {
		v, err := d.primitive(ctor)
		if err != nil {
			return nil, err
		}
		if desc != nil {
			v = Described{Descriptor: desc, Value: v}
		}
		a = append(a, v)
	}
	return a, d.empty()
}

// Marshal appends the encoding of v to b. It supports the Go types listed
// at the top of this file plus int, bool and map[Symbol]any /
// map[string]any (encoded in sorted key order for stable output).
func Marshal(b []byte, v any) ([]byte, error) {
	switch v := v.(type) {
	case nil:
		return append(b, codeNull), nil
	case bool:
		if v {
			return append(b, codeTrue), nil
		}
		return append(b, codeFalse), nil
	case uint8:
		return append(b, codeUbyte, v), nil
	case uint16:
		return binary.BigEndian.AppendUint16(append(b, codeUshort), v), nil
	case uint32:
		switch {
		case v == 0:
			return append(b, codeUint0), nil
		case v < 256:
			return append(b, codeSmallUint, byte(v)), nil
		}
		return binary.BigEndian.AppendUint32(append(b, codeUint), v), nil
	case uint64:
		switch {
		case v == 0:
			return append(b, codeUlong0), nil
		case v < 256:
			return append(b, codeSmallUlong, byte(v)), nil
		}
		return binary.BigEndian.AppendUint64(append(b, codeUlong), v), nil
	case int8:
		return append(b, codeByte, byte(v)), nil
	case int16:
		return binary.BigEndian.AppendUint16(append(b, codeShort), uint16(v)), nil
	case int32:
		if v >= -128 && v < 128 {
			return append(b, codeSmallInt, byte(int8(v))), nil
		}
		return binary.BigEndian.AppendUint32(append(b, codeInt), uint32(v)), nil
	case int:
		return Marshal(b, int64(v))
	case int64:
		if v >= -128 && v < 128 {
			return append(b, codeSmallLong, byte(int8(v))), nil
		}
		return binary.BigEndian.AppendUint64(append(b, codeLong), uint64(v)), nil
	case float32:
		return binary.BigEndian.AppendUint32(append(b, codeFloat), math.Float32bits(v)), nil
	case float64:
		return binary.BigEndian.AppendUint64(append(b, codeDouble), math.Float64bits(v)), nil
	case Char:
		return binary.BigEndian.AppendUint32(append(b, codeChar), uint32(v)), nil
	case time.Time:
		return binary.BigEndian.AppendUint64(append(b, codeTimestamp), uint64(v.UnixMilli())), nil
	case UUID:
		return append(append(b, codeUUID), v[:]...), nil
	case Decimal:
		switch len(v) {
		case 4:
			return append(append(b, codeDecimal32), v...), nil
		case 8:
			return append(append(b, codeDecimal64), v...), nil
		case 16:
			return append(append(b, codeDecimal128), v...), nil
		}
		return nil, fmt.Errorf("amqp: decimal of %d bytes", len(v))
	case []byte:
		return appendVariable(b, codeVbin8, codeVbin32, v), nil
	case string:
		return appendVariable(b, codeStr8, codeStr32, []byte(v)), nil
	case Symbol:
		return appendVariable(b, codeSym8, codeSym32, []byte(v)), nil
	case []any:
		return marshalList(b, v)
	case []Symbol:
		a := make(Array, len(v))
		for i, s := range v {
			a[i] = s
		}
		return marshalArray(b, a)
	case Array:
		return marshalArray(b, v)
	case *Map:
		return marshalMap(b, v)
	case map[Symbol]any:
		return marshalMap(b, sortedMap(v))
	case map[string]any:
		m := &Map{}
		for _, k := range sortedKeys(v) {
			m.Pairs = append(m.Pairs, Pair{k, v[k]})
		}
		return marshalMap(b, m)
	case Described:
		b = append(b, codeDescribed)
		b, err := Marshal(b, v.Descriptor)
		if err != nil {
			return nil, err
		}
		return Marshal(b, v.Value)
	case marshaler:
		return v.marshal(b)
	}
	return nil, fmt.Errorf("amqp: cannot encode %T", v)
}

// marshaler is implemented by the performatives and other composite types
// of this package.
type marshaler interface {
	marshal(b []byte) ([]byte, error)
}

func appendVariable(b []byte, small, large byte, p []byte) []byte {
	if len(p) < 256 {
		b = append(b, small, byte(len(p)))
	} else {
		b = binary.BigEndian.AppendUint32(append(b, large), uint32(len(p)))
	}
	return append(b, p...)
}

// marshalList always uses list32: simpler, and the few bytes do not matter.
func marshalList(b []byte, l []any) ([]byte, error) {
	if len(l) == 0 {
		return append(b, codeList0), nil
	}
	start := len(b)
	b = append(b, codeList32, 0, 0, 0, 0, 0, 0, 0, 0)
	var err error
	for _, v := range l {
		if b, err = Marshal(b, v); err != nil {
			return nil, err
		}
	}
	binary.BigEndian.PutUint32(b[start+1:], uint32(len(b)-start-5))
	binary.BigEndian.PutUint32(b[start+5:], uint32(len(l)))
	return b, nil
}

func marshalMap(b []byte, m *Map) ([]byte, error) {
	start := len(b)
	b = append(b, codeMap32, 0, 0, 0, 0, 0, 0, 0, 0)
	var err error
	for _, p := range m.Pairs {
		if b, err = Marshal(b, p.Key); err != nil {
			return nil, err
		}
		if b, err = Marshal(b, p.Value); err != nil {
			return nil, err
		}
	}
	binary.BigEndian.PutUint32(b[start+1:], uint32(len(b)-start-5))
	binary.BigEndian.PutUint32(b[start+5:], uint32(2*len(m.Pairs)))
	return b, nil
}

func sortedMap(v map[Symbol]any) *Map {
	keys := make([]Symbol, 0, len(v))
	for k := range v {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	m := &Map{}
	for _, k := range keys {
		m.Pairs = append(m.Pairs, Pair{k, v[k]})
	}
	return m
}

func sortedKeys(v map[string]any) []string {
	keys := make([]string, 0, len(v))
	for k := range v {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// marshalArray encodes a non-empty array of symbols, strings or ulongs, the
// only arrays a server sends; an empty one is written as null.
func marshalArray(b []byte, a Array) ([]byte, error) {
	if len(a) == 0 {
		return append(b, codeNull), nil
	}
	start := len(b)
	b = append(b, codeArray32, 0, 0, 0, 0, 0, 0, 0, 0)
	var ctor byte
	switch a[0].(type) {
	case Symbol:
		ctor = codeSym32
	case string:
		ctor = codeStr32
	case uint64:
		ctor = codeUlong
	default:
		return nil, fmt.Errorf("amqp: cannot encode an array of %T", a[0])
	}
	b = append(b, ctor)
	for _, v := range a {
		switch v := v.(type) {
		case Symbol:
			if ctor != codeSym32 {
				return nil, errors.New("amqp: mixed array")
			}
			b = append(binary.BigEndian.AppendUint32(b, uint32(len(v))), v...)
		case string:
			if ctor != codeStr32 {
				return nil, errors.New("amqp: mixed array")
			}
			b = append(binary.BigEndian.AppendUint32(b, uint32(len(v))), v...)
		case uint64:
			if ctor != codeUlong {
				return nil, errors.New("amqp: mixed array")
			}
			b = binary.BigEndian.AppendUint64(b, v)
		default:
			return nil, errors.New("amqp: mixed array")
		}
	}
	binary.BigEndian.PutUint32(b[start+1:], uint32(len(b)-start-5))
	binary.BigEndian.PutUint32(b[start+5:], uint32(len(a)))
	return b, nil
}
