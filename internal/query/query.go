package query

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/dpsd/dpsd/api/dps"
)

// Bounds of what Parse accepts; a query is a few conditions, and these
// keep a hostile one from costing more than a small one.
const (
	MaxLength = 4096 // bytes of query text
	MaxDepth  = 32   // nested parentheses and NOTs
	MaxTerms  = 64   // comparisons and list items
)

// Query is a parsed query. The zero value and nil match everything.
type Query struct {
	// Collection is what FROM named, as written; "" for "*".
	Collection string
	where      node
}

// Filters reports whether q has a WHERE condition.
func (q *Query) Filters() bool { return q != nil && q.where != nil }

// Match reports whether item, a JSON document decoded into any (maps,
// slices, strings, float64, bool, nil), satisfies the query.
func (q *Query) Match(item any) bool {
	if q == nil || q.where == nil {
		return true
	}
	return q.where.eval(item)
}

// MatchValue is Match for a Go value as encoding/json would encode it.
func (q *Query) MatchValue(v any) (bool, error) {
	if !q.Filters() {
		return true, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return false, fmt.Errorf("query: encode item: %w", err)
	}
	var item any
	if err := json.Unmarshal(b, &item); err != nil {
		return false, fmt.Errorf("query: decode item: %w", err)
	}
	return q.Match(item), nil
}

// Parse parses text. An empty text and "*" match everything. Errors are
// *dps.Error 400 (CodeBadRequest) that say what is not supported.
func Parse(text string) (*Query, error) {
	if len(text) > MaxLength {
		return nil, bad("the query is %d bytes; at most %d are accepted", len(text), MaxLength)
	}
	if !utf8.ValidString(text) {
		return nil, bad("the query is not valid UTF-8")
	}
	toks, err := lex(text)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks}
	if p.peek().kind == tEOF {
		return &Query{}, nil
	}
	if p.peek().kind == tStar && p.toks[1].kind == tEOF { // lex ends every list with tEOF
		return &Query{}, nil
	}
	q := &Query{}
	if !p.keyword("SELECT") {
		return nil, p.unexpected("SELECT")
	}
	if p.next().kind != tStar {
		p.back()
		return nil, p.errorf("only SELECT * is supported, not a selection of properties, at position %d", p.peek().pos+1)
	}
	if p.peek().kind == tEOF {
		return q, nil // "SELECT *", as some clients send
	}
	if !p.keyword("FROM") {
		return nil, p.unexpected("FROM")
	}
	t := p.next()
	if t.kind != tIdent {
		p.back()
		return nil, p.unexpected("a collection name")
	}
	q.Collection = t.text
	if p.keyword("WHERE") {
		if q.where, err = p.or(0); err != nil {
			return nil, err
		}
	}
	if p.peek().kind != tEOF {
		return nil, p.unexpected("the end of the query")
	}
	return q, nil
}

func bad(format string, args ...any) error {
	return dps.Errorf(dps.CodeBadRequest, "Unsupported query: "+format+". dpsd supports SELECT * FROM <collection> [WHERE <property> = 'value' [AND|OR ...]]; see docs/compatibility.md.", args...)
}

// Tokens.

type tokKind int

const (
	tEOF tokKind = iota
	tIdent
	tString
	tNumber
	tStar
	tLParen
	tRParen
	tComma
	tOp // = != <>
	tDot
)

type token struct {
	kind tokKind
	text string // identifier or operator as written; string literal unquoted
	num  float64
	pos  int // byte offset
}

