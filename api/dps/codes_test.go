package dps

import (
	"flag"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite docs/errors.md from the catalogue")

func TestCodesCatalogue(t *testing.T) {
	if !slices.IsSortedFunc(Codes, func(a, b CodeInfo) int { return a.Code - b.Code }) {
		t.Error("Codes is not ordered by code")
	}
	for i, c := range Codes {
		if i > 0 && Codes[i-1].Code == c.Code {
			t.Errorf("code %d listed twice", c.Code)
		}
		if http.StatusText(c.Status()) == "" || c.Status() < 400 {
			t.Errorf("%s (%d): status %d is not an HTTP error status", c.Name, c.Code, c.Status())
		}
		if c.Message == "" || c.When == "" || strings.Contains(c.Message+c.When, "|") {
			t.Errorf("%s: message and when must be set and hold no '|'", c.Name)
		}
		if got := New(c.Code); got.Message != c.Message || got.Status() != c.Status() {
			t.Errorf("New(%d) = %+v", c.Code, got)
		}
	}
	if _, ok := Lookup(999999); ok {
		t.Error("Lookup found a code not in the catalogue")
	}
}

// TestErrorTable checks that docs/errors.md holds the table generated from
// the catalogue; -update rewrites it.
func TestErrorTable(t *testing.T) {
	const begin, end = "<!-- BEGIN GENERATED: go test ./api/dps -run TestErrorTable -update -->\n", "<!-- END GENERATED -->\n"
	path := filepath.Join("..", "..", "docs", "errors.md")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	i, j := strings.Index(doc, begin), strings.Index(doc, end)
	if i < 0 || j < i {
		t.Fatalf("%s has no generated section between %q and %q", path, begin, end)
	}
	want := doc[:i+len(begin)] + ErrorTable() + doc[j:]
	if want == doc {
		return
	}
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("%s is out of date with the error catalogue: run go test ./api/dps -run TestErrorTable -update", path)
}

// TestEveryCodeCatalogued checks that every Code constant of errors.go is
// in the catalogue under its name and value.
func TestEveryCodeCatalogued(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "errors.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, s := range gd.Specs {
			vs := s.(*ast.ValueSpec)
			for i, name := range vs.Names {
				if !strings.HasPrefix(name.Name, "Code") || i >= len(vs.Values) {
					continue
				}
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok {
					continue
				}
				n++
				code, _ := strconv.Atoi(lit.Value)
				if c, ok := Lookup(code); !ok || c.Name != name.Name {
					t.Errorf("%s = %d is not in the catalogue under its name", name.Name, code)
				}
			}
		}
	}
	if n != len(Codes) {
		t.Errorf("errors.go declares %d codes, the catalogue lists %d", n, len(Codes))
	}
}
