package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	jmespath "github.com/jmespath-community/go-jmespath"
	"go.yaml.in/yaml/v2"
)

// formatWriter is a command's standard output when -o is not table or
// --query is given: writeJSON hands it the value, which it queries and
// renders; plain text (messages, help) passes through.
type formatWriter struct {
	w      io.Writer
	format string
	query  jmespath.JMESPath // nil: no query
}

func (fw *formatWriter) Write(p []byte) (int, error) { return fw.w.Write(p) }

// compileQuery compiles a JMESPath expression; "" is no query.
func compileQuery(q string) (jmespath.JMESPath, error) {
	if strings.TrimSpace(q) == "" {
		return nil, nil
	}
	c, err := jmespath.Compile(q)
	if err != nil {
		return nil, fmt.Errorf("--query %q: %w", q, err)
	}
	return c, nil
}

// render queries v (as its JSON form) and writes it in the format.
func (fw *formatWriter) render(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	var data any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&data); err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	if fw.query != nil {
		// JMESPath compares numbers as float64.
		if data, err = fw.query.Search(floats(data)); err != nil {
			return fmt.Errorf("--query: %w", err)
		}
	}
	switch fw.format {
	case formatNone:
		return nil
	case formatJSON:
		return writeIndented(fw.w, data)
	case formatJSONC:
		var buf bytes.Buffer
		if err := writeIndented(&buf, data); err != nil {
			return err
		}
		_, err := fw.w.Write(colorJSON(buf.Bytes()))
		return err
	case formatYAML:
		out, err := yaml.Marshal(data)
		if err != nil {
			return fmt.Errorf("encode output as YAML: %w", err)
		}
		_, err = fw.w.Write(out)
		return err
	case formatTSV:
		return writeTSV(fw.w, data)
	}
	return writeGenericTable(fw.w, data) // table with --query
}

func writeIndented(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// floats turns json.Numbers into float64, as JMESPath wants them.
func floats(v any) any {
	switch x := v.(type) {
	case json.Number:
		f, err := x.Float64()
		if err != nil {
			return x.String()
		}
		return f
	case map[string]any:
		for k, e := range x {
			x[k] = floats(e)
		}
	case []any:
		for i, e := range x {
			x[i] = floats(e)
		}
	}
	return v
}

// writeTSV writes az's tsv: one line per list item (or one line for a
// single value), the scalar members of an object tab-separated in key
// order; nested objects and lists are left out, so pick with --query.
func writeTSV(w io.Writer, v any) error {
	rows := []any{v}
	if l, ok := v.([]any); ok {
		rows = l
	}
	for _, r := range rows {
		var cells []string
		switch x := r.(type) {
		case map[string]any:
			for _, k := range sortedKeys(x) {
				if s, ok := scalar(x[k]); ok {
					cells = append(cells, s)
				}
			}
		case []any:
			for _, e := range x {
				if s, ok := scalar(e); ok {
					cells = append(cells, s)
				}
			}
		default:
			s, _ := scalar(x)
			cells = append(cells, s)
		}
		if _, err := fmt.Fprintln(w, strings.Join(cells, "\t")); err != nil {
			return err
		}
	}
	return nil
}

// scalar renders a JSON scalar for tsv and tables; false for objects and
// lists.
func scalar(v any) (string, bool) {
	switch x := v.(type) {
	case nil:
		return "", true
	case string:
		return printable(strings.NewReplacer("\t", " ", "\n", " ").Replace(x)), true
	case bool:
		return strconv.FormatBool(x), true
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), true
	case json.Number:
		return x.String(), true
	}
	return "", false
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// writeGenericTable renders a query's result for -o table: a list of
// objects as rows under their scalar members' names, anything else one
// value per line.
func writeGenericTable(w io.Writer, v any) error {
	var objs []map[string]any
	switch x := v.(type) {
	case map[string]any:
		objs = []map[string]any{x}
	case []any:
		for _, e := range x {
			m, ok := e.(map[string]any)
			if !ok {
				objs = nil
				break
			}
			objs = append(objs, m)
		}
		if objs == nil && len(x) > 0 {
			return writeTSV(w, x)
		}
	default:
		return writeTSV(w, v)
	}
	var cols []string
	for _, m := range objs {
		for _, k := range sortedKeys(m) {
			if _, ok := scalar(m[k]); ok && !slices.Contains(cols, k) {
				cols = append(cols, k)
			}
		}
	}
	header := make([]string, len(cols))
	for i, c := range cols {
		header[i] = strings.ToUpper(c)
	}
	rows := make([][]string, 0, len(objs))
	for _, m := range objs {
		row := make([]string, len(cols))
		for i, c := range cols {
			row[i], _ = scalar(m[c])
		}
		rows = append(rows, row)
	}
	return table(w, header, rows)
}

// ANSI colours of -o jsonc, as az uses them: keys, strings, other values.
const (
	colorKey    = "\x1b[94m"
	colorString = "\x1b[32m"
	colorValue  = "\x1b[33m"
	colorReset  = "\x1b[0m"
)

// colorJSON colours indented JSON (whose strings hold no raw newlines).
func colorJSON(b []byte) []byte {
	var out bytes.Buffer
	for i := 0; i < len(b); {
		c := b[i]
		switch {
		case c == '"':
			j := i + 1
			for j < len(b) && b[j] != '"' {
				if b[j] == '\\' {
					j++
				}
				j++
			}
			j++ // past the closing quote
			k := j
			for k < len(b) && b[k] == ' ' {
				k++
			}
			color := colorString
			if k < len(b) && b[k] == ':' {
				color = colorKey
			}
			out.WriteString(color)
			out.Write(b[i:min(j, len(b))])
			out.WriteString(colorReset)
			i = j
		case c == '-' || (c >= '0' && c <= '9') || c == 't' || c == 'f' || c == 'n':
			j := i
			for j < len(b) && !strings.ContainsRune(",]} \n", rune(b[j])) {
				j++
			}
			out.WriteString(colorValue)
			out.Write(b[i:j])
			out.WriteString(colorReset)
			i = j
		default:
			out.WriteByte(c)
			i++
		}
	}
	return out.Bytes()
}