func lex(s string) ([]token, error) {
	var toks []token
	i := 0
	for i < len(s) {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case unicode.IsSpace(r):
			i += size
		case r == '*':
			toks = append(toks, token{kind: tStar, text: "*", pos: i})
			i++
		case r == '(':
			toks = append(toks, token{kind: tLParen, text: "(", pos: i})
			i++
		case r == ')':
			toks = append(toks, token{kind: tRParen, text: ")", pos: i})
			i++
		case r == ',':
			toks = append(toks, token{kind: tComma, text: ",", pos: i})
			i++
		case r == '.':
			toks = append(toks, token{kind: tDot, text: ".", pos: i})
			i++
		case r == '=':
			toks = append(toks, token{kind: tOp, text: "=", pos: i})
			i++
		case strings.HasPrefix(s[i:], "!=") || strings.HasPrefix(s[i:], "<>"):
			toks = append(toks, token{kind: tOp, text: "!=", pos: i})
			i += 2
		case r == '\'':
			start := i
			var b strings.Builder
			i++
			for {
				if i >= len(s) {
					return nil, bad("the string that starts at position %d has no closing quote", start+1)
				}
				if s[i] == '\'' {
					if i+1 < len(s) && s[i+1] == '\'' {
						b.WriteByte('\'')
						i += 2
						continue
					}
					i++
					break
				}
				b.WriteByte(s[i])
				i++
			}
			toks = append(toks, token{kind: tString, text: b.String(), pos: start})
		case r == '-' || r == '+' || (r >= '0' && r <= '9'):
			start := i
			i++
			for i < len(s) && strings.IndexByte("0123456789.eE+-", s[i]) >= 0 {
				i++
			}
			f, err := strconv.ParseFloat(s[start:i], 64)
			if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
				return nil, bad("%q at position %d is not a number", s[start:i], start+1)
			}
			toks = append(toks, token{kind: tNumber, text: s[start:i], num: f, pos: start})
		case r == '_' || r == '$' || unicode.IsLetter(r):
			start := i
			for i < len(s) {
				r, size := utf8.DecodeRuneInString(s[i:])
				if r != '_' && r != '$' && !unicode.IsLetter(r) && !unicode.IsDigit(r) {
					break
				}
				i += size
			}
			toks = append(toks, token{kind: tIdent, text: s[start:i], pos: start})
		default:
			return nil, bad("%q at position %d is not supported", string(r), i+1)
		}
	}
	toks = append(toks, token{kind: tEOF, pos: len(s)})
	return toks, nil
}

// Parser.

type parser struct {
	toks  []token
	i     int
	terms int
}

// peek returns the next token; past the end, the final tEOF.
func (p *parser) peek() token { return p.toks[min(p.i, len(p.toks)-1)] }

// next consumes the next token; back undoes it.
func (p *parser) next() token {
	t := p.peek()
	p.i++
	return t
}

func (p *parser) back() { p.i-- }

// keyword consumes the identifier kw (any case) if it comes next.
func (p *parser) keyword(kw string) bool {
	if t := p.peek(); t.kind == tIdent && strings.EqualFold(t.text, kw) {
		p.i++
		return true
	}
	return false
}

func (p *parser) isKeyword(kw string) bool {
	t := p.peek()
	return t.kind == tIdent && strings.EqualFold(t.text, kw)
}

func (p *parser) errorf(format string, args ...any) error { return bad(format, args...) }

func (p *parser) unexpected(want string) error {
	t := p.peek()
	if t.kind == tEOF {
		return bad("expected %s at the end of the query", want)
	}
	return bad("expected %s at position %d, found %q", want, t.pos+1, clip(t.text))
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

func (p *parser) or(depth int) (node, error) {
	left, err := p.and(depth)
	if err != nil {
		return nil, err
	}
	for p.keyword("OR") {
		right, err := p.and(depth)
		if err != nil {
			return nil, err
		}
		left = orNode{left, right}
	}
	return left, nil
}

func (p *parser) and(depth int) (node, error) {
	left, err := p.not(depth)
	if err != nil {
		return nil, err
	}
	for p.keyword("AND") {
		right, err := p.not(depth)
		if err != nil {
			return nil, err
		}
		left = andNode{left, right}
	}
	return left, nil
}

func (p *parser) not(depth int) (node, error) {
	if depth >= MaxDepth {
		return nil, bad("the condition nests deeper than %d", MaxDepth)
	}
	if p.keyword("NOT") {
		n, err := p.not(depth + 1)
		if err != nil {
			return nil, err
		}
		return notNode{n}, nil
	}
	if p.peek().kind == tLParen {
		p.next()
		n, err := p.or(depth + 1)
		if err != nil {
			return nil, err
		}
		if p.next().kind != tRParen {
			p.back()
			return nil, p.unexpected(`")"`)
		}
		return n, nil
	}
	return p.comparison()
}

var reserved = []string{"SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "IS", "NULL", "TRUE", "FALSE",
	"ORDER", "GROUP", "BY", "JOIN", "TOP", "LIMIT", "AS", "LIKE", "BETWEEN"}

func (p *parser) comparison() (node, error) {
	p.terms++
	if p.terms > MaxTerms {
		return nil, bad("the condition has more than %d terms", MaxTerms)
	}
	path, err := p.path()
	if err != nil {
		return nil, err
	}
	switch {
	case p.peek().kind == tOp:
		op := p.next().text
		v, err := p.literal()
		if err != nil {
			return nil, err
		}
		var n node = eqNode{path, v}
		if op == "!=" {
			n = notNode{n}
		}
		return n, nil
	case p.keyword("IS"):
		negate := p.keyword("NOT")
		if !p.keyword("NULL") {
			return nil, p.unexpected("NULL")
		}
		var n node = eqNode{path, nil}
		if negate {
			n = notNode{n}
		}
		return n, nil
	case p.isKeyword("NOT") || p.isKeyword("IN"):
		negate := p.keyword("NOT")
		if !p.keyword("IN") {
			return nil, p.unexpected("IN")
		}
		if p.next().kind != tLParen {
			p.back()
			return nil, p.unexpected(`"(" and a list of values`)
		}
		var in inNode
		in.path = path
		for {
			p.terms++
			if p.terms > MaxTerms {
				return nil, bad("the condition has more than %d terms", MaxTerms)
			}
			v, err := p.literal()
			if err != nil {
				return nil, err
			}
			in.values = append(in.values, v)
			t := p.next()
			if t.kind == tRParen {
				break
			}
			if t.kind != tComma {
				p.back()
				return nil, p.unexpected(`"," or ")"`)
			}
		}
		var n node = in
		if negate {
			n = notNode{n}
		}
		return n, nil
	}
	return nil, p.unexpected("=, !=, <>, IN or IS after the property")
}

func (p *parser) path() ([]string, error) {
	var path []string
	for {
		t := p.next()
		if t.kind != tIdent {
			p.back()
			return nil, p.unexpected("a property name")
		}
		for _, kw := range reserved {
			if strings.EqualFold(t.text, kw) {
				p.back()
				return nil, p.unexpected("a property name")
			}
		}
		if p.peek().kind == tLParen {
			return nil, bad("functions such as %s(...) at position %d are not supported", clip(t.text), t.pos+1)
		}
		path = append(path, t.text)
		if p.peek().kind != tDot {
			return path, nil
		}
		p.next()
	}
}

func (p *parser) literal() (any, error) {
	t := p.next()
	switch {
	case t.kind == tString:
		return t.text, nil
	case t.kind == tNumber:
		return t.num, nil
	case t.kind == tIdent && strings.EqualFold(t.text, "true"):
		return true, nil
	case t.kind == tIdent && strings.EqualFold(t.text, "false"):
		return false, nil
	case t.kind == tIdent && strings.EqualFold(t.text, "null"):
		return nil, nil
	}
	p.back()
	if t.kind == tIdent {
		return nil, bad("expected a value at position %d, found %q (strings take single quotes)", t.pos+1, clip(t.text))
	}
	return nil, p.unexpected("a value ('string', number, true, false or null)")
}

// Evaluation.

type node interface{ eval(item any) bool }

type andNode struct{ l, r node }
type orNode struct{ l, r node }
type notNode struct{ n node }
type eqNode struct {
	path  []string
	value any
}
type inNode struct {
	path   []string
	values []any
}

func (n andNode) eval(item any) bool { return n.l.eval(item) && n.r.eval(item) }
func (n orNode) eval(item any) bool  { return n.l.eval(item) || n.r.eval(item) }
func (n notNode) eval(item any) bool { return !n.n.eval(item) }
func (n eqNode) eval(item any) bool  { return equal(lookup(item, n.path), n.value) }
func (n inNode) eval(item any) bool {
	v := lookup(item, n.path)
	for _, w := range n.values {
		if equal(v, w) {
			return true
		}
	}
	return false
}

// lookup follows path through nested objects, names compared without
// regard to case (an exact match first); nil when any step is missing.
func lookup(v any, path []string) any {
	for _, name := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		next, ok := m[name]
		if !ok {
			for k, x := range m {
				if strings.EqualFold(k, name) {
					next, ok = x, true
					break
				}
			}
		}
		if !ok {
			return nil
		}
		v = next
	}
	return v
}

func equal(a, b any) bool {
	switch x := a.(type) {
	case nil:
		return b == nil
	case string:
		y, ok := b.(string)
		return ok && strings.EqualFold(x, y)
	case float64:
		y, ok := b.(float64)
		return ok && x == y
	case bool:
		y, ok := b.(bool)
		return ok && x == y
	}
	return false // objects and arrays equal no literal
}
